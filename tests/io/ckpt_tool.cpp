// ckpt_tool write DIR STEP MIB: one process saves a checkpoint of step STEP with about MIB MiB per group.
// ckpt_tool check DIR STEP: the latest complete checkpoint in DIR is that of STEP, and it loads with the values
// `write` gave it. Used by test_killed_writer.sh.
#include <mpi.h>

#include <cstdio>
#include <string>

#include "core/error.hpp"
#include "io/checkpoint.hpp"
#include "parallel/process_group.hpp"

using namespace opendit;

namespace {
FlatLayout layout_of(std::int64_t mib) {
  std::vector<FlatLayout::Spec> specs;
  const std::int64_t rows = std::max<std::int64_t>(1, mib * (1 << 20) / 4 / 1024 / 4);
  for (int i = 0; i < 4; ++i) specs.push_back({"blocks." + std::to_string(i) + ".weight", {rows, 1024}});
  specs.push_back({"final.bias", {7}});
  return FlatLayout(specs);
}
at::Tensor values(std::int64_t n, std::int64_t step, int g) {
  return at::arange(n, at::kFloat).mul(1e-3).add(step * 10 + g);
}
}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rc = 0;
  try {
    if (argc != 5 && argc != 4) throw Error("usage: ckpt_tool write DIR STEP MIB | check DIR STEP");
    const std::string mode = argv[1], dir = argv[2];
    const std::int64_t step = std::stoll(argv[3]);
    if (mode == "write") {
      auto layout = layout_of(std::stoll(argv[4]));
      io::ShardedState s{{0, layout.numel()}, {}};
      for (std::size_t g = 0; g < io::checkpoint_groups().size(); ++g)
        s.groups[io::checkpoint_groups()[g]] = values(layout.numel(), step, int(g));
      io::CheckpointMeta meta;
      meta.step = step;
      std::printf("%s\n", io::save_checkpoint(dir, layout, s, {}, meta, parallel::ProcessGroup::self(), 3).c_str());
    } else if (mode == "check") {
      auto latest = io::latest_checkpoint(dir);
      if (!latest || *latest != io::checkpoint_path(dir, step))
        throw Error(
            cat("latest checkpoint: expected ", io::checkpoint_path(dir, step), ", found ", latest ? *latest : "none"));
      auto meta = io::read_checkpoint_meta(*latest);
      auto weights = io::read_checkpoint_weights(*latest, "model");
      auto layout = layout_of(weights.at("blocks.0.weight").size(0) * 1024 * 4 * 4 / (1 << 20));
      io::ShardedState s{{0, layout.numel()}, {}};
      io::load_checkpoint(*latest, layout, s, parallel::ProcessGroup::self());
      for (std::size_t g = 0; g < io::checkpoint_groups().size(); ++g) {
        at::Tensor want = values(layout.numel(), step, int(g));
        at::Tensor got = s.groups.at(io::checkpoint_groups()[g]);
        auto mask = at::zeros({layout.numel()}, at::kBool);
        for (const auto& e : layout.entries()) mask.narrow(0, e.offset, e.numel).fill_(true);
        if (!at::equal(got.masked_select(mask), want.masked_select(mask)))
          throw Error(cat("group ", io::checkpoint_groups()[g], ": wrong values"));
      }
      std::printf("ok: %s (step %lld)\n", latest->c_str(), static_cast<long long>(meta.step));
    } else {
      throw Error("unknown mode " + mode);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "ckpt_tool: %s\n", e.what());
    rc = 1;
  }
  MPI_Finalize();
  return rc;
}
