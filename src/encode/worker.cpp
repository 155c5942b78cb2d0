// One rank's encoding: decode ahead, chunks through the encoders, pipelined on a GPU (see worker.hpp).
#include "encode/worker.hpp"

#include <c10/core/Event.h>
#include <c10/core/impl/VirtualGuardImpl.h>
#include <dlfcn.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <map>

#include <ATen/Parallel.h>

#include "core/error.hpp"
#include "core/progress.hpp"
#include "encode/text.hpp"
#include "models/vae/pipeline.hpp"

namespace opendit::encode {
namespace {

using Clock = std::chrono::steady_clock;

// A decoding thread is one of many: the ATen ops it runs (colour conversion, video resizing) must not each start an
// OpenMP team as wide as the machine, which starves the thread that feeds the GPU. OpenMP's thread count is a
// per-thread setting; libgomp is loaded by libtorch (found at run time: opendit does not link OpenMP itself). ATen
// sets this thread's count on its first parallel op: that comes first, then ours.
void one_openmp_thread_here() {
  using SetThreads = void (*)(int);
  static const auto set = reinterpret_cast<SetThreads>(dlsym(RTLD_DEFAULT, "omp_set_num_threads"));
  (void)at::get_num_threads();
  if (set) set(1);
}

}  // namespace

// A chunk's group of one shape on its way through the VAE: host results filled asynchronously on a GPU.
struct Worker::Pending {
  std::vector<int64_t> ids;     // inputs, ascending
  at::Tensor host_in;           // the pixels sent (pinned on a GPU; kept until the copy is done)
  at::Tensor mean, logvar;      // [n, ...] in the stored dtype (pinned on a GPU)
  std::optional<c10::Event> begin, done;  // GPU: recorded before the copy in and after the copies back
};

Worker::Worker(const EncodeSettings& s, const InputList& in, at::Device device, LoadedVae vae,
               std::optional<LoadedT5> t5, const std::vector<int64_t>& inputs, int threads)
    : s_(s), in_(in), device_(device), vae_(std::move(vae)), t5_(std::move(t5)), inputs_(inputs) {
  ahead_ = std::make_unique<OrderedPrefetch<PreparedItem>>(
      int64_t(inputs_.size()), threads, std::max<int64_t>(2 * s_.batch, threads), [this](int64_t j) {
        static thread_local const bool once = (one_openmp_thread_here(), true);
        (void)once;
        PreparedItem item = prepare_item(in_.items[inputs_[j]].path, s_.prepare);
        if (item.pixels.defined()) item.pixels = item.pixels.contiguous();  // here, not on the thread feeding the GPU
        return item;
      });
}

Worker::~Worker() = default;

void Worker::stop() { ahead_.reset(); }

void Worker::launch(const std::vector<int64_t>& ids, std::vector<at::Tensor>& pixels, std::vector<Pending>& queue) {
  const bool gpu = device_.is_cuda();
  std::vector<int64_t> dims{int64_t(ids.size())};
  const auto shape = pixels.front().sizes();
  dims.insert(dims.end(), shape.begin(), shape.end());
  Pending p;
  p.ids = ids;
  p.host_in = at::empty(dims, at::TensorOptions(at::kFloat).pinned_memory(gpu));  // [n, 3, (T,) S, S]
  const std::size_t bytes = pixels.front().numel() * sizeof(float);
  for (std::size_t j = 0; j < pixels.size(); ++j) {
    std::memcpy(static_cast<char*>(p.host_in.data_ptr()) + j * bytes, pixels[j].data_ptr(), bytes);  // contiguous
    pixels[j] = at::Tensor();
  }
  auto stream = [&] { return c10::impl::VirtualGuardImpl(device_.type()).getStream(device_); };
  if (gpu) {
    p.begin.emplace(device_.type(), c10::EventFlag::BACKEND_DEFAULT);  // timing on: the GPU-busy share
    p.begin->record(stream());
  }
  const at::Tensor x = p.host_in.to(device_, /*non_blocking=*/true).to(s_.vae_dtype);
  // --vae pixel: the pixels themselves, [n, 3, (T,) S, S] in [-1, 1], are stored (no posterior).
  models::vae::Posterior post;
  if (vae_.model) post = models::vae::encode(*vae_.model, x, {s_.vae_micro_batch});
  else post.mean = x;
  auto back = [&](const at::Tensor& t) {
    at::Tensor h = at::empty(t.sizes(), at::TensorOptions(s_.dtype).pinned_memory(gpu));
    h.copy_(t.to(s_.dtype), /*non_blocking=*/true);  // converted on the device, then copied
    return h;
  };
  p.mean = back(post.mean);
  if (!mean_only()) p.logvar = back(post.logvar);
  if (gpu) {
    p.done.emplace(device_.type(), c10::EventFlag::BACKEND_DEFAULT);
    p.done->record(stream());
  }
  queue.push_back(std::move(p));
}

EncodedBlock Worker::encode(int64_t index) {
  const auto start = Clock::now();
  EncodedBlock blk;
  blk.index = index;
  blk.first = index * s_.block;
  blk.count = std::min<int64_t>(s_.block, int64_t(in_.items.size()) - blk.first);
  std::map<std::vector<int64_t>, std::vector<Pending>> done;  // latent shape -> its groups, in input order
  std::vector<Pending> previous;                              // the last chunk's groups, still on the device
  std::vector<at::Tensor> tokens;
  auto harvest = [&](std::vector<Pending>& list) {
    for (Pending& p : list) {
      const auto t = Clock::now();
      if (p.done) p.done->synchronize(), gpu_s += p.begin->elapsedTime(*p.done) / 1e3;
      encoder_s += seconds_since(t);
      p.host_in = at::Tensor();
      done[p.mean.sizes().slice(1).vec()].push_back(std::move(p));
    }
    list.clear();
  };
  for (int64_t c0 = 0; c0 < blk.count; c0 += s_.batch) {
    const int64_t c1 = std::min(blk.count, c0 + s_.batch);
    std::map<std::vector<int64_t>, std::pair<std::vector<int64_t>, std::vector<at::Tensor>>> by_shape;
    std::vector<int64_t> ok;
    for (int64_t i = blk.first + c0; i < blk.first + c1; ++i) {
      const auto t = Clock::now();
      std::optional<PreparedItem> item = ahead_->next();
      wait_s += seconds_since(t);
      if (!item) throw Error("encode: the decode queue ended early");
      if (!item->error.empty()) {
        const std::string& path = in_.items[i].path;  // the reason without the path it may start with
        if (item->error.rfind(path + ": ", 0) == 0) item->error.erase(0, path.size() + 2);
        std::fprintf(stderr, "opendit: warning: skipping %s: %s\n", path.c_str(), item->error.c_str());
        blk.failed.push_back(i);
        blk.reasons.push_back(item->error);
        continue;
      }
      auto& group = by_shape[item->pixels.sizes().vec()];
      group.first.push_back(i);
      group.second.push_back(std::move(item->pixels));
      ok.push_back(i);
    }
    std::vector<Pending> current;
    const auto t = Clock::now();
    for (auto& [shape, group] : by_shape) launch(group.first, group.second, current);
    if (t5_ && !ok.empty()) {  // after the VAE's work is queued; its copy to the host waits for that work
      std::vector<std::string> captions;
      for (int64_t i : ok) captions.push_back(in_.items[i].caption);
      const CaptionEmbeddings e =
          embed_captions(*t5_->model, *t5_->tokenizer, captions, s_.text_length, s_.clean_captions);
      tokens.push_back(e.tokens.to(s_.dtype));
      const auto* len = e.lengths.data_ptr<int64_t>();
      blk.text_inputs.insert(blk.text_inputs.end(), ok.begin(), ok.end());
      blk.text_lengths.insert(blk.text_lengths.end(), len, len + ok.size());
      for (bool cut : e.truncated) blk.truncated += cut;
    }
    encoder_s += seconds_since(t);
    harvest(previous);  // the chunk before this one: done by now, or the GPU is still busy with it
    previous = std::move(current);
  }
  harvest(previous);
  for (auto& [shape, list] : done) {
    EncodedGroup g;
    g.shape = shape;
    std::vector<at::Tensor> means, logvars;
    for (Pending& p : list) {
      g.inputs.insert(g.inputs.end(), p.ids.begin(), p.ids.end());  // chunks in order: ascending
      means.push_back(p.mean);
      if (!mean_only()) logvars.push_back(p.logvar);
    }
    g.mean = at::cat(means);
    if (!mean_only()) g.logvar = at::cat(logvars);
    blk.groups.push_back(std::move(g));
  }
  if (t5_) {
    const int64_t dim = t5_->model->config().d_model;
    blk.text_tokens = tokens.empty() ? at::empty({0, dim}, s_.dtype) : at::cat(tokens);
  }
  busy_s += seconds_since(start);
  return blk;
}

}  // namespace opendit::encode
