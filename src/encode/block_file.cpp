// Block files of `opendit encode` (see block_file.hpp). Layout, one HDF5 file per block:
//   attrs index, first, count, groups, truncated
//   g<k>/inputs [n] int64, g<k>/mean [n, ...], g<k>/logvar [n, ...] (absent: mean only); attr shape "4x32x32"
//   text/inputs [m], text/lengths [m], text/tokens [sum, D]       (with a text encoder)
//   failed/inputs [f], failed/reason_offset [f + 1], failed/reason_bytes [...] uint8
#include "encode/block_file.hpp"

#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>

#include "core/error.hpp"
#include "core/strings.hpp"
#include "io/atomic_file.hpp"
#include "io/h5.hpp"

namespace opendit::encode {
namespace {

at::Tensor as_tensor(const std::vector<int64_t>& v) { return at::tensor(v, at::kLong).reshape({int64_t(v.size())}); }

std::vector<int64_t> as_vector(const at::Tensor& t) {
  const at::Tensor c = t.to(at::kLong).contiguous();
  const auto* p = c.data_ptr<int64_t>();
  return {p, p + c.numel()};
}

void write_whole(io::H5Group& g, const std::string& name, const at::Tensor& t) {
  const at::Tensor c = t.contiguous();
  g.create_dataset(name, c.scalar_type(), c.sizes().vec()).write(c);
}

std::string shape_text(const std::vector<int64_t>& shape) {
  std::vector<std::string> parts;
  for (int64_t d : shape) parts.push_back(std::to_string(d));
  return join(parts, "x");
}

std::vector<int64_t> parse_shape(const std::string& text) {
  std::vector<int64_t> out;
  for (const std::string& p : split(text, 'x')) out.push_back(std::stoll(p));
  return out;
}

}  // namespace

void kill_point_test_hook(const char* where, int64_t n) {
  static const char* spec = std::getenv("OPENDIT_TEST_KILL_AT");
  if (!spec) return;
  const std::string at = cat(where, ":", n), given = spec;
  const bool usr1 = given == at + ":USR1";
  if (given != at && !usr1) return;
  int rank = 0;
  for (const char* var : {"OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK", "SLURM_PROCID"})
    if (const char* r = std::getenv(var)) {
      rank = std::atoi(r);
      break;
    }
  if (rank == 0) ::kill(::getpid(), usr1 ? SIGUSR1 : SIGKILL);
}

int64_t EncodedBlock::successes() const {
  int64_t n = 0;
  for (const auto& g : groups) n += int64_t(g.inputs.size());
  return n;
}

std::string block_path(const std::string& parts_dir, int64_t index) {
  char name[32];
  std::snprintf(name, sizeof name, "block-%06lld.h5", static_cast<long long>(index));
  return parts_dir + "/" + name;
}

void write_block(const std::string& path, const EncodedBlock& b) {
  io::AtomicFile out(path);
  {
    io::H5File file = io::H5File::create(out.tmp_path());
    io::H5Group root = file.root();
    root.write_attr("index", b.index);
    root.write_attr("first", b.first);
    root.write_attr("count", b.count);
    root.write_attr("groups", int64_t(b.groups.size()));
    root.write_attr("truncated", b.truncated);
    for (std::size_t k = 0; k < b.groups.size(); ++k) {
      const EncodedGroup& g = b.groups[k];
      io::H5Group grp = root.create_group(cat("g", k));
      grp.write_attr("shape", shape_text(g.shape));
      write_whole(grp, "inputs", as_tensor(g.inputs));
      write_whole(grp, "mean", g.mean);
      if (g.logvar.defined()) write_whole(grp, "logvar", g.logvar);
    }
    if (b.text_tokens.defined()) {
      io::H5Group text = root.create_group("text");
      write_whole(text, "inputs", as_tensor(b.text_inputs));
      write_whole(text, "lengths", as_tensor(b.text_lengths));
      write_whole(text, "tokens", b.text_tokens);
    }
    io::H5Group failed = root.create_group("failed");
    write_whole(failed, "inputs", as_tensor(b.failed));
    const auto [offsets, bytes] = io::pack_strings(b.reasons);
    write_whole(failed, "reason_offset", offsets);
    write_whole(failed, "reason_bytes", bytes);
    file.close();
  }
  out.commit();
}

EncodedBlock read_block(const std::string& path, bool with_data) {
  std::lock_guard<std::recursive_mutex> lock(io::h5_mutex());
  const io::H5File file = io::H5File::open(path);
  const io::H5Group root = file.root();
  EncodedBlock b;
  b.index = root.read_attr_int64("index");
  b.first = root.read_attr_int64("first");
  b.count = root.read_attr_int64("count");
  b.truncated = root.read_attr_int64("truncated");
  const int64_t groups = root.read_attr_int64("groups");
  for (int64_t k = 0; k < groups; ++k) {
    const io::H5Group grp = root.open_group(cat("g", k));
    EncodedGroup g;
    g.shape = parse_shape(grp.read_attr_string("shape"));
    g.inputs = as_vector(grp.open_dataset("inputs").read());
    if (with_data) {
      g.mean = grp.open_dataset("mean").read();
      if (grp.has("logvar")) g.logvar = grp.open_dataset("logvar").read();
    }
    b.groups.push_back(std::move(g));
  }
  if (root.has("text")) {
    const io::H5Group text = root.open_group("text");
    b.text_inputs = as_vector(text.open_dataset("inputs").read());
    b.text_lengths = as_vector(text.open_dataset("lengths").read());
    if (with_data) b.text_tokens = text.open_dataset("tokens").read();
  }
  const io::H5Group failed = root.open_group("failed");
  b.failed = as_vector(failed.open_dataset("inputs").read());
  b.reasons = io::unpack_strings(failed.open_dataset("reason_offset").read(),
                                 failed.open_dataset("reason_bytes").read(), path + ":/failed/reason");
  if (b.reasons.size() != b.failed.size()) root.fail("failed/inputs and failed/reason_offset disagree");
  return b;
}

}  // namespace opendit::encode
