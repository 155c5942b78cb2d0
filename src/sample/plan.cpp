#include "sample/plan.hpp"

#include <cstdlib>

#include "core/error.hpp"
#include "core/strings.hpp"
#include "diffusion/gaussian_diffusion.hpp"

namespace opendit::sample {

SamplePlan make_plan(const config::Deck& deck, const SampleOptions& o) {
  SamplePlan p;
  p.steps = o.steps.value_or(deck.get_string("sample.steps"));
  p.ddim = p.steps.rfind("ddim", 0) == 0;
  p.cfg_scale = o.cfg.value_or(deck.get_float("sample.cfg_scale"));
  p.eta = o.eta.value_or(deck.get_float("sample.eta"));
  p.guide_first3 = deck.get_string("sample.cfg_channels") == "first3";
  p.seed = o.seed.value_or(deck.get_int("sample.seed"));
  p.dtype = o.precision.value_or(deck.get_string("sample.precision")) == "bf16" ? at::kBFloat16 : at::kFloat;
  p.cuda_graph = !o.no_graph && deck.get_bool("sample.cuda_graph");
  p.batch = o.batch;
  p.attention = deck.get_string("model.attention");
  p.schedule = deck.get_string("diffusion.schedule");
  p.num_steps = static_cast<int>(deck.get_int("diffusion.num_steps"));
  p.pixel = deck.get_string("model.space") == "pixel";
  if (!(p.cfg_scale >= 0)) throw Error(cat("--cfg ", p.cfg_scale, ": the guidance scale must be >= 0"));
  if (!(p.eta >= 0 && p.eta <= 1)) throw Error(cat("--eta ", p.eta, ": expected a value in [0, 1]"));
  if (p.batch < 0) throw Error(cat("--batch ", p.batch, ": expected >= 1 (or 0: all at once)"));
  diffusion::make_diffusion(p.steps, p.schedule, p.num_steps);  // throws for steps or a schedule that do not work
  return p;
}

std::vector<int64_t> parse_classes(const std::string& text, int64_t num_classes) {
  std::vector<int64_t> ids;
  if (text.empty()) {
    if (num_classes > 16)
      throw Error(cat("--classes is required for a model of ", num_classes, " classes (e.g. --classes 207,360,387)"));
    for (int64_t c = 0; c < num_classes; ++c) ids.push_back(c);
    return ids;
  }
  for (const auto& part : split(text, ',')) {
    std::string p = trim(part);
    char* end = nullptr;
    long long v = std::strtoll(p.c_str(), &end, 10);
    if (p.empty() || *end != '\0') throw Error(cat("--classes ", text, ": '", p, "' is not a class id"));
    if (v < 0 || v >= num_classes)
      throw Error(cat("--classes ", text, ": class ", v, " is outside [0, ", num_classes - 1, "] of this model"));
    ids.push_back(v);
  }
  return ids;
}

}  // namespace opendit::sample
