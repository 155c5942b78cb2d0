#include "core/op_profiler.hpp"

#include <kineto/ActivityType.h>
#include <torch/csrc/autograd/profiler_kineto.h>
#include <torch/cuda.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <fstream>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <stdexcept>
#include <unordered_map>
#include <utility>

#include "core/error.hpp"

namespace opendit {

namespace prof = torch::autograd::profiler;
using libkineto::ActivityType;

namespace {

bool contains_any(const std::string& s, std::initializer_list<const char*> words) {
  for (const char* w : words)
    if (s.find(w) != std::string::npos) return true;
  return false;
}

bool is_gpu_activity(uint8_t type) {
  auto t = static_cast<ActivityType>(type);
  return t == ActivityType::CONCURRENT_KERNEL || t == ActivityType::GPU_MEMCPY || t == ActivityType::GPU_MEMSET;
}

bool is_cpu_op(uint8_t type) {
  auto t = static_cast<ActivityType>(type);
  return t == ActivityType::CPU_OP || t == ActivityType::USER_ANNOTATION;
}

// Total length of the union of [start, end) intervals (ns).
double union_length(std::vector<std::pair<uint64_t, uint64_t>> iv) {
  std::sort(iv.begin(), iv.end());
  double total = 0;
  uint64_t cur_start = 0, cur_end = 0;
  bool open = false;
  for (const auto& [s, e] : iv) {
    if (open && s <= cur_end) {
      cur_end = std::max(cur_end, e);
      continue;
    }
    if (open) total += static_cast<double>(cur_end - cur_start);
    cur_start = s, cur_end = e, open = true;
  }
  if (open) total += static_cast<double>(cur_end - cur_start);
  return total;
}

struct Interval {
  uint64_t start, end;
  size_t row;  // index into the name table
};

// Self time of nested CPU ops on one thread: an op's duration minus that of its direct children. Ops are nested
// intervals; sorted by start (longer first on ties), a stack of open ops finds each op's parent.
void add_self_times(std::vector<Interval>& ops, std::vector<double>& self_ns) {
  std::sort(ops.begin(), ops.end(), [](const Interval& a, const Interval& b) {
    return a.start != b.start ? a.start < b.start : a.end > b.end;
  });
  std::vector<const Interval*> open;
  for (const Interval& op : ops) {
    while (!open.empty() && open.back()->end <= op.start) open.pop_back();
    double d = static_cast<double>(op.end - op.start);
    self_ns[op.row] += d;
    if (!open.empty()) self_ns[open.back()->row] -= d;
    open.push_back(&op);
  }
}

std::string fmt(const char* format, double a) {
  char buf[64];
  std::snprintf(buf, sizeof buf, format, a);
  return buf;
}

std::string pad(const std::string& s, size_t width) {
  return s.size() >= width ? s : s + std::string(width - s.size(), ' ');
}

std::string lpad(const std::string& s, size_t width) {
  return s.size() >= width ? s : std::string(width - s.size(), ' ') + s;
}

// At most `width` characters (0: no limit), the middle elided: the kernel's own name is at the front, the functor
// or tile shape at the back.
std::string elide_middle(const std::string& s, size_t width) {
  const std::string dots = "...";
  if (width == 0 || s.size() <= width) return s;
  size_t keep = width > dots.size() ? width - dots.size() : 0;
  size_t head = (keep * 3 + 4) / 5;
  return s.substr(0, head) + dots + s.substr(s.size() - (keep - head));
}

}  // namespace

std::string short_kernel_name(const std::string& raw, size_t width) {
  std::string s = raw;
  // Copies and fills are named by the driver ("Memcpy DtoD (Device -> Device)"): nothing to shorten.
  bool driver_name = s.rfind("Memcpy", 0) == 0 || s.rfind("Memset", 0) == 0;
  if (!driver_name) {
    if (s.rfind("void ", 0) == 0) s.erase(0, 5);
    const std::string anon = "(anonymous namespace)::";
    for (size_t p; (p = s.find(anon)) != std::string::npos;) s.erase(p, anon.size());

    // Drop the parameter list (the first '(' outside template brackets), empty every other parenthesised group
    // (lambda and function-type arguments repeat the template), drop namespace qualifiers, close up "> >".
    std::string out;
    int angle = 0, paren = 0;
    for (size_t i = 0; i < s.size(); ++i) {
      char c = s[i];
      if (paren > 0) {
        if (c == '(') ++paren;
        if (c == ')' && --paren == 0) out += ')';
        continue;
      }
      if (c == '(') {
        if (angle == 0) break;
        ++paren;
        out += '(';
        continue;
      }
      if (c == '<') ++angle;
      if (c == '>' && angle > 0) --angle;
      if (c == ':' && i + 1 < s.size() && s[i + 1] == ':') {
        // "ns::name" -> "name": remove the identifier just written, and the "::".
        size_t k = out.size();
        while (k > 0 && (std::isalnum(static_cast<unsigned char>(out[k - 1])) || out[k - 1] == '_')) --k;
        if (out.compare(k, std::string::npos, "const") != 0) out.erase(k);  // "operator()() const::{lambda..."
        ++i;
        continue;
      }
      if (c == ' ' && !out.empty() && out.back() == '>' && i + 1 < s.size() && s[i + 1] == '>') continue;
      out += c;
    }
    // "f<...>(args)::{lambda(int)#1}" has become "f<...>(){lambda()#1}".
    s = out;
    while (!s.empty() && s.back() == ' ') s.pop_back();
  }
  return elide_middle(s, width);
}

std::string kernel_category(const std::string& name) {
  std::string s = name;
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
  // Attention first: cuDNN's and CUTLASS's attention kernels also carry gemm-like names.
  if (contains_any(s, {"flash", "fmha", "sdpa", "attention", "attn", "dot_do_o", "convert_dq"})) return "attention";
  if (contains_any(s, {"nccl"})) return "nccl";
  if (contains_any(s, {"adam", "multi_tensor_apply"})) return "optimizer";  // ours: adamw_ema; torch's foreach
  if (contains_any(s, {"gemm", "xmma", "cutlass", "cublas", "nvjet", "wgmma", "conv"})) return "gemm";
  if (contains_any(s, {"cudnn"})) return "attention";  // cuDNN's SDPA kernels that name neither flash nor sdpa
  if (contains_any(s, {"norm", "welford", "gammabeta"})) return "norm";
  if (contains_any(s, {"memcpy", "memset", "copy", "catarray", "transpose"})) return "copy";
  if (contains_any(s, {"reduce", "softmax"})) return "reduce";
  if (contains_any(s, {"elementwise", "vectorized", "pointwise", "gelu", "silu", "gated_residual", "modulate",
                       "fill", "unrolled"}))
    return "elementwise";
  return "other";
}

OpProfiler::OpProfiler() = default;

OpProfiler::~OpProfiler() {
  if (!running_) return;
  try {
    prof::disableProfiler();
  } catch (...) {
    // A destructor must not throw; the profiler's state is gone either way.
  }
}

void OpProfiler::start(bool cuda) {
  if (running_) throw std::logic_error("OpProfiler::start: already started (call stop() first)");
  if (prof::profilerEnabled())
    throw std::logic_error("OpProfiler::start: another profiler is active in this process; stop it first");
  if (cuda && !at::hasCUDA())
    throw Error("OpProfiler::start: CUDA profiling asked for, but this process sees no GPU");
  prof::ProfilerConfig config(prof::ProfilerState::KINETO);
  std::set<prof::ActivityType> activities{prof::ActivityType::CPU};
  if (cuda) activities.insert(prof::ActivityType::CUDA);
  // prepareProfiler sets up CUPTI before the window opens, so its start-up cost is not charged to the step.
  prof::prepareProfiler(config, activities);
  prof::enableProfiler(config, activities);
  running_ = true;
  cuda_ = cuda;
  have_results_ = false;
}

void OpProfiler::stop() {
  if (!running_) throw std::logic_error("OpProfiler::stop: not started (call start() first)");
  // Kernels still queued would be missing from the profile.
  if (cuda_) torch::cuda::synchronize();
  running_ = false;
  result_ = prof::disableProfiler();

  std::vector<std::string> names;  // row index -> name
  std::unordered_map<std::string, size_t> index;
  std::vector<int64_t> counts;
  std::vector<double> total_ns;
  auto row_of = [&](const std::string& name) {
    auto [it, inserted] = index.emplace(name, names.size());
    if (inserted) {
      names.push_back(name);
      counts.push_back(0);
      total_ns.push_back(0);
    }
    return it->second;
  };

  uint64_t first = std::numeric_limits<uint64_t>::max(), last = 0;
  std::vector<std::pair<uint64_t, uint64_t>> busy;  // GPU activity (cuda) or CPU ops (cpu)
  std::map<uint64_t, std::vector<Interval>> cpu_ops_by_thread;
  std::vector<Interval> kernels;  // GPU runs: every kernel/memcpy, for the idle gaps between them
  for (const auto& ev : result_->events()) {
    uint8_t type = ev.activityType();
    bool gpu = is_gpu_activity(type), cpu = is_cpu_op(type);
    if (!gpu && !cpu) continue;  // runtime/driver calls, instants, overhead markers
    uint64_t s = ev.startNs(), e = std::max(ev.endNs(), ev.startNs());
    first = std::min(first, s);
    last = std::max(last, e);
    if (cuda_ && gpu) {
      size_t r = row_of(short_kernel_name(ev.name()));
      counts[r] += 1;
      total_ns[r] += static_cast<double>(e - s);
      busy.emplace_back(s, e);
      kernels.push_back({s, e, r});
    } else if (!cuda_ && cpu) {
      size_t r = row_of(ev.name());
      counts[r] += 1;
      cpu_ops_by_thread[ev.startThreadId()].push_back({s, e, r});
      busy.emplace_back(s, e);
    }
  }
  for (auto& [thread, ops] : cpu_ops_by_thread) add_self_times(ops, total_ns);

  rows_.clear();
  for (size_t r = 0; r < names.size(); ++r)
    rows_.push_back({names[r], cuda_ ? kernel_category(names[r]) : "cpu", std::max(0.0, total_ns[r]) / 1e3, counts[r]});
  std::sort(rows_.begin(), rows_.end(), [](const OpRow& a, const OpRow& b) {
    return a.total_us != b.total_us ? a.total_us > b.total_us : a.name < b.name;
  });
  // Idle stretches: a kernel starting after every earlier one has ended (streams may overlap).
  std::sort(kernels.begin(), kernels.end(), [](const Interval& a, const Interval& b) { return a.start < b.start; });
  gaps_.clear();
  for (size_t i = 1, latest = 0; i < kernels.size(); ++i) {
    if (kernels[i].start > kernels[latest].end)
      gaps_.push_back({static_cast<double>(kernels[i].start - kernels[latest].end) / 1e3, names[kernels[latest].row],
                       names[kernels[i].row]});
    if (kernels[i].end > kernels[latest].end) latest = i;
  }
  std::sort(gaps_.begin(), gaps_.end(), [](const IdleGap& a, const IdleGap& b) { return a.us > b.us; });
  if (gaps_.size() > 8) gaps_.resize(8);
  wall_us_ = last > first ? static_cast<double>(last - first) / 1e3 : 0;
  busy_us_ = union_length(std::move(busy)) / 1e3;
  have_results_ = true;
}

void OpProfiler::require_results(const char* what) const {
  if (running_) throw std::logic_error(cat("OpProfiler::", what, ": the profiler is still running (call stop())"));
  if (!have_results_) throw std::logic_error(cat("OpProfiler::", what, ": no results (call start() and stop())"));
}

const std::vector<OpRow>& OpProfiler::rows() const {
  require_results("rows");
  return rows_;
}

double OpProfiler::wall_us() const {
  require_results("wall_us");
  return wall_us_;
}

const std::vector<IdleGap>& OpProfiler::largest_gaps() const {
  require_results("largest_gaps");
  return gaps_;
}

double OpProfiler::busy_us() const {
  require_results("busy_us");
  return busy_us_;
}

std::vector<CategoryTotal> OpProfiler::categories() const {
  require_results("categories");
  std::map<std::string, CategoryTotal> by;
  for (const OpRow& r : rows_) {
    CategoryTotal& c = by[r.category];
    c.category = r.category;
    c.total_us += r.total_us;
    c.count += r.count;
  }
  std::vector<CategoryTotal> out;
  for (auto& [name, c] : by) out.push_back(c);
  std::sort(out.begin(), out.end(), [](const CategoryTotal& a, const CategoryTotal& b) {
    return a.total_us > b.total_us;
  });
  return out;
}

// Shares: of the GPU-busy time for kernels (rows of concurrent streams may add up to more than 100%), of the summed
// self time for CPU ops.
static double share_base(bool cuda, double busy_us, const std::vector<OpRow>& rows) {
  if (cuda) return busy_us;
  double sum = 0;
  for (const OpRow& r : rows) sum += r.total_us;
  return sum;
}

std::string OpProfiler::table(int top) const {
  require_results("table");
  const double base = share_base(cuda_, busy_us_, rows_);
  auto share = [&](double us) { return base > 0 ? 100.0 * us / base : 0.0; };
  constexpr size_t kName = 72;
  std::ostringstream os;
  double wall = wall_us_ / 1e3, busy = busy_us_ / 1e3, idle = (wall_us_ - busy_us_) / 1e3;
  double wall_share = wall_us_ > 0 ? 100.0 / wall_us_ : 0.0;
  if (cuda_) {
    os << "op profile, CUDA kernels: wall " << fmt("%.3f", wall) << " ms, GPU busy " << fmt("%.3f", busy) << " ms ("
       << fmt("%.1f", busy_us_ * wall_share) << "%), idle gap " << fmt("%.3f", idle) << " ms ("
       << fmt("%.1f", (wall_us_ - busy_us_) * wall_share) << "%: launch and sync overhead)\n";
  } else {
    os << "op profile, CPU ops (self time): wall " << fmt("%.3f", wall) << " ms, in ops " << fmt("%.3f", busy)
       << " ms (" << fmt("%.1f", busy_us_ * wall_share) << "%), outside ops " << fmt("%.3f", idle) << " ms\n";
  }
  const char* share_label = cuda_ ? "% busy" : "% self";
  os << "  " << pad(cuda_ ? "kernel" : "op", kName) << " " << pad("category", 11) << lpad("total ms", 10)
     << lpad("count", 8) << lpad(share_label, 8) << "\n";
  size_t shown = std::min(rows_.size(), static_cast<size_t>(std::max(top, 0)));
  for (size_t i = 0; i < shown; ++i) {
    const OpRow& r = rows_[i];
    os << "  " << pad(elide_middle(r.name, kName), kName) << " " << pad(r.category, 11)  // names are short already
       << lpad(fmt("%.3f", r.total_us / 1e3), 10) << lpad(std::to_string(r.count), 8)
       << lpad(fmt("%.1f", share(r.total_us)), 8) << "\n";
  }
  if (shown < rows_.size()) {
    double rest = 0;
    int64_t rest_count = 0;
    for (size_t i = shown; i < rows_.size(); ++i) rest += rows_[i].total_us, rest_count += rows_[i].count;
    os << "  " << pad(cat("(", rows_.size() - shown, " more)"), kName) << " " << pad("", 11)
       << lpad(fmt("%.3f", rest / 1e3), 10) << lpad(std::to_string(rest_count), 8) << lpad(fmt("%.1f", share(rest)), 8)
       << "\n";
  }
  if (cuda_) {
    os << "  by category:\n";
    for (const CategoryTotal& c : categories())
      os << "  " << pad("", kName) << " " << pad(c.category, 11) << lpad(fmt("%.3f", c.total_us / 1e3), 10)
         << lpad(std::to_string(c.count), 8) << lpad(fmt("%.1f", share(c.total_us)), 8) << "\n";
    if (!gaps_.empty()) os << "  longest idle gaps (GPU waiting for the host):\n";
    for (const IdleGap& g : gaps_)
      os << "  " << lpad(fmt("%.3f", g.us / 1e3), 8) << " ms after " << elide_middle(g.before, 48) << ", before "
         << elide_middle(g.after, 48) << "\n";
  }
  return os.str();
}

void OpProfiler::write_json(const std::string& path) const {
  require_results("write_json");
  const double base = share_base(cuda_, busy_us_, rows_);
  auto share = [&](double us) { return base > 0 ? 100.0 * us / base : 0.0; };
  nlohmann::json j;
  j["device"] = cuda_ ? "cuda" : "cpu";
  j["time"] = cuda_ ? "kernel" : "self";
  j["wall_us"] = wall_us_;
  j["busy_us"] = busy_us_;
  j["idle_us"] = wall_us_ - busy_us_;
  j["categories"] = nlohmann::json::array();
  if (cuda_)
    for (const CategoryTotal& c : categories())
      j["categories"].push_back(
          {{"category", c.category}, {"total_us", c.total_us}, {"count", c.count}, {"percent", share(c.total_us)}});
  j["rows"] = nlohmann::json::array();
  for (const OpRow& r : rows_)
    j["rows"].push_back({{"name", r.name},
                         {"category", r.category},
                         {"total_us", r.total_us},
                         {"count", r.count},
                         {"percent", share(r.total_us)}});
  std::ofstream f(path);
  if (!f) throw Error(cat("OpProfiler::write_json: cannot open ", path, " for writing"));
  f << j.dump(1) << "\n";
  if (!f) throw Error(cat("OpProfiler::write_json: writing ", path, " failed"));
}

void OpProfiler::write_trace(const std::string& path) const {
  require_results("write_trace");
  result_->save(path);
}

}  // namespace opendit
