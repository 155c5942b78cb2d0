// `opendit info`: what this binary is built from, what it sees, and how the ranks form the mesh.
#include <torch/version.h>
#include <unistd.h>

#include <cstdio>
#include <sstream>

#include "cli/app.hpp"
#include "config/schema.hpp"
#include "core/build_info.hpp"
#include "core/devices.hpp"
#include "core/error.hpp"
#include "core/strings.hpp"
#include "encode/encoders.hpp"
#include "io/h5.hpp"
#include "io/video_read.hpp"
#include "models/registry.hpp"
#include "parallel/communicator.hpp"
#include "parallel/mesh.hpp"

namespace opendit::cli {

namespace {

struct InfoArgs {
  DeckArgs deck;
  bool config_doc = false;
  std::string vae, text_encoder;
  bool tensors = false;
};

// Every tensor of a set: name, shape (as the config implies and the file holds).
std::string tensor_list(const models::TensorSet& w) {
  std::string out;
  for (const std::string& n : w.names()) out += cat("    ", n, " ", shape_str(w.shape(n)), "\n");
  return out;
}

std::string count_text(int64_t n) {  // 83653863 -> "83,653,863"
  std::string s = std::to_string(n);
  for (int i = static_cast<int>(s.size()) - 3; i > 0; i -= 3) s.insert(static_cast<size_t>(i), ",");
  return s;
}

std::string dtype_text(at::ScalarType t) {
  return t == at::kBFloat16 ? "bfloat16" : t == at::kHalf ? "float16" : t == at::kFloat ? "float32" : c10::toString(t);
}

std::string files_text(const std::vector<std::string>& files) {
  if (files.size() == 1) return files.front();
  return cat(files.size(), " shards: ", files.front(), " ... ", files.back());
}

// What --vae and --text-encoder hold: every name and shape checked against config.json from the files' headers (no
// weights are read, so this is quick for a 19 GB T5-XXL), the tokenizer loaded.
std::string encoders_text(const InfoArgs& a) {
  std::ostringstream os;
  const auto check_only = at::TensorOptions(at::kFloat).device(at::kMeta);
  if (!a.vae.empty()) {
    const encode::LoadedVae v = encode::load_vae(a.vae, check_only);
    int64_t enc = 0;
    for (const std::string& n : v.model->weights().names()) {
      int64_t k = 1;
      for (int64_t d : v.model->weights().shape(n)) k *= d;
      if (n.rfind("encoder.", 0) == 0 || n.rfind("quant_conv.", 0) == 0) enc += k;
    }
    const int64_t all = v.model->weights().numel();
    os << "VAE           " << v.folder << "\n"
       << "  model       " << v.model->config().describe() << "\n"
       << "  weights     " << files_text(v.weight_files) << " (" << dtype_text(v.file_dtype) << ", "
       << v.model->weights().names().size() << " tensors, names and shapes match config.json)\n"
       << "  parameters  " << count_text(all) << " (encoder " << count_text(enc) << ", decoder "
       << count_text(all - enc) << ")\n";
    if (a.tensors) os << tensor_list(v.model->weights());
  }
  if (!a.text_encoder.empty()) {
    const encode::LoadedT5 t = encode::load_t5(a.text_encoder, check_only, /*with_tokenizer=*/true);
    os << "text encoder  " << t.folder << "\n"
       << "  model       " << t.model->config().describe() << "\n"
       << "  weights     " << files_text(t.weight_files) << " (" << dtype_text(t.file_dtype) << ", "
       << t.model->weights().names().size() << " tensors, names and shapes match config.json"
       << (t.skipped.empty() ? "" : cat("; ", t.skipped.size(), " decoder/lm_head tensors of a whole T5 not used"))
       << ")\n"
       << "  parameters  " << count_text(t.model->weights().numel()) << "\n"
       << "  tokenizer   " << t.tokenizer->path() << " (" << t.tokenizer->vocab_size()
       << " ids with the extra ids, EOS " << t.tokenizer->eos_id() << ", padding " << t.tokenizer->pad_id() << ")\n";
    if (a.tensors) os << tensor_list(t.model->weights());
  }
  return os.str();
}

std::string model_names() {
  std::string names;
  for (const auto& t : models::model_types()) names += (names.empty() ? "" : ", ") + t.name;
  return names;
}

std::string gpu_text(const GpuInfo& g) {
  char buf[256];
  std::snprintf(buf, sizeof buf, "%s (%.1f GiB, sm_%d%d)", g.name.c_str(), g.memory_gib, g.sm_major, g.sm_minor);
  return buf;
}

// One line per rank: host and the device the rank would use (local rank modulo the visible GPUs).
std::string ranks_table(const parallel::Mesh& mesh, const std::vector<GpuInfo>& gpus) {
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
  const std::vector<std::string> all = mesh.world().gather(std::string(line), 0);
  std::string out = "   rank    dp    sp  host                 device\n";
  for (int r = 0; r < int(all.size()); ++r) {
    if (r == 16 && all.size() > 18) {
      out += "  ... (" + std::to_string(all.size() - 17) + " more ranks)\n";
      r = int(all.size()) - 1;
    }
    out += all[size_t(r)] + "\n";
  }
  return out;
}

void run_info(const InfoArgs& args, MpiRuntime& mpi) {
  if (args.config_doc) {
    if (mpi.rank() == 0) std::fputs(config::schema_markdown(models::deck_schema()).c_str(), stdout);
    return;
  }
  if (!args.vae.empty() || !args.text_encoder.empty()) {
    require_one_process(mpi, "info --vae/--text-encoder");
    std::fputs(encoders_text(args).c_str(), stdout);
    return;
  }
  config::Deck deck = args.deck.load(mpi.world());
  parallel::Mesh mesh(mpi.world(), static_cast<int>(deck.get_int("parallel.sp_size")));
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
     << "  NCCL          " << parallel::nccl_version() << "\n"
     << "  MPI           " << parallel::mpi_library_version() << "\n"
     << "  HDF5          " << io::hdf5_library_version() << "\n"
     << "  FFmpeg        " << io::ffmpeg_version() << "\n"
     << "  models        " << model_names() << " (model.type)\n"
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
  cmd->add_option("--vae", args->vae, "Check a VAE folder (diffusers AutoencoderKL) and say what it holds");
  cmd->add_option("--text-encoder", args->text_encoder, "Check a T5 folder (transformers, with spiece.model) and say "
                                                        "what it holds");
  cmd->add_flag("--tensors", args->tensors, "With --vae / --text-encoder: list every tensor (name and shape)");
  cmd->callback([args, &mpi] { run_info(*args, mpi); });
}

}  // namespace opendit::cli
