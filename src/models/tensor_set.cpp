#include "models/tensor_set.hpp"

#include <ATen/Context.h>
#include <ATen/Functions.h>

#include <cmath>

#include "core/error.hpp"
#include "core/strings.hpp"

namespace opendit::models {

void TensorSet::declare(const std::string& name, std::vector<int64_t> shape) {
  if (shapes_.count(name)) throw Error(cat("TensorSet: ", name, " declared twice"));
  order_.push_back(name);
  tensors_[name] = at::empty(shape, at::TensorOptions(at::kFloat).device(at::kMeta));
  shapes_[name] = std::move(shape);
}

const at::Tensor& TensorSet::operator[](const std::string& name) const {
  auto it = tensors_.find(name);
  if (it == tensors_.end()) throw Error(cat("TensorSet: no tensor ", name));
  return it->second;
}

void TensorSet::set(const std::string& name, const at::Tensor& tensor) {
  if (!shapes_.count(name) || tensor.sizes() != at::IntArrayRef(shapes_.at(name)))
    throw Error(cat("TensorSet: cannot set ", name, " to ", shape_str(tensor.sizes())));
  tensors_[name] = tensor;
}

namespace {
// "a, b, c and 4 more"
std::string first_few(const std::vector<std::string>& items, size_t shown = 4) {
  std::vector<std::string> head(items.begin(), items.begin() + std::min(shown, items.size()));
  std::string s = join(head, ", ");
  if (items.size() > shown) s += cat(" and ", items.size() - shown, " more");
  return s;
}
}  // namespace

void TensorSet::load(const std::map<std::string, at::Tensor>& sd, const std::string& origin,
                     const at::TensorOptions& options, const std::function<bool(const std::string&)>& ignore) {
  std::vector<std::string> missing, unexpected, misshaped, nonfinite;
  for (const std::string& name : order_) {
    auto it = sd.find(name);
    if (it == sd.end()) {
      missing.push_back(name);
    } else if (it->second.sizes() != at::IntArrayRef(shapes_.at(name))) {
      misshaped.push_back(
          cat(name, " is ", shape_str(it->second.sizes()), " (expected ", shape_str(shapes_.at(name)), ")"));
    }
  }
  for (const auto& [name, t] : sd)
    if (!shapes_.count(name) && !(ignore && ignore(name))) unexpected.push_back(name);
  if (!missing.empty() || !unexpected.empty() || !misshaped.empty()) {
    std::string msg = cat(origin, ": the weights do not match the configuration");
    if (!missing.empty()) msg += cat("; ", missing.size(), " missing: ", first_few(missing));
    if (!unexpected.empty()) msg += cat("; ", unexpected.size(), " unexpected: ", first_few(unexpected));
    if (!misshaped.empty()) msg += cat("; ", misshaped.size(), " of another shape: ", first_few(misshaped, 3));
    throw Error(msg);
  }
  if (options.device().is_meta()) {  // a check of names and shapes only (from file headers): no data
    for (const std::string& name : order_) tensors_[name] = at::empty(shapes_.at(name), options);
    return;
  }
  for (const std::string& name : order_) {
    const at::Tensor& src = sd.at(name);
    if (src.is_floating_point() && !at::isfinite(src).all().item<bool>()) nonfinite.push_back(name);
    tensors_[name] = src.to(options).contiguous();  // no copy when it is already there (the caller owns sd)
  }
  if (!nonfinite.empty())
    throw Error(cat(origin, ": ", nonfinite.size(), " tensors hold NaN or infinite values: ", first_few(nonfinite)));
}

void TensorSet::init_random(uint64_t seed, const at::TensorOptions& options, double gain) {
  // Drawn on the target device: a 4.7 B-parameter T5 would take minutes on the CPU.
  const at::Device device = options.device();
  at::Generator gen = at::globalContext().defaultGenerator(device).clone();
  gen.set_current_seed(seed);
  const auto f32 = at::TensorOptions(at::kFloat).device(device);
  for (const std::string& name : order_) {
    const std::vector<int64_t>& shape = shapes_.at(name);
    at::Tensor t;
    const bool bias = name.size() >= 5 && name.compare(name.size() - 5, 5, ".bias") == 0;
    if (bias) {
      t = at::zeros(shape, f32);
    } else if (shape.size() == 1) {
      t = at::ones(shape, f32);
    } else {
      int64_t numel = 1;
      for (int64_t d : shape) numel *= d;
      const double fan_in = static_cast<double>(numel) / static_cast<double>(shape[0]);
      t = at::empty(shape, f32).normal_(0.0, gain / std::sqrt(fan_in), gen);
    }
    tensors_[name] = t.to(options);
  }
}

int64_t TensorSet::numel() const {
  int64_t n = 0;
  for (const auto& [name, shape] : shapes_) {
    int64_t k = 1;
    for (int64_t d : shape) k *= d;
    n += k;
  }
  return n;
}

at::ScalarType TensorSet::dtype() const {
  return order_.empty() ? at::kFloat : tensors_.at(order_.front()).scalar_type();
}

at::Device TensorSet::device() const {
  return order_.empty() ? at::Device(at::kCPU) : tensors_.at(order_.front()).device();
}

void TensorSet::to(const at::TensorOptions& options) {
  for (auto& [name, t] : tensors_) t = t.to(options);
}

}  // namespace opendit::models
