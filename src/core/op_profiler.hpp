// Where the time of one training step goes, op by op: a thin layer over LibTorch's Kineto profiler.
//   OpProfiler p; p.start(/*cuda=*/true); ...one step...; p.stop(); std::cout << p.table();
// GPU runs aggregate the CUDA kernels (and memcpy/memset) by name, with a coarse category per kernel and the idle
// gap between the wall time and the time the GPU was busy (launch and sync overhead). CPU runs aggregate the self
// time of each aten op. Only one profiler may be active in a process at a time (Kineto's state is global).
#pragma once
#include <memory>
#include <string>
#include <vector>

namespace torch::autograd::profiler {
struct ProfilerResult;
}

namespace opendit {

// One row of the breakdown: every event of one (shortened) name.
struct OpRow {
  std::string name;      // shortened kernel name, or the aten op name
  std::string category;  // gemm, attention, norm, ... (GPU rows); "cpu" for CPU rows
  double total_us = 0;   // kernel time (GPU) or self time (CPU), summed
  int64_t count = 0;
};

// A stretch between GPU kernels with none running (GPU runs): what ran before and after it.
struct IdleGap {
  double us = 0;
  std::string before, after;
};

// The summed time of one category of GPU rows.
struct CategoryTotal {
  std::string category;
  double total_us = 0;
  int64_t count = 0;
};

class OpProfiler {
 public:
  OpProfiler();
  ~OpProfiler();  // stops a profiler left running, so that Kineto's global state is released
  OpProfiler(const OpProfiler&) = delete;
  OpProfiler& operator=(const OpProfiler&) = delete;

  // cuda: record CUDA kernels (needs a GPU); otherwise CPU ops only. Throws std::logic_error if already started.
  void start(bool cuda);
  // Waits for the GPU (cuda runs), stops and aggregates. Throws std::logic_error without a start.
  void stop();
  bool running() const { return running_; }

  // The results of the last stop() (std::logic_error before one).
  const std::vector<OpRow>& rows() const;  // largest total first
  std::vector<CategoryTotal> categories() const;  // GPU runs; largest first
  bool cuda() const { return cuda_; }
  double wall_us() const;  // first event start to last event end
  double busy_us() const;  // union of the GPU kernel/memcpy intervals (GPU), of the outermost op intervals (CPU)
  double idle_us() const { return wall_us() - busy_us(); }
  const std::vector<IdleGap>& largest_gaps() const;  // GPU runs: the longest idle stretches, longest first (up to 8)

  // A fixed-width table of the top rows, the per-category summary (GPU) and the wall/busy/idle line.
  std::string table(int top = 25) const;
  // {"device", "wall_us", "busy_us", "idle_us", "categories": [...], "rows": [{name, category, total_us, count,
  // percent}, ...]}: every row, not only the top ones.
  void write_json(const std::string& path) const;
  // Kineto's own Chrome trace (chrome://tracing, ui.perfetto.dev) of the last run: the timeline behind the table.
  void write_trace(const std::string& path) const;

 private:
  void require_results(const char* what) const;

  bool running_ = false, cuda_ = false, have_results_ = false;
  std::vector<OpRow> rows_;
  std::vector<IdleGap> gaps_;
  double wall_us_ = 0, busy_us_ = 0;
  std::unique_ptr<torch::autograd::profiler::ProfilerResult> result_;
};

// A readable kernel name: no "void ", no parameter list, no at::/std::/cutlass:: style namespace prefixes, and
// at most `width` characters (the middle is elided: the kernel's own name at the front and the functor at the end
// are what tell kernels apart). The aggregation groups by short_kernel_name(name, 0) (no width limit).
std::string short_kernel_name(const std::string& name, size_t width = 0);
// A coarse category from the (raw or short) kernel name: attention, nccl, optimizer, gemm, norm, reduce, copy,
// elementwise or other (checked in that order: cuDNN/CUTLASS attention kernels also match the gemm names).
std::string kernel_category(const std::string& name);

}  // namespace opendit
