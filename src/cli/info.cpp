// `opendit info`: what this binary is built from, what it sees, and how the ranks form the mesh.
#include <hdf5.h>
#include <mpi.h>
#include <torch/version.h>
#include <unistd.h>

#include <cstdio>
#include <sstream>

#include "cli/app.hpp"
#include "config/schema.hpp"
#include "core/build_info.hpp"
#include "core/devices.hpp"
#include "parallel/mesh.hpp"

namespace opendit::cli {

namespace {

struct InfoArgs {
  DeckArgs deck;
  bool config_doc = false;
};

std::string mpi_library() {
  char text[MPI_MAX_LIBRARY_VERSION_STRING];
  int len = 0;
  MPI_Get_library_version(text, &len);
  std::string s(text, len);
  s = s.substr(0, s.find_first_of(",\n"));  // "Open MPI v4.1.4, package: ..." -> "Open MPI v4.1.4"
  int major = 0, minor = 0;
  MPI_Get_version(&major, &minor);
  return s + " (MPI " + std::to_string(major) + "." + std::to_string(minor) + ")";
}

std::string hdf5_text() {
  unsigned maj = 0, min = 0, rel = 0;
  H5get_libversion(&maj, &min, &rel);
  std::ostringstream os;
  os << maj << "." << min << "." << rel;
#ifdef H5_HAVE_PARALLEL
  os << " (parallel: yes)";
#else
  os << " (parallel: no, checkpoints are written through rank 0)";
#endif
  return os.str();
}

std::string gpu_text(const GpuInfo& g) {
  char buf[256];
  std::snprintf(buf, sizeof buf, "%s (%.1f GiB, sm_%d%d)", g.name.c_str(), g.memory_gib, g.sm_major, g.sm_minor);
  return buf;
}

// One line per rank: host and the device the rank would use (local rank modulo the visible GPUs).
std::string ranks_table(const Mesh& mesh, const std::vector<GpuInfo>& gpus) {
  const int local = mesh.local_rank();

  constexpr int kLine = 160;
  char host[64] = {0};
  gethostname(host, sizeof host - 1);
  char line[kLine] = {0};
  std::string dev = gpus.empty() ? "cpu"
                                 : "cuda:" + std::to_string(local % gpus.size()) + " " +
                                       gpu_text(gpus[local % gpus.size()]);
  const auto& c = mesh.coord();
  std::snprintf(line, kLine, "  %5d  %4d  %4d  %-20s %s", mesh.rank(), c.dp_rank, c.sp_rank, host, dev.c_str());
  std::vector<char> all(mesh.rank() == 0 ? size_t(kLine) * mesh.world_size() : 0);
  MPI_Gather(line, kLine, MPI_CHAR, all.data(), kLine, MPI_CHAR, 0, mesh.world_comm());
  std::string out = "   rank    dp    sp  host                 device\n";
  for (int r = 0; r < mesh.world_size() && mesh.rank() == 0; ++r) {
    if (r == 16 && mesh.world_size() > 18) {
      out += "  ... (" + std::to_string(mesh.world_size() - 17) + " more ranks)\n";
      r = mesh.world_size() - 1;
    }
    out += std::string(&all[size_t(r) * kLine]) + "\n";
  }
  return out;
}

void run_info(const InfoArgs& args, MpiRuntime& mpi) {
  if (args.config_doc) {
    if (mpi.rank() == 0) std::fputs(config::schema_markdown().c_str(), stdout);
    return;
  }
  config::Deck deck = args.deck.load();
  Mesh mesh(MPI_COMM_WORLD, static_cast<int>(deck.get_int("parallel.sp_size")));
  auto gpus = visible_gpus();

  std::ostringstream os;
  os << "opendit " << OPENDIT_VERSION << "  commit " << OPENDIT_GIT_COMMIT << "  (" << OPENDIT_BUILD_TYPE << ")\n";
#ifdef OPENDIT_WITH_CUDA
  os << "  CUDA kernels  built (" << OPENDIT_CUDA_ARCHS << ")\n";
#else
  os << "  CUDA kernels  not built (CPU-only build)\n";
#endif
  os << "  torch         " << TORCH_VERSION << "\n"
     << "  CUDA runtime  " << cuda_runtime_version() << "\n"
     << "  cuDNN         " << cudnn_version() << "\n"
     << "  NCCL          " << nccl_version() << "\n"
     << "  MPI           " << mpi_library() << "\n"
     << "  HDF5          " << hdf5_text() << "\n"
     << "  devices       ";
  if (gpus.empty()) os << "no GPU visible: running on CPU\n";
  else
    for (size_t i = 0; i < gpus.size(); ++i) os << (i ? "                " : "") << i << ": " << gpu_text(gpus[i]) << "\n";
  os << "mesh: " << mesh.describe() << "\n";
  std::string table = ranks_table(mesh, gpus);
  if (!args.deck.config_path.empty() || !args.deck.sets.empty())
    os << "\nresolved deck (" << (args.deck.config_path.empty() ? "defaults" : args.deck.config_path) << "):\n"
       << deck.to_toml(true);
  if (mpi.rank() == 0) std::printf("%s%s", os.str().c_str(), ("\n" + table).c_str());
}

}  // namespace

void add_info(CLI::App& app, MpiRuntime& mpi) {
  auto args = std::make_shared<InfoArgs>();
  auto* cmd = app.add_subcommand("info", "Show versions, devices and the process mesh (and the resolved deck)");
  args->deck.add_to(*cmd);
  cmd->add_flag("--config-doc", args->config_doc, "Print the deck reference (docs/CONFIG.md) and exit");
  cmd->callback([args, &mpi] { run_info(*args, mpi); });
}

}  // namespace opendit::cli
