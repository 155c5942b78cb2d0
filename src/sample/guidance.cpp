#include "sample/guidance.hpp"

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/error.hpp"

namespace opendit::sample {

namespace {

void check_guidance(const ConditionalDenoiser& net, const models::Condition& cond, const models::Condition& null,
                    const GuidanceOptions& options) {
  if (!(options.scale >= 0.0) || !std::isfinite(options.scale)) {
    throw Error(cat("classifier-free guidance scale: expected a finite value >= 0, found ", options.scale));
  }
  if (!net) throw Error("classifier-free guidance: expected a network, found none");
  cond.check("classifier-free guidance: the condition");
  null.check("classifier-free guidance: the null condition");
  if (cond.batch() == 0 || null.batch() != cond.batch())
    throw Error(cat("classifier-free guidance: expected a condition and a null condition of one batch, found ",
                    cond.batch(), " and ", null.batch(), " samples"));
}

void check_batch(int64_t batch, int64_t n) {
  if (batch != n)
    throw Error(cat("classifier-free guidance: expected ", n, " conditions for a batch of ", n, ", found ", batch));
}

// cond_out, uncond [n, C or 2C, ...] -> the guided prediction.
at::Tensor combine(const at::Tensor& cond_out, const at::Tensor& uncond, const at::Tensor& x,
                   const GuidanceOptions& opt) {
  const int64_t n = x.size(0), c = x.size(1);
  const int64_t channels = cond_out.dim() >= 2 ? cond_out.size(1) : 0;
  if (cond_out.dim() != x.dim() || cond_out.size(0) != n || (channels != c && channels != 2 * c)) {
    throw Error(cat("classifier-free guidance: expected the network to return [", n, ", ", c, " or ", 2 * c,
                    ", ...] per half, found ", cond_out.sizes()));
  }
  const int64_t g = opt.guide_first_channels_only3 ? std::min<int64_t>(3, c) : c;
  const at::Tensor cond_g = cond_out.narrow(1, 0, g), uncond_g = uncond.narrow(1, 0, g);
  const at::Tensor guided = uncond_g + opt.scale * (cond_g - uncond_g);
  if (g == channels) return guided;
  return at::cat({guided, cond_out.narrow(1, g, channels - g)}, 1);
}

}  // namespace

diffusion::Denoiser classifier_free_guidance(ConditionalDenoiser net, const models::Condition& cond,
                                             const models::Condition& null, const GuidanceOptions& options) {
  check_guidance(net, cond, null, options);
  const models::Condition both = models::Condition::cat(cond, null);  // [cond; null]
  const int64_t batch = cond.batch();
  const GuidanceOptions opt = options;
  return [net = std::move(net), both, batch, opt](const at::Tensor& x, const at::Tensor& t) -> at::Tensor {
    const int64_t n = x.size(0);
    check_batch(batch, n);
    // A no-op when the conditions are on x's device already (a captured CUDA graph must not copy from the host).
    const at::Tensor out = net(at::cat({x, x}), at::cat({t, t}), both.to(x.device()));
    if (out.dim() < 1 || out.size(0) != 2 * n)
      throw Error(cat("classifier-free guidance: expected the network to return ", 2 * n, " rows, found ",
                      out.sizes()));
    return combine(out.narrow(0, 0, n), out.narrow(0, n, n), x, opt);
  };
}

diffusion::Denoiser classifier_free_guidance_parallel(ConditionalDenoiser net, const models::Condition& cond,
                                                      const models::Condition& null, const GuidanceOptions& options,
                                                      parallel::Communicator& pair) {
  check_guidance(net, cond, null, options);
  if (pair.size() != 2)
    throw Error(cat("CFG-parallel guidance runs on 2 ranks (conditional, unconditional), found ", pair.size()));
  const models::Condition mine = pair.rank() == 0 ? cond : null;
  const int64_t batch = cond.batch();
  const GuidanceOptions opt = options;
  parallel::Communicator* comm = &pair;
  return [net = std::move(net), mine, batch, opt, comm](const at::Tensor& x, const at::Tensor& t) -> at::Tensor {
    const int64_t n = x.size(0);
    check_batch(batch, n);
    const at::Tensor out = net(x, t, mine.to(x.device())).contiguous();        // this rank's half [n, ...]
    std::vector<int64_t> shape = out.sizes().vec();
    shape.insert(shape.begin(), 2);
    at::Tensor both = at::empty(shape, out.options());                          // [2 (cond, uncond), n, ...]
    comm->all_gather(both.view(-1), out.view(-1));
    return combine(both[0], both[1], x, opt);
  };
}

}  // namespace opendit::sample
