// What a resume compares: model.preset "auto" (the default since the video models) equals the largest preset of the
// type that decks recorded before it existed; a real preset change still defines the run.
#include <gtest/gtest.h>

#include "models/registry.hpp"
#include "train/deck_changes.hpp"

using namespace opendit;

TEST(DeckChanges, PresetAutoIsTheTypesLargestPreset) {
  config::Deck old_dit(models::deck_schema());
  old_dit.set("model.preset=DiT-XL/2");  // what a deck before "auto" recorded by default
  config::Deck now(models::deck_schema());  // preset "auto"
  EXPECT_TRUE(train::deck_changes(old_dit.to_json(), now).defining.empty());
  old_dit.set("model.preset=DiT-S/2");
  EXPECT_EQ(train::deck_changes(old_dit.to_json(), now).defining.size(), 1u);
  config::Deck old_stdit(models::deck_schema()), now_stdit(models::deck_schema());
  old_stdit.set("model.type=stdit");
  old_stdit.set("model.preset=STDiT-XL/2");
  now_stdit.set("model.type=stdit");
  EXPECT_TRUE(train::deck_changes(old_stdit.to_json(), now_stdit).defining.empty());
}
