// `opendit encode`: a manifest or an image folder -> one opendit.latents v2 file (mpirun -np N: a GPU per rank).
// The settings are the deck's [encode] keys (docs/CONFIG.md); the paths come from the command line.
#include <cstdio>

#include "cli/app.hpp"
#include "core/error.hpp"
#include "core/stop_request.hpp"
#include "core/strings.hpp"
#include "encode/encoders.hpp"
#include "encode/job.hpp"
#include "parallel/context.hpp"
#include "parallel/mesh.hpp"

namespace opendit::cli {

namespace {

struct EncodeArgs {
  DeckArgs deck;
  encode::EncodeSettings s;
  std::string device;
  bool quiet = false;
};

at::ScalarType stored_dtype(const std::string& name) {
  return name == "float32" ? at::kFloat : name == "bfloat16" ? at::kBFloat16 : at::kHalf;
}

int run_encode(EncodeArgs& a, MpiRuntime& mpi) {
  const parallel::ProcessGroup& world = mpi.world();
  const config::Deck deck = a.deck.load(world);
  encode::EncodeSettings s = a.s;
  world.agree([&] {
    s.prepare.image_size = deck.get_int("encode.image_size");
    s.prepare.num_frames = deck.get_int("encode.num_frames");
    s.prepare.frame_interval = deck.get_int("encode.frame_interval");
    s.batch = deck.get_int("encode.batch");
    s.block = deck.get_int("encode.block");
    s.mean_only = deck.get_string("encode.posterior") == "mean";
    s.dtype = stored_dtype(deck.get_string("encode.dtype"));
    s.vae_dtype = encode::parse_dtype(deck.get_string("encode.vae_dtype"), "encode.vae_dtype");
    s.t5_dtype = encode::parse_dtype(deck.get_string("encode.text_dtype"), "encode.text_dtype");
    s.vae_micro_batch = deck.get_int("encode.vae_micro_batch");
    s.text_length = deck.get_int("encode.text_length");
    s.clean_captions = deck.get_bool("encode.clean_captions");
    s.max_failures = deck.get_int("encode.max_failures");
    s.threads = int(deck.get_int("encode.threads"));
    s.progress = !a.quiet;
  });
  const parallel::Mesh mesh(world, 1);
  const at::Device device =
      parallel::rank_device(a.device.empty() ? deck.get_string("parallel.device") : a.device, mesh);
  if (world.rank() == 0)
    std::printf("encode %s -> %s on %d rank%s (%s)\n", s.input.c_str(), s.output.c_str(), world.size(),
                world.size() == 1 ? "" : "s", device.is_cuda() ? "a GPU each" : "CPU");
  const encode::EncodeReport r = encode::run_encode(s, world, device);
  if (world.rank() == 0 && !r.stopped_by) std::printf("%s", encode::format_report(s, r).c_str());
  std::fflush(stdout);
  return r.stopped_by ? kExitStopped : 0;
}

}  // namespace

void add_encode(CLI::App& app, MpiRuntime& mpi, int& status) {
  auto a = std::make_shared<EncodeArgs>();
  auto* cmd = app.add_subcommand(
      "encode", "Encode images or videos (and captions) into one opendit.latents v2 file for training: VAE "
                "posteriors, T5 embeddings, labels; mpirun -np N shares the work, --resume continues a stopped job");
  a->deck.add_to(*cmd);
  cmd->add_option("input", a->s.input, "A manifest (NAME.csv with a header: path and caption and/or label; or "
                                       "NAME.jsonl) or an ImageNet-style folder (class subfolders -> labels)")
      ->required();
  cmd->add_option("-o,--output", a->s.output, "The output file (NAME.h5)")->required();
  cmd->add_option("--vae", a->s.vae, "The VAE: a diffusers AutoencoderKL folder, or a pipeline folder with vae/; "
                                  "`pixel`: no VAE, the pixels are stored (pixel-space models)")
      ->required();
  cmd->add_option("--text-encoder", a->s.text_encoder, "The T5 encoder for captions: a transformers folder (or a "
                                                       "pipeline folder with text_encoder/ and tokenizer/)");
  cmd->add_flag("--resume", a->s.resume, "Continue a stopped job from its blocks in OUTPUT.parts/ (a finished "
                                         "job: nothing to do)");
  cmd->add_flag("--overwrite", a->s.overwrite, "Replace OUTPUT and any stopped job's blocks");
  cmd->add_option("--device", a->device, "auto, cpu or cuda (default: parallel.device)");
  cmd->add_flag("-q,--quiet", a->quiet, "No progress bar");
  cmd->callback([a, &mpi, &status] { status = run_encode(*a, mpi); });
}

}  // namespace opendit::cli
