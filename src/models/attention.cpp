#include "models/attention.hpp"

#include <ATen/Context.h>
#include <ATen/SDPBackend.h>

#include <algorithm>
#include <vector>

#include "core/error.hpp"

namespace opendit::models {

void set_attention_backend(const std::string& name) {
  using B = at::SDPBackend;
  std::vector<B> order = {B::cudnn_attention, B::flash_attention, B::efficient_attention, B::math, B::overrideable};
  if (name != "auto") {
    B first = name == "cudnn"       ? B::cudnn_attention
              : name == "flash"     ? B::flash_attention
              : name == "efficient" ? B::efficient_attention
              : name == "math"      ? B::math
                                    : B::error;
    if (first == B::error)
      throw Error(cat("model.attention = \"", name, "\": expected auto, cudnn, flash, efficient or math"));
    order.erase(std::find(order.begin(), order.end(), first));
    order.insert(order.begin(), first);
  }
  std::vector<int64_t> ids;
  for (B b : order) ids.push_back(static_cast<int64_t>(b));
  auto& ctx = at::globalContext();
  ctx.setSDPUseCuDNN(true);
  ctx.setSDPUseFlash(true);
  ctx.setSDPUseMemEfficient(true);
  ctx.setSDPUseMath(true);
  ctx.setSDPPriorityOrder(ids);
}

}  // namespace opendit::models
