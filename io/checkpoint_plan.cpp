// The checkpoint plan: who handles which elements, and the checksums (see checkpoint_plan.hpp).
#include "io/checkpoint_plan.hpp"

#include <zlib.h>

#include <algorithm>
#include <tuple>

#include "core/error.hpp"

namespace opendit::io::ckpt {
namespace {

std::vector<Interval> subtract(const std::vector<Interval>& a, Interval b) {
  std::vector<Interval> out;
  for (auto [s, e] : a) {
    if (b.second <= s || b.first >= e) {
      out.push_back({s, e});
      continue;
    }
    if (s < b.first) out.push_back({s, b.first});
    if (b.second < e) out.push_back({b.second, e});
  }
  return out;
}

}  // namespace

std::vector<FlatRange> all_ranges(FlatRange mine, const parallel::ProcessGroup& group) {
  const auto all = group.all_gather({mine.begin, mine.end});
  std::vector<FlatRange> out(static_cast<std::size_t>(group.size()));
  for (std::size_t i = 0; i < out.size(); ++i) out[i] = {all[2 * i], all[2 * i + 1]};
  return out;
}

std::vector<Interval> assigned(const std::vector<FlatRange>& ranges, int r, std::int64_t numel, bool rank0_takes_rest,
                               std::vector<Interval>* rest) {
  std::vector<Interval> mine = {{std::max<std::int64_t>(ranges[r].begin, 0), std::min(ranges[r].end, numel)}};
  if (mine[0].first >= mine[0].second) mine.clear();
  for (int q = 0; q < r; ++q) mine = subtract(mine, {ranges[q].begin, ranges[q].end});
  std::vector<Interval> uncovered = {{0, numel}};
  for (const auto& x : ranges) uncovered = subtract(uncovered, {x.begin, x.end});
  if (rest) *rest = uncovered;
  if (r == 0 && rank0_takes_rest) mine.insert(mine.end(), uncovered.begin(), uncovered.end());
  return mine;
}

std::vector<FlatLayout::Piece> pieces_of(const FlatLayout& layout, const std::vector<Interval>& ivs) {
  std::vector<FlatLayout::Piece> out;
  for (auto [s, e] : ivs)
    for (const auto& p : layout.pieces({s, e})) out.push_back(p);
  return out;
}

std::uint32_t crc_bytes(const void* p, std::int64_t bytes, std::uint32_t crc) {
  auto c = static_cast<const Bytef*>(p);
  uLong v = crc;
  while (bytes > 0) {
    const uInt n = uInt(std::min<std::int64_t>(bytes, std::int64_t(1) << 30));
    v = crc32(v, c, n);
    c += n, bytes -= n;
  }
  return std::uint32_t(v);
}

std::uint32_t crc_tensor(const at::Tensor& t) {
  at::Tensor c = t.contiguous();
  return crc_bytes(c.data_ptr(), c.numel() * std::int64_t(c.element_size()));
}

std::vector<std::int64_t> combine_crcs(const std::vector<CrcRecord>& mine, const FlatLayout& layout,
                                       std::size_t ngroups, const std::vector<std::size_t>& groups,
                                       const parallel::ProcessGroup& group, std::string* gap) {
  std::vector<std::int64_t> flat;
  for (const CrcRecord& r : mine) flat.insert(flat.end(), {r.group, r.entry, r.param, r.count, r.crc});
  const auto gathered = group.gather(flat, 0);
  if (group.rank() != 0) return {};
  std::vector<CrcRecord> all;
  for (const auto& v : gathered)
    for (std::size_t i = 0; i + 5 <= v.size(); i += 5) all.push_back({v[i], v[i + 1], v[i + 2], v[i + 3], v[i + 4]});
  std::sort(all.begin(), all.end(), [](const CrcRecord& a, const CrcRecord& b) {
    return std::tie(a.group, a.entry, a.param) < std::tie(b.group, b.entry, b.param);
  });
  const auto& entries = layout.entries();
  std::vector<std::int64_t> crcs(ngroups * entries.size(), 0);
  std::vector<std::int64_t> done(ngroups * entries.size(), 0);
  for (const auto& r : all) {
    const std::size_t k = std::size_t(r.group) * entries.size() + std::size_t(r.entry);
    if (r.param != done[k]) {
      if (gap->empty()) *gap = cat("elements [", done[k], ", ", r.param, ") of ", entries[r.entry].name);
      continue;
    }
    crcs[k] = std::int64_t(crc32_combine(uLong(crcs[k]), uLong(r.crc), z_off_t(r.count * 4)));
    done[k] += r.count;
  }
  for (std::size_t k = 0; k < done.size(); ++k)
    if (std::count(groups.begin(), groups.end(), k / entries.size()) && done[k] != entries[k % entries.size()].numel &&
        gap->empty())
      *gap = cat("elements [", done[k], ", ", entries[k % entries.size()].numel, ") of ",
                 entries[k % entries.size()].name);
  return crcs;
}

}  // namespace opendit::io::ckpt
