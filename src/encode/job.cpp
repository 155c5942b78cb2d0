// `opendit encode`'s job: setup and resume state, rounds of blocks, assembly (see job.hpp).
#include "encode/job.hpp"

#include <c10/core/InferenceMode.h>
#include <sched.h>
#include <signal.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <map>
#include <thread>

#include "core/error.hpp"
#include "core/out_of_memory.hpp"
#include "core/progress.hpp"
#include "core/stop_request.hpp"
#include "core/strings.hpp"
#include "encode/block_file.hpp"
#include "encode/encoders.hpp"
#include "encode/worker.hpp"
#include "io/atomic_file.hpp"
#include "io/checksum.hpp"
#include "io/files.hpp"
#include "io/h5.hpp"
#include "io/video_read.hpp"
#include "models/vae/pipeline.hpp"

namespace opendit::encode {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;



// What a resumed job must share with the one that wrote the blocks, one "key = value" per line.
std::string job_identity(const EncodeSettings& s, const InputList& in, const std::string& vae_config,
                         const std::string& t5_config) {
  io::Crc32 list;
  for (const InputItem& it : in.items) {
    const std::string row = cat(it.path, '\t', it.caption, '\t', it.label, '\n');
    list.add(row.data(), row.size());
  }
  auto crc = [](const std::string& text) {
    io::Crc32 c;
    c.add(text.data(), text.size());
    return c.value();
  };
  return cat("inputs = ", in.items.size(), " (", in.origin, ")\n", "input list crc32 = ", list.value(), "\n",
             "image_size = ", s.prepare.image_size, "\n", "num_frames = ", s.prepare.num_frames, "\n",
             "frame_interval = ", s.prepare.frame_interval, "\n", "block = ", s.block, "\n", "batch = ", s.batch, "\n",
             "dtype = ", io::dtype_name(s.dtype), "\n", "posterior = ", s.mean_only ? "mean" : "mean_logvar", "\n",
             "vae = ", s.vae, " (config crc32 ", crc(vae_config), ")\n", "vae dtype = ", io::dtype_name(s.vae_dtype),
             "\n", "text encoder = ", s.text_encoder, " (config crc32 ", crc(t5_config), ")\n",
             "text dtype = ", io::dtype_name(s.t5_dtype), "\n", "text_length = ", s.text_length, "\n",
             "clean_captions = ", s.clean_captions, "\n");
}

// The first line where two identities differ, for the resume error.
std::string first_difference(const std::string& a, const std::string& b) {
  const auto la = split(a, '\n'), lb = split(b, '\n');
  for (std::size_t i = 0; i < std::max(la.size(), lb.size()); ++i) {
    const std::string x = i < la.size() ? la[i] : "", y = i < lb.size() ? lb[i] : "";
    if (x != y) return cat("the stopped job had '", x, "', this one has '", y, "'");
  }
  return "";
}

// Decoding threads by default: a rank bound to its own cores (srun --cpu-bind, a cgroup) uses them; a rank that sees
// the whole machine shares it with the node's other ranks. One core is left for the thread that feeds the encoders.
int default_threads(const parallel::ProcessGroup& world) {
  const int machine = std::max(1, int(std::thread::hardware_concurrency()));
  int mine = machine;
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof set, &set) == 0) mine = std::max(1, CPU_COUNT(&set));
  const int local = world.node_local().size();  // collective over the world: every rank calls it here
  const int share = mine < machine ? mine : machine / std::max(1, local);
  return std::max(1, share - 1);
}

void check_settings(const EncodeSettings& s) {
  if (s.input.empty()) throw Error("encode: no input: give a manifest (.csv, .jsonl) or an image folder");
  if (s.output.empty()) throw Error("encode: no output file (--output)");
  if (s.vae.empty()) throw Error("encode: no VAE (--vae DIR, or --vae pixel to store the pixels themselves)");
  if (s.batch < 1 || s.block < 1 || s.vae_micro_batch < 1)
    throw Error(cat("encode: batch, block and vae_micro_batch must be >= 1, found ", s.batch, ", ", s.block, ", ",
                    s.vae_micro_batch));
  if (s.resume && s.overwrite) throw Error("encode: --resume and --overwrite exclude each other");
  if (s.dtype != at::kFloat && s.dtype != at::kHalf && s.dtype != at::kBFloat16)
    throw Error("encode: the stored dtype must be float32, float16 or bfloat16");
}

