// `opendit check FILE...`: verifies the files opendit writes, one line per object checked and a verdict per file.
//   opendit.latents (HDF5)    every dataset against its crc32, then the structure (format, version, count, shapes)
//   opendit.checkpoint (HDF5) the meta, then every dataset against its crc32 (checkpoints always carried them)
//   safetensors               the header (offsets inside the file, no overlaps), finite values, and the model that
//                             the metadata records (every name and shape); safetensors holds no checksums
// Exit status 0 when every file is intact (datasets written before checksums count as unverified, not damaged),
// 1 when one is damaged, or missing or not a file opendit knows (NOT CHECKED). docs/FORMATS.md describes checksums.
#include <sys/stat.h>

#include <cstdio>
#include <map>

#include "cli/app.hpp"
#include "core/error.hpp"
#include "core/progress.hpp"
#include "core/strings.hpp"
#include "io/atomic_file.hpp"
#include "io/checkpoint.hpp"
#include "io/files.hpp"
#include "io/latent_dataset.hpp"
#include "io/safetensors.hpp"
#include "io/weights.hpp"
#include "models/registry.hpp"

namespace opendit::cli {

namespace {

struct CheckArgs {
  std::vector<std::string> files;
  bool quiet = false;
};

// The lines of one file and its verdict.
class Report {
 public:
  Report(std::string file, bool quiet) : file_(std::move(file)), quiet_(quiet) {}

  // status: "ok", "DAMAGED" or "unverified"; object: "/latents" (inside the file) or "" (the file itself).
  void line(const std::string& status, const std::string& object, const std::string& text) {
    ++objects_;
    if (status == "DAMAGED") damaged_.push_back(object.empty() ? "the file" : object);
    if (status == "ERROR") error_ = text;
    if (status == "unverified") ++unverified_;
    if (quiet_ && status == "ok") return;
    std::printf("%-10s %s%s  %s\n", status.c_str(), file_.c_str(), object.empty() ? "" : (":" + object).c_str(),
                text.c_str());
  }
  void note(const std::string& text) {
    if (!quiet_) std::printf("%-10s %s  %s\n", "note", file_.c_str(), text.c_str());
  }
  void dataset(const io::DatasetCheck& c, bool required) {
    if (!c.verified())
      line(required ? "DAMAGED" : "unverified", c.path,
           cat(c.what, "  no crc32 attribute", required ? " (every checkpoint dataset has one)"
                                                         : " (written before opendit stored checksums)"));
    else if (!c.intact())
      line("DAMAGED", c.path, cat(c.what, "  ", c.mismatch()));
    else
      line("ok", c.path, cat(c.what, "  crc32 ", c.found));
  }
  // Not checked at all: missing, not a regular file, not a file opendit knows.
  void error(const std::string& text) { line("ERROR", "", text); }
  bool intact() const { return damaged_.empty() && error_.empty(); }
  void verdict() const {
    if (!error_.empty()) {
      std::printf("%s: NOT CHECKED\n", file_.c_str());
    } else if (!damaged_.empty()) {
      std::printf("%s: DAMAGED (%zu of %d objects: %s)\n", file_.c_str(), damaged_.size(), objects_,
                  join(damaged_, ", ").c_str());
    } else if (unverified_ > 0) {
      std::printf("%s: no damage found; %d of %d objects unverified (no checksums)\n", file_.c_str(),
                  unverified_, objects_);
    } else {
      std::printf("%s: intact (%d objects checked)\n", file_.c_str(), objects_);
    }
  }

