#include "parallel/counting_communicator.hpp"

#include <cstdio>
#include <vector>

namespace opendit::parallel {

const char* collective_name(Collective c) {
  switch (c) {
    case Collective::AllReduce: return "all_reduce";
    case Collective::ReduceScatter: return "reduce_scatter";
    case Collective::AllGather: return "all_gather";
    case Collective::AllToAll: return "all_to_all";
    default: return "broadcast";
  }
}

std::string describe_counts(const CollectiveCounts& c, double per) {
  std::string out;
  for (int k = 0; k < kCollectives; ++k) {
    if (c[size_t(k)].calls == 0) continue;
    const double calls = c[size_t(k)].calls / per, bytes = c[size_t(k)].bytes / per;
    char b[96];
    if (bytes >= 1 << 30) std::snprintf(b, sizeof b, "%.2f GiB", bytes / (1 << 30));
    else if (bytes >= 1 << 20) std::snprintf(b, sizeof b, "%.1f MiB", bytes / (1 << 20));
    else std::snprintf(b, sizeof b, "%.1f KiB", bytes / 1024);
    char line[160];
    std::snprintf(line, sizeof line, "%s%s %g calls, %s", out.empty() ? "" : "; ",
                  collective_name(Collective(k)), calls, b);
    out += line;
  }
  return out.empty() ? "none" : out;
}

}  // namespace opendit::parallel
