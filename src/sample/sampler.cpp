#include "sample/sampler.hpp"

#include <algorithm>
#include <memory>
#include <vector>

#include "core/error.hpp"
#include "models/layers/attention.hpp"
#include "sample/cuda_graph_denoiser.hpp"
#include "sample/guidance.hpp"

namespace opendit::sample {

Sampler::Sampler(models::Model& model, const SamplePlan& plan, at::Device device)
    : model_(model),
      plan_(plan),
      device_(device),
      diffusion_(diffusion::make_diffusion(plan.steps, plan.schedule, plan.num_steps, model.learn_sigma())) {
  model_.to(at::TensorOptions().device(device).dtype(plan.dtype));
  if (device.is_cuda()) models::layers::set_attention_backend(plan.attention);
}

int64_t Sampler::total_steps(int64_t n) const {
  const int64_t batch = plan_.batch > 0 ? plan_.batch : n;
  return diffusion_.num_timesteps() * ((n + batch - 1) / std::max<int64_t>(batch, 1));
}

diffusion::Denoiser Sampler::denoiser(const models::Condition& cond, const models::Condition& null) const {
  const at::ScalarType dtype = plan_.dtype;
  const models::Model& model = model_;
  // The network in the plan's dtype; the sampler's arithmetic in float32.
  ConditionalDenoiser net = [&model, dtype](const at::Tensor& x, const at::Tensor& t, const models::Condition& c) {
    return model.forward(x.to(dtype), t.to(at::kFloat), c).to(at::kFloat);
  };
  if (plan_.cfg_scale == 1.0)
    return [net, cond](const at::Tensor& x, const at::Tensor& t) { return net(x, t, cond); };
  GuidanceOptions opt;
  opt.scale = plan_.cfg_scale;
  opt.guide_first_channels_only3 = plan_.guide_first3;
  const models::Condition uncond = null.batch() > 0 ? null : model_.null_condition(cond);
  if (cfg_pair_) return classifier_free_guidance_parallel(net, cond, uncond, opt, *cfg_pair_);
  return classifier_free_guidance(net, cond, uncond, opt);
}

at::Tensor Sampler::run(const at::Tensor& noise, const models::Condition& cond, at::Generator generator,
                        const diffusion::StepCallback& on_step, const models::Condition& null) {
  const int64_t N = noise.size(0);
  if (cond.batch() != N) throw Error(cat("sampling: ", N, " starting noises for ", cond.batch(), " conditions"));
  if (null.batch() != 0 && null.batch() != N)
    throw Error(cat("sampling: ", N, " conditions but ", null.batch(), " unconditional ones"));
  at::NoGradGuard no_grad;
  const int64_t batch = plan_.batch > 0 ? plan_.batch : N, batches = (N + batch - 1) / batch;
  const int steps = static_cast<int>(diffusion_.num_timesteps());
  graph_state_ = graph_wanted() ? "on" : "off";
  std::vector<at::Tensor> outs;
  for (int64_t b = 0; b < batches; ++b) {
    const int64_t lo = b * batch, n = std::min(batch, N - lo);
    const models::Condition c = cond.rows(lo, n).to(device_);
    const at::Tensor x = noise.narrow(0, lo, n).to(device_, at::kFloat);
    diffusion::Denoiser denoise = denoiser(c, null.batch() > 0 ? null.rows(lo, n).to(device_) : models::Condition{});
    std::unique_ptr<CudaGraphDenoiser> graph;  // one graph per batch (its conditions differ)
    if (graph_wanted()) {
      graph = std::make_unique<CudaGraphDenoiser>(denoise);
      denoise = *graph;
    }
    const diffusion::StepCallback report = [&, b](int step, int) {
      if (on_step) on_step(int(b) * steps + step, int(batches) * steps);
    };
    // Pixel-space samples live in [-1, 1]: each step's x0 estimate is clipped there (IDDPM's clip_denoised).
    outs.push_back((plan_.ddim ? diffusion_.ddim_sample_loop(denoise, x, plan_.eta, generator, report, plan_.pixel)
                               : diffusion_.p_sample_loop(denoise, x, generator, report, plan_.pixel))
                       .to(at::kCPU));
    if (graph && !graph->graphed()) graph_state_ = "failed";
  }
  return at::cat(outs, 0);
}

}  // namespace opendit::sample