InputList read_inputs(const EncodeSettings& s) {
  std::error_code ec;
  if (!fs::exists(s.input, ec)) throw Error(cat("encode: input ", s.input, " does not exist"));
  InputList in = fs::is_directory(s.input, ec) ? scan_image_folder(s.input) : read_manifest(s.input);
  if (in.items.empty()) throw Error(cat("encode: ", s.input, " lists no inputs"));
  if (in.has_captions && s.text_encoder.empty())
    throw Error(cat("encode: ", s.input, " has captions: give the T5 encoder that embeds them (--text-encoder DIR)"));
  if (!in.has_captions && !s.text_encoder.empty())
    throw Error(cat("encode: --text-encoder given but ", s.input, " has no captions"));
  if (!io::video_supported())
    for (const InputItem& it : in.items)
      if (media_kind(it.path) == MediaKind::Video)
        throw Error(cat("encode: ", it.path, " is a video, but this build has no FFmpeg (video input is off; see "
                        "`opendit info`)"));
  return in;
}

}  // namespace

EncodeReport run_encode(const EncodeSettings& s, const parallel::ProcessGroup& world, at::Device device) {
  const auto start = Clock::now();
  c10::InferenceMode inference;
  const bool root = world.rank() == 0;
  InputList in;
  world.agree([&] {
    check_settings(s);
    in = read_inputs(s);
  });
  const std::string parts = s.output + ".parts", job_file = parts + "/job.txt";
  // A finished job (a requeued one, say) needs no encoders: decided before loading them.
  int64_t finished = 0;
  world.agree([&] {
    if (!root || s.overwrite || io::path_exists(parts) || !io::path_exists(s.output)) return;
    if (!s.resume) throw Error(cat("encode: ", s.output, " exists: --overwrite replaces it"));
    finished = 1;
  });
  if (world.broadcast(std::vector<int64_t>{finished}, 0)[0] == 1) {
    EncodeReport done;
    done.nothing_to_do = true;
    return done;
  }
  LoadedVae vae;
  std::optional<LoadedT5> t5;
  std::string vae_config, t5_config;
  world.agree([&] {  // the encoders, on every rank's own device: wrong weights are everyone's error
    if (s.vae == kPixelSpace) {  // the pixels are the "latents": nothing to load
      vae_config = kPixelSpace;
    } else {
      vae = load_vae(s.vae, at::TensorOptions().device(device).dtype(s.vae_dtype));
      vae_config = vae.config_json;
    }
    if (!s.text_encoder.empty()) {
      t5.emplace(load_t5(s.text_encoder, at::TensorOptions().device(device).dtype(s.t5_dtype)));
      t5_config = t5->config_json;
    }
  });
  const std::string identity = job_identity(s, in, vae_config, t5_config);

  EncodeReport rep;
  rep.inputs = int64_t(in.items.size());
  rep.blocks = (rep.inputs + s.block - 1) / s.block;
  // Rank 0 decides what state the output is in; everyone learns it.
  int64_t state = 0;  // 0: encode, 1: nothing to do
  world.agree([&] {
    if (!root) return;
    const bool have_out = io::path_exists(s.output), have_parts = io::path_exists(parts);
    if (s.overwrite) {
      std::error_code ec;
      fs::remove_all(parts, ec);
      fs::remove(io::AtomicFile::tmp_path_for(s.output, ".partial"), ec);
    } else if (have_parts && !s.resume) {
      throw Error(cat("encode: ", parts, " holds a stopped encode of ", s.output,
                      ": --resume continues it, --overwrite starts again"));
    } else if (have_out && !have_parts) {
      if (!s.resume) throw Error(cat("encode: ", s.output, " exists: --overwrite replaces it"));
      state = 1;
      return;
    }
    io::check_can_write(s.output, "encode: output");
    if (!io::path_exists(parts)) {
      io::make_dirs(parts, "encode: the block folder");
      io::write_text_file(job_file, identity);
    } else if (!io::path_exists(job_file)) {  // killed before it was written, or a half-removed folder
      bool blocks = false;
      for (const auto& [name, path] : io::list_dir(parts)) blocks = blocks || name.rfind("block-", 0) == 0;
      if (blocks)
        throw Error(cat("encode: ", parts, " holds blocks but no job.txt (the job's identity): it cannot be resumed "
                        "safely; --overwrite starts again"));
      io::write_text_file(job_file, identity);
    } else {
      const std::string had = io::read_text_file(job_file);
      if (had != identity)
        throw Error(cat("encode: --resume of ", s.output, " with other inputs or settings: ",
                        first_difference(had, identity), " (", job_file, "); --overwrite starts again"));
    }
  });
  state = world.broadcast(std::vector<int64_t>{state}, 0)[0];
  if (state == 1) {
    rep.nothing_to_do = true;
    return rep;
  }

  // The blocks done before (a resumed job), their failures counted against the limit.
  std::vector<int64_t> done(rep.blocks, 0);
  int64_t failures = 0, before = 0;
  world.agree([&] {
    if (!root) return;
    for (int64_t b = 0; b < rep.blocks; ++b) {
      if (!io::path_exists(block_path(parts, b))) continue;
      const EncodedBlock blk = read_block(block_path(parts, b), false);
      done[b] = 1, failures += int64_t(blk.failed.size()), before += blk.count;
    }
  });
  done = world.broadcast(done, 0);
  failures = world.broadcast(std::vector<int64_t>{failures}, 0)[0];
  std::vector<int64_t> todo;
  for (int64_t b = 0; b < rep.blocks; ++b)
    if (!done[b]) todo.push_back(b);
  rep.blocks_resumed = rep.blocks - int64_t(todo.size());
  auto check_failures = [&] {
    if (s.max_failures >= 0 && failures > s.max_failures)
      throw CollectiveError(cat("encode: ", failures, " inputs failed, more than encode.max_failures = ",
                                s.max_failures, " (the warnings and the blocks' lists name them). The blocks done are "
                                "kept in ", parts, ": raise the limit and continue with --resume, or fix the inputs "
                                "and start again with --overwrite (a block keeps its failures)"));
  };
  check_failures();  // a resumed job already over the limit encodes nothing more
  if (root && rep.blocks_resumed > 0)
    std::printf("resuming: %lld of %lld blocks done before (%s)\n", (long long)rep.blocks_resumed,
                (long long)rep.blocks, parts.c_str());

  // This rank's blocks (todo[rank], todo[rank + size], ...) and the inputs to decode ahead, in order.
  std::vector<int64_t> mine, items;
  for (std::size_t j = world.rank(); j < todo.size(); j += world.size()) mine.push_back(todo[j]);
  for (int64_t b : mine)
    for (int64_t i = b * s.block; i < std::min<int64_t>((b + 1) * s.block, rep.inputs); ++i) items.push_back(i);
  const int auto_threads = default_threads(world);
  const int threads = s.threads > 0 ? int(s.threads) : auto_threads;
  Worker w(s, in, device, std::move(vae), std::move(t5), items, threads);

  StopHandlers stop(root);
  int64_t blocks_written = 0;
  const int64_t rounds = (int64_t(todo.size()) + world.size() - 1) / world.size();
  int64_t total_done = before;
  Progress progress("encode", rep.inputs, root && s.progress);
  const auto loop_start = Clock::now();
  if (before > 0) progress.update(before);
  for (int64_t r = 0; r < rounds; ++r) {
    int64_t mine_done = 0, mine_failed = 0;
    const std::size_t j = r;
    if (j < mine.size()) {
      EncodedBlock blk;
      try {
        blk = w.encode(mine[j]);
      } catch (const c10::Error& e) {
        if (!is_out_of_memory(e)) throw;
        // vae_micro_batch is not part of the job's identity: --resume may change it. batch is (it groups the inputs).
        throw Error(cat("encode: out of memory in block ", mine[j], ": ", out_of_memory_summary(e),
                        "\n  - fewer images (video frames) a VAE pass: a smaller encode.vae_micro_batch (now ",
                        s.vae_micro_batch, "; continue with --resume: the blocks written so far are kept in ", parts,
                        ")\n  - fewer inputs an encoder call: a smaller encode.batch (now ", s.batch,
                        "; a new job: --overwrite)"));
      }
      write_block(block_path(parts, mine[j]), blk);
      mine_done = blk.count, mine_failed = int64_t(blk.failed.size());
      kill_point_test_hook("block", ++blocks_written);
    }
    const std::vector<double> sums =
        world.all_reduce(std::vector<double>{double(mine_done), double(mine_failed), double(stop.signal())},
                         parallel::ReduceOp::Sum);
    total_done += int64_t(sums[0]), failures += int64_t(sums[1]), rep.encoded_now += int64_t(sums[0]);
    progress.update(total_done);
    check_failures();
    if (sums[2] != 0 && r + 1 < rounds) {
      rep.stopped_by = stop.signal() ? stop.signal() : 15;
      w.stop();
      if (root)
        std::fprintf(stderr, "\nencode: stopped by a signal after %lld of %lld inputs; the blocks are kept in %s: "
                     "continue with --resume\n", (long long)total_done, (long long)rep.inputs, parts.c_str());
      return rep;
    }
  }
  progress.finish();
  w.stop();
  // A signal in the last round or before: stop before assembling (a large file takes minutes); the blocks are all
  // there, so --resume only assembles.
  if (world.all_reduce(int64_t(stop.signal()), parallel::ReduceOp::Max) != 0) {
    rep.stopped_by = stop.signal() ? stop.signal() : 15;
    if (root)
      std::fprintf(stderr, "\nencode: stopped by a signal before assembling %s; every block is kept in %s: continue "
                   "with --resume\n", s.output.c_str(), parts.c_str());
    return rep;
  }
  rep.loop_seconds = seconds_since(loop_start);
  rep.input_wait_share = w.busy_s > 0 ? w.wait_s / w.busy_s : 0;
  rep.encoder_share = w.busy_s > 0 ? w.encoder_s / w.busy_s : 0;
  rep.gpu_busy_share = w.busy_s > 0 && device.is_cuda() ? w.gpu_s / w.busy_s : -1;

  AssembleSettings as;
  as.output = s.output;
  as.parts_dir = parts;
  as.blocks = rep.blocks;
  as.dtype = s.dtype;
  const bool pixel = s.vae == kPixelSpace;
  as.mean_only = s.mean_only || pixel;  // pixels have no posterior
  as.text_dim = w.t5() ? w.t5()->model->config().d_model : 0;
  as.force_serial = s.force_serial;
  as.root_attrs = [&](io::H5Group& g) {
    if (pixel) {
      g.write_attr("space", "pixel");
      g.write_attr("scale_factor", 1.0);
      g.write_attr("shift_factor", 0.0);
      g.write_attr("vae", kPixelSpace);
    } else {
      const models::vae::VaeConfig& vc = w.vae().model->config();
      g.write_attr("space", "latent");
      g.write_attr("scale_factor", vc.scaling_factor);
      g.write_attr("shift_factor", vc.shift_factor);
      g.write_attr("vae", w.vae().folder);
      g.write_attr("vae_config", vae_config);
      g.write_attr("vae_files", join(w.vae().weight_files, "\n"));
      g.write_attr("vae_dtype", io::dtype_name(s.vae_dtype));
    }
    g.write_attr("source", in.origin);
    if (w.t5()) {
      g.write_attr("text_encoder", w.t5()->folder);
      g.write_attr("text_encoder_config", t5_config);
      g.write_attr("text_encoder_files", join(w.t5()->weight_files, "\n"));
      g.write_attr("text_encoder_dtype", io::dtype_name(s.t5_dtype));
      g.write_attr("text_length", s.text_length);
      g.write_attr("clean_captions", int64_t(s.clean_captions));
    }
    g.write_attr("image_size", s.prepare.image_size);
    g.write_attr("num_frames", s.prepare.num_frames);
    g.write_attr("frame_interval", s.prepare.frame_interval);
    g.write_attr("created_by", cat("opendit encode (", world.size(), " ranks)"));
  };
  rep.result = assemble(in, as, world);
  world.agree([&] {
    if (!root) return;
    std::error_code ec;
    fs::remove_all(parts, ec);
    if (ec) std::fprintf(stderr, "opendit: warning: could not remove %s: %s\n", parts.c_str(), ec.message().c_str());
  });
  rep.seconds = seconds_since(start);
  return rep;
}