 private:
  std::string file_;
  bool quiet_;
  int objects_ = 0, unverified_ = 0;
  std::vector<std::string> damaged_;
  std::string error_;
};

std::int64_t file_size(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) throw Error(cat("cannot read it (", io::errno_text(), ")"));
  if (!S_ISREG(st.st_mode)) throw Error("not a regular file");
  return st.st_size;
}

// A progress line (MiB read) for files of 256 MiB and more.
struct ByteProgress {
  Progress bar;
  std::int64_t done = 0;
  ByteProgress(const std::string& file, std::int64_t bytes)
      : bar("check " + file + " (MiB)", (bytes >> 20) + 1, bytes >= (std::int64_t(256) << 20)) {}
  std::function<void(std::int64_t)> callback() {
    return [this](std::int64_t n) { bar.update((done += n) >> 20); };
  }
};

void check_latents(const std::string& path, Report& r, ByteProgress& progress) {
  bool crcs_ok = true;
  {
    const io::H5File file = io::H5File::open(path);
    const io::H5Group root = file.root();
    // Version 1 has datasets at the root; version 2 one level of groups (bucket_K, samples, text, failures).
    for (const auto& name : io::dataset_paths(root)) {
      const io::DatasetCheck c = io::check_dataset(root.open_dataset(name, 0), progress.callback());
      r.dataset(c, false);
      crcs_ok = crcs_ok && c.intact();
    }
  }
  if (!crcs_ok) return;  // damaged data trips the structure checks too; the lines above say where
  try {
    const io::LatentDataset ds(path);
    std::vector<std::string> shapes;
    for (const auto& b : ds.buckets()) shapes.push_back(shape_str(b.shape));
    r.line("ok", "", cat(io::kLatentsFormat, " version ", ds.version(), ": ", ds.size(), " samples",
                         shapes.empty() ? "" : " of " + join(shapes, " | "), ", ", ds.space(), ", ", ds.num_classes(), " classes",
                         ds.has_text() ? ", captions" : "", ds.has_posterior() ? ", posterior" : "",
                         " (format, count, shapes, labels in range)"));
  } catch (const Error& e) {
    r.line("DAMAGED", "", e.what());
  }
}

void check_checkpoint(const std::string& path, Report& r, ByteProgress& progress) {
  const io::CheckpointMeta meta =
      io::check_checkpoint(path, [&](const io::DatasetCheck& c) { r.dataset(c, true); }, progress.callback());
  r.line("ok", "", cat(io::kCheckpointFormat, " version ", io::kCheckpointVersion, ": step ", meta.step,
                       ", written by ", meta.world_size, " ranks (", meta.strategy, ") at ", meta.created_at));
  if (!io::path_exists(io::done_marker(path)))
    r.note(cat("no completion marker ", io::done_marker(path), ": --resume auto does not pick this checkpoint"));
}

void check_safetensors(const std::string& path, Report& r, ByteProgress& progress) {
  const io::SafetensorsHeader h = io::read_safetensors_header(path);
  r.line("ok", "", cat("safetensors header: ", h.tensors.size(), " tensors, offsets inside the ", h.data_bytes,
                       "-byte data buffer, no overlaps (safetensors holds no checksums)"));
  const io::SafetensorsFile f = io::load_safetensors(path);
  for (const io::SafetensorsEntry& e : h.tensors) {
    const at::Tensor& t = f.tensors.at(e.name);
    progress.callback()(std::int64_t(e.end - e.begin));
    const std::string what = cat(io::dtype_name(e.dtype), " ", shape_str(e.shape));
    if (!t.is_floating_point()) {
      r.line("ok", e.name, what);
      continue;
    }
    const std::int64_t bad = t.numel() - at::isfinite(t).sum().item<std::int64_t>();
    if (bad > 0)
      r.line("DAMAGED", e.name, cat(what, "  ", bad, " of ", t.numel(), " values are NaN or Inf"));
    else
      r.line("ok", e.name, what + "  finite");
  }
  const std::string recorded = io::recorded_model(f.metadata);
  if (recorded.empty()) {
    const auto format = f.metadata.find("format");
    if (format != f.metadata.end() && format->second.rfind("opendit.", 0) == 0)
      r.note(cat(format->second, " weights without a recorded config (as tools/convert_*_pt.py writes them): names "
                 "and shapes not checked; `opendit convert` with the model's deck checks them and records it"));
    else
      r.note("the metadata records no model (not opendit's weights): names and shapes not checked against one");
    return;
  }
  try {
    const std::unique_ptr<models::Model> model = models::model_from_config_json(recorded, std::nullopt);
    const std::string why = model->mismatch(model->import_weights(f.tensors, path));
    if (why.empty())
      r.line("ok", "", cat("every tensor matches the model its metadata records: ", model->describe()));
    else
      r.line("DAMAGED", "", why);
  } catch (const Error& e) {
    r.line("DAMAGED", "", cat("the model its metadata records: ", e.what()));
  }
}

// Checks one file; returns whether it is intact. Errors once the file is known to be opendit's are damage.
bool check_file(const std::string& path, bool quiet) {
  Report r(path, quiet);
  std::int64_t bytes = 0;
  bool hdf5 = false;
  try {
    bytes = file_size(path);
    hdf5 = io::is_hdf5_file(path);
    if (!hdf5 && !ends_with(path, ".safetensors"))
      throw Error("neither an HDF5 file (opendit.latents, opendit.checkpoint) nor .safetensors");
  } catch (const Error& e) {
    r.error(e.what());
    r.verdict();
    return false;
  }
  ByteProgress progress(path, bytes);
  try {
    if (hdf5) {
      std::string format;
      {
        const io::H5File file = io::H5File::open(path);
        const io::H5Group root = file.root();
        if (root.has_attr("format")) format = root.read_attr_string("format");
      }
      if (format == io::kLatentsFormat)
        check_latents(path, r, progress);
      else if (format == io::kCheckpointFormat)
        check_checkpoint(path, r, progress);
      else
        r.error(cat("an HDF5 file but not one opendit knows: format is ",
                    format.empty() ? "missing" : "\"" + format + "\"", " (expected ", io::kLatentsFormat, " or ",
                    io::kCheckpointFormat, ")"));
    } else {
      check_safetensors(path, r, progress);
    }
  } catch (const Error& e) {
    r.line("DAMAGED", "", e.what());
  }
  progress.bar.finish();
  r.verdict();
  return r.intact();
}

}  // namespace

void add_check(CLI::App& app, MpiRuntime& mpi, int& status) {
  auto a = std::make_shared<CheckArgs>();
  auto* cmd = app.add_subcommand(
      "check", "Verify opendit files: a latent dataset or checkpoint (every dataset's crc32) or safetensors weights "
               "(header, finite values, the recorded model); exit status 0 when intact, 1 when damaged");
  cmd->add_option("files", a->files, "opendit.latents or opendit.checkpoint HDF5 files, .safetensors files")
      ->required();
  cmd->add_flag("-q,--quiet", a->quiet, "Print only what is not ok, and the verdicts");
  cmd->callback([a, &mpi, &status] {
    require_one_process(mpi, "check");
    int damaged = 0;
    for (const auto& f : a->files) damaged += check_file(f, a->quiet) ? 0 : 1;
    std::fflush(stdout);
    if (a->files.size() > 1)
      std::printf("check: %zu files, %s\n", a->files.size(),
                  damaged == 0 ? "all intact" : cat(damaged, " not intact").c_str());
    status = damaged > 0 ? 1 : 0;  // the lines above said what: no error line
  });
}

}  // namespace opendit::cli
