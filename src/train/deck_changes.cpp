#include "train/deck_changes.hpp"

#include <nlohmann/json.hpp>

#include "core/error.hpp"
#include "core/strings.hpp"

namespace opendit::train {

bool harmless_on_resume(const std::string& key) {
  static const char* const kHarmless[] = {"train.steps",
                                          "train.log_every",
                                          "train.checkpoint_every",
                                          "train.keep_checkpoints",
                                          "train.profile_step",
                                          "train.async_checkpoint",
                                          "train.max_nonfinite_steps",
                                          "train.activation_checkpointing",
                                          "train.checkpoint_blocks",
                                          "train.cuda_graph",
                                          "train.run_ahead",
                                          "data.prefetch",
                                          "data.verify",
                                          "model.attention",
                                          "run.out_dir",
                                          "run.name"};
  for (const char* k : kHarmless)
    if (key == k) return true;
  // The layout of the ranks (any world size resumes any checkpoint) and sampling settings.
  return key.rfind("parallel.", 0) == 0 || key.rfind("sample.", 0) == 0;
}

DeckChanges deck_changes(const std::string& old_json, const config::Deck& now) {
  DeckChanges out;
  nlohmann::json before = nlohmann::json::parse(old_json, nullptr, /*allow_exceptions=*/false);
  if (!before.is_object()) before = nlohmann::json::object();
  const nlohmann::json after = nlohmann::json::parse(now.to_json());
  for (const config::Option& o : now.schema().options) {
    const auto parts = split(o.key, '.');
    nlohmann::json was;
    if (before.contains(parts[0]) && before[parts[0]].is_object() && before[parts[0]].contains(parts[1]))
      was = before[parts[0]][parts[1]];
    else
      std::visit([&](const auto& x) { was = x; }, o.default_value);
    nlohmann::json is = after[parts[0]][parts[1]];
    // model.preset "auto" is the type's largest preset, the value decks recorded before "auto" existed.
    if (o.key == "model.preset") {
      const std::string type = now.get_string("model.type");
      const std::string largest = type == "stdit" ? "STDiT-XL/2" : type == "latte" ? "Latte-XL/2" : "DiT-XL/2";
      if (was == "auto") was = largest;
      if (is == "auto") is = largest;
    }
    // Numbers compare by value: a float key written as 1 by one version and 1.0 by another is the same.
    const bool same = (was.is_number() && is.is_number()) ? was.get<double>() == is.get<double>() : was == is;
    if (same) continue;
    (harmless_on_resume(o.key) ? out.harmless : out.defining).push_back(cat(o.key, " ", was.dump(), " -> ", is.dump()));
  }
  return out;
}

}  // namespace opendit::train
