#include "models/model.hpp"

#include <algorithm>

#include "core/error.hpp"
#include "core/strings.hpp"

namespace opendit::models {

// ---- Condition ----------------------------------------------------------------------------------------------------

int64_t Condition::batch() const {
  for (const at::Tensor* t : {&labels, &text, &text_mask})
    if (t->defined()) return t->size(0);
  return 0;
}

void Condition::check(const std::string& what) const {
  auto fail = [&](const std::string& why) { throw Error(opendit::cat(what, ": ", why)); };
  const int64_t n = batch();
  if (labels.defined() && (labels.dim() != 1 || labels.scalar_type() != at::kLong || labels.size(0) != n))
    fail(opendit::cat("labels must be int64 [", n, "], found ", labels.scalar_type(), " ", shape_str(labels.sizes())));
  if (text.defined() && (text.dim() != 3 || !text.is_floating_point() || text.size(0) != n))
    fail(opendit::cat("text must be float [", n, ", L, C], found ", text.scalar_type(), " ", shape_str(text.sizes())));
  if (text_mask.defined() &&
      (!text.defined() || text_mask.dim() != 2 || text_mask.size(0) != n || text_mask.size(1) != text.size(1)))
    fail(opendit::cat("text_mask must be [", n, ", L] beside text [", n, ", L, C], found ", shape_str(text_mask.sizes())));
}

Condition Condition::to(at::Device device) const {
  auto move = [&](const at::Tensor& t) { return t.defined() ? t.to(device) : t; };
  return {move(labels), move(text), move(text_mask)};
}

Condition Condition::rows(int64_t start, int64_t count) const {
  auto cut = [&](const at::Tensor& t) { return t.defined() ? t.narrow(0, start, count) : t; };
  return {cut(labels), cut(text), cut(text_mask)};
}

Condition Condition::cat(const Condition& a, const Condition& b) {
  auto join = [](const at::Tensor& x, const at::Tensor& y) {
    if (x.defined() != y.defined()) throw Error("Condition::cat: the two conditions carry different members");
    return x.defined() ? at::cat({x, y}) : x;
  };
  return {join(a.labels, b.labels), join(a.text, b.text), join(a.text_mask, b.text_mask)};
}

Condition random_condition(const ConditionSpec& spec, int64_t n, at::Generator gen) {
  Condition c;
  if (spec.kind == ConditionKind::Labels) {
    c.labels = at::randint(0, spec.num_classes, {n}, gen, at::kLong);
  } else {
    c.text = at::randn({n, spec.text_length, spec.text_dim}, gen);
    c.text_mask = at::ones({n, spec.text_length}, at::kBool);
  }
  return c;
}

// ---- Model --------------------------------------------------------------------------------------------------------

Condition Model::drop_condition(const Condition& cond, const at::Tensor& drop) const {
  const Condition null = null_condition(cond);
  Condition out = cond;
  if (cond.labels.defined()) out.labels = at::where(drop, null.labels, cond.labels);
  if (cond.text.defined()) out.text = at::where(drop.view({-1, 1, 1}), null.text, cond.text);
  return out;  // the mask stays: the null caption is read through the sample's own mask (as Open-Sora does)
}

int64_t Model::num_parameters() const {
  int64_t n = 0;
  for (const Param& p : params_) n += p.tensor->numel();
  return n;
}

void Model::add_param(const std::string& name, at::Tensor& tensor, ParamKind kind) {
  params_.push_back({name, &tensor, kind == ParamKind::Trainable, kind == ParamKind::Recomputed});
}

StateDict Model::state_dict() const {
  StateDict sd;
  for (const Param& p : params_) sd[p.name] = *p.tensor;
  return sd;
}

std::string Model::mismatch(const StateDict& sd) const {
  std::vector<std::string> missing, unexpected, wrong_shape;
  std::map<std::string, const Param*> ours;
  for (const Param& p : params_) {
    ours[p.name] = &p;
    auto it = sd.find(p.name);
    if (it == sd.end()) {
      if (!p.recomputed) missing.push_back(p.name);
    } else if (it->second.sizes() != p.tensor->sizes()) {
      wrong_shape.push_back(cat(p.name, " ", shape_str(it->second.sizes()), " (expected ",
                                shape_str(p.tensor->sizes()), ")"));
    }
  }
  for (const auto& [name, t] : sd)
    if (!ours.count(name)) unexpected.push_back(name);
  if (missing.empty() && unexpected.empty() && wrong_shape.empty()) return "";
  auto first = [](const char* what, const std::vector<std::string>& v) -> std::string {
    if (v.empty()) return "";
    std::vector<std::string> head(v.begin(), v.begin() + std::min<size_t>(3, v.size()));
    return cat("; ", v.size(), " ", what, ": ", join(head, ", "), v.size() > 3 ? ", ..." : "");
  };
  return cat("the weights do not match the model (", describe(), ")", first("missing", missing),
             first("unexpected", unexpected), first("wrong shape", wrong_shape), ". ", explain_weights(sd));
}

void Model::load_state_dict(const StateDict& sd, const std::string& origin) {
  if (const std::string why = mismatch(sd); !why.empty()) throw Error(cat(origin, ": ", why));
  for (const Param& p : params_) {
    auto it = sd.find(p.name);
    if (it != sd.end() && it->second.is_floating_point() && !at::isfinite(it->second).all().item<bool>())
      throw Error(cat(origin, ": ", p.name, " holds non-finite values (NaN or Inf)"));
  }
  at::NoGradGuard no_grad;
  for (const Param& p : params_)
    if (auto it = sd.find(p.name); it != sd.end()) p.tensor->copy_(it->second);
}

void Model::to(const at::TensorOptions& options) {
  for (const Param& p : params_) {
    const bool grad = p.tensor->requires_grad();
    *p.tensor = p.tensor->to(options).detach();
    if (grad) p.tensor->requires_grad_(true);
  }
}

void Model::set_requires_grad(bool on) {
  for (const Param& p : params_) p.tensor->requires_grad_(on && p.trainable);
}

StateDict Model::export_weights(const StateDict& official, const std::string& layout) const {
  if (layout == "opendit") return official;
  throw Error(cat("a ", type(), " model cannot be written in the '", layout, "' layout (it writes: ",
                  join(layouts(), ", "), ")"));
}

void Model::set_sequence_parallel(const layers::SeqParallel& sp) {
  if (sp.on()) {
    const std::string problem = sp_mode_problem(sp.mode);
    if (!problem.empty()) throw Error(problem);
  }
  sp_ = sp;
}

layers::SpMode resolve_sp_mode(const std::string& name, const Model& model) {
  if (name == "auto")
    return model.sp_mode_problem(layers::SpMode::Dsp).empty() ? layers::SpMode::Dsp : layers::SpMode::Ulysses;
  const layers::SpMode mode = layers::parse_sp_mode(name);
  const std::string problem = model.sp_mode_problem(mode);
  if (!problem.empty()) throw Error(problem);
  return mode;
}

}  // namespace opendit::models
