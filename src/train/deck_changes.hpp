// What changed in the deck between a checkpoint and the run that resumes it (docs/LONG_JOBS.md, "Resuming").
// Keys that only say how the run is carried out or observed (steps, log and checkpoint intervals, parallel layout,
// prefetch, recompute, sampling) may change on resume; every other key defines the run (the model, the data, the
// optimizer, the diffusion, the seed) and changing it mid-run is an error unless --allow-deck-change.
#pragma once
#include <string>
#include <vector>

#include "config/deck.hpp"

namespace opendit::train {

struct DeckChanges {
  std::vector<std::string> defining, harmless;  // "train.lr 0.0001 -> 0.0002"
  bool empty() const { return defining.empty() && harmless.empty(); }
};

// Whether changing `key` on resume leaves the run what it was.
bool harmless_on_resume(const std::string& key);

// old_json: the checkpoint's deck (Deck::to_json of the run that wrote it). A key the old deck lacks (written by an
// earlier opendit) is compared with its default; keys the schema no longer has are ignored.
DeckChanges deck_changes(const std::string& old_json, const config::Deck& now);

}  // namespace opendit::train
