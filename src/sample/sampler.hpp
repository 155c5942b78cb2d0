// The sampling application: a model on a device, the diffusion respaced for the plan, the network call assembled
// (dtype, classifier-free guidance, CUDA graph on a GPU), and the loop over batches. `opendit sample` and
// `opendit bench sample` are argument parsing over it.
//
//   Sampler sampler(model, plan, device);
//   at::Tensor x = sampler.run(noise, cond, generator, on_step);   // [N, C, H, W] float32 on the CPU
#pragma once
#include <ATen/ATen.h>

#include <string>

#include "diffusion/gaussian_diffusion.hpp"
#include "models/model.hpp"
#include "parallel/communicator.hpp"
#include "sample/plan.hpp"

namespace opendit::sample {

class Sampler {
 public:
  // Moves the model to `device` in the plan's dtype, chooses the GPU attention kernel and builds the diffusion.
  Sampler(models::Model& model, const SamplePlan& plan, at::Device device);
  // CFG-parallel: the two halves of guidance on the 2 ranks of `pair` (every rank gets the same samples). Together
  // with sequence parallelism (set on the model) each half runs over its sp group. Collectives are not captured
  // into CUDA graphs: either turns the graph off.
  void set_cfg_parallel(parallel::Communicator* pair) { cfg_pair_ = pair; }

  const diffusion::GaussianDiffusion& diffusion() const { return diffusion_; }
  const SamplePlan& plan() const { return plan_; }
  at::Device device() const { return device_; }
  bool graph_wanted() const {
    return device_.is_cuda() && plan_.cuda_graph && !cfg_pair_ && !model_.sequence_parallel().on();
  }
  // The sampling steps run() takes for n samples (over all its batches).
  int64_t total_steps(int64_t n) const;
  // The last run's CUDA graph: "on" (replayed), "off" (not asked for, or the CPU), "failed" (a capture failed and
  // the steps ran eagerly).
  const std::string& graph_state() const { return graph_state_; }

  // noise [N, sample_shape...] float32 (the starting x_T), cond of N samples -> the samples [N, C, ...] float32 on
  // the CPU. Batches of plan.batch samples (0: all) each run their own loop (and graph); `generator` draws DDPM's
  // per-step noise (DDIM's with eta > 0), so one seed gives one result. on_step(done, total) counts the steps of
  // all batches.
  // null: the unconditional branch of guidance for each of the N samples (a negative prompt's embedding, for
  // models whose ConditionSpec::null_is_text); empty: the model's null_condition().
  at::Tensor run(const at::Tensor& noise, const models::Condition& cond, at::Generator generator,
                 const diffusion::StepCallback& on_step = nullptr, const models::Condition& null = {});

 private:
  diffusion::Denoiser denoiser(const models::Condition& cond, const models::Condition& null) const;  // one batch

  models::Model& model_;
  SamplePlan plan_;
  at::Device device_;
  diffusion::GaussianDiffusion diffusion_;
  std::string graph_state_ = "off";
  parallel::Communicator* cfg_pair_ = nullptr;
};

}  // namespace opendit::sample