std::string format_report(const EncodeSettings& s, const EncodeReport& r) {
  if (r.nothing_to_do) return cat(s.output, " is complete: nothing to resume\n");
  const AssembleResult& a = r.result;
  std::string out = cat("wrote ", s.output, " (", io::format_bytes(double(a.bytes)), "): ", a.samples, " samples in ",
                        a.buckets.size(), a.buckets.size() == 1 ? " bucket" : " buckets", ", ", a.failures,
                        a.failures == 1 ? " failure" : " failures", "\n");
  for (std::size_t k = 0; k < a.buckets.size(); ++k)
    out += cat("  bucket ", k, ": ", a.buckets[k].second, " x ", shape_str(a.buckets[k].first), "\n");
  const std::size_t shown = std::min<std::size_t>(a.failed.size(), 10);
  for (std::size_t i = 0; i < shown; ++i) out += cat("  failed: ", a.failed[i].first, ": ", a.failed[i].second, "\n");
  if (a.failed.size() > shown) out += cat("  ... and ", a.failed.size() - shown, " more (listed in the file)\n");
  if (a.truncated > 0) out += cat("  ", a.truncated, " captions cut to ", s.text_length, " tokens\n");
  const double rate = r.loop_seconds > 0 ? r.encoded_now / r.loop_seconds : 0;
  out += cat("encoded ", r.encoded_now, " inputs in ", format_duration(r.loop_seconds), ": ",
             shortest(std::round(rate * 10) / 10), " inputs/s (the whole job ", format_duration(r.seconds),
             ", with loading and assembly", r.blocks_resumed ? cat("; ", r.blocks_resumed, " blocks resumed") : "",
             ")\nrank 0: ", r.gpu_busy_share >= 0 ? "GPU busy " : "encoders busy ",
             int(std::lround(100 * (r.gpu_busy_share >= 0 ? r.gpu_busy_share : r.encoder_share))),
             "% of its encoding time, waiting for decoded inputs ", int(std::lround(100 * r.input_wait_share)), "%\n");
  return out;
}

}  // namespace opendit::encode
