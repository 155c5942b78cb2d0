#include "train/flat_params.hpp"

#include <ATen/core/grad_mode.h>
#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>

#include <algorithm>

#include "core/error.hpp"
#include "models/layers/grad_sink.hpp"

namespace opendit::train {

// ---- FlatParams -------------------------------------------------------------------------------------------------
FlatParams::Slots FlatParams::trainable(const models::Model& model, std::map<std::string, at::Tensor*>* frozen) {
  Slots slots;
  for (const models::Param& p : model.parameters()) {
    if (p.trainable) slots.emplace_back(p.name, p.tensor);
    else (*frozen)[p.name] = p.tensor;
  }
  return slots;
}

static std::vector<FlatLayout::Spec> specs_of(const FlatParams::Slots& params, const FlatParams::DecayRule& decays) {
  std::vector<FlatLayout::Spec> specs;
  for (const auto& [name, slot] : params)
    specs.push_back({name, slot->sizes().vec(), decays ? decays(name, *slot) : true});
  return specs;
}

FlatParams::FlatParams(const Slots& params, int world, int rank, int64_t align, const DecayRule& decays)
    : slots_(params), layout_(specs_of(params, decays), align), world_(world), rank_(rank) {
  layout_.shard(world, rank);  // checks rank and world
  at::Device device = params.empty() ? at::Device(at::kCPU) : params.front().second->device();
  at::TensorOptions f32 = at::TensorOptions(at::kFloat).device(device);
  data_ = at::zeros({layout_.padded_numel(world)}, f32);
  grad_ = at::zeros({layout_.padded_numel(world)}, f32);
  at::NoGradGuard no_grad;
  for (size_t i = 0; i < slots_.size(); ++i) {
    const at::Tensor& p = *slots_[i].second;
    if (p.device() != device) throw Error(cat("parameter ", slots_[i].first, " is on ", p.device().str(),
                                              ", the first one on ", device.str()));
    view(data_, i).copy_(p);
  }
  bind(data_);
  fresh_.assign(slots_.size(), 1);
}

at::Tensor FlatParams::view(const at::Tensor& flat, size_t entry) const {
  const FlatEntry& e = layout_.entries()[entry];
  return flat.narrow(0, e.offset, e.numel).view(e.shape);
}

void FlatParams::bind(const at::Tensor& flat) {
  // The sinks and hooks belong to the tensors being replaced: dropped with them, set on the new ones.
  const bool streaming = streaming_;
  if (streaming) unstream();
  for (size_t i = 0; i < slots_.size(); ++i) {
    at::Tensor& slot = *slots_[i].second;
    const bool requires_grad = slot.requires_grad();
    slot = view(flat, i).detach();
    if (requires_grad) slot.set_requires_grad(true);
  }
  if (streaming) stream_grads();
}

void FlatParams::use_working_copy(at::ScalarType dtype) {
  working_ = data_.to(dtype);
  bind(working_);
}

namespace {
struct AbsorbGrad : torch::autograd::PostAccumulateGradHook {
  AbsorbGrad(FlatParams* owner, size_t entry) : owner(owner), entry(entry) {}
  void operator()(const torch::autograd::Variable& param) override { owner->absorb_grad(entry, param); }
  FlatParams* owner;
  size_t entry;
};
}  // namespace

void FlatParams::stream_grads() {
  for (size_t i = 0; i < slots_.size(); ++i)
    if (slots_[i].second->requires_grad()) {
      torch::autograd::impl::set_post_acc_grad_hooks(*slots_[i].second, std::make_unique<AbsorbGrad>(this, i));
      models::layers::set_grad_sink(*slots_[i].second, {view(grad_, i), &fresh_[i]});
    }
  streaming_ = true;
}

void FlatParams::unstream() {
  for (const auto& [name, slot] : slots_)
    if (slot->requires_grad()) {
      models::layers::remove_grad_sink(*slot);
      torch::autograd::impl::set_post_acc_grad_hooks(*slot, nullptr);
    }
  streaming_ = false;
}

FlatParams::~FlatParams() {
  if (streaming_) unstream();
}

void FlatParams::absorb_grad(size_t entry, const at::Tensor& param) {
  at::NoGradGuard no_grad;
  at::Tensor& g = param.mutable_grad();
  if (!g.defined()) return;
  at::Tensor dst = view(grad_, entry);
  if (fresh_[entry])
    dst.copy_(g);
  else
    dst.add_(g);
  fresh_[entry] = 0;
  g.reset();
}

void FlatParams::gather_grads() {
  at::NoGradGuard no_grad;
  for (size_t i = 0; i < slots_.size(); ++i) {
    const at::Tensor& g = slots_[i].second->grad();
    if (g.defined())
      absorb_grad(i, *slots_[i].second);
    else if (fresh_[i])
      view(grad_, i).zero_();
    fresh_[i] = 1;  // the next step starts over
  }
}

void FlatParams::clear_grads() {
  for (const auto& [name, slot] : slots_) slot->mutable_grad().reset();
}

void FlatParams::restart_step() {
  clear_grads();
  std::fill(fresh_.begin(), fresh_.end(), char(1));
}

}  // namespace opendit::train
