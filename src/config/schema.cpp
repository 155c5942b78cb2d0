#include "config/schema.hpp"

#include <cmath>
#include <sstream>

#include "core/strings.hpp"

namespace opendit::config {

const Schema& base_schema() {
  static const Schema s = [] {
    Schema s;
    s.sections = {
        {"model", "The network. `type` picks the model (src/models/registry.cpp) and each type reads its own keys; "
                  "`preset` sets depth, width, heads (and DiT's patch), and a non-zero explicit key overrides it. "
                  "`stdit` and `latte` also read the keys marked \"video models\" (latte: num_frames, caption_channels, "
                  "text_length); the latent is in_channels x num_frames x input_size x input_width (latte: square)."},
        {"diffusion", "The Gaussian diffusion process (IDDPM, as in DiT)."},
        {"sample", "Sampling defaults; the `opendit sample` options override them."},
        {"train", "Optimisation: precision, AdamW, schedule, clipping, EMA, accumulation, logging, checkpoints."},
        {"data", "The training dataset (an opendit.latents HDF5 file, docs/FORMATS.md) and batching."},
        {"run", "Where a run writes and how it is seeded."},
        {"encode", "`opendit encode`: inputs -> VAE posteriors and T5 caption embeddings in one opendit.latents v2 "
                   "file (docs/FORMATS.md). The paths come from the command line."},
        {"parallel", "How the MPI ranks are split into groups, and how data parallelism shards the optimizer."},
    };
    const double inf = 1e300;
    // The model types' own keys (model.type, model.preset, ...) come from the model registry (models::deck_schema).
    s.options = {
        {"model.space", Type::Choice, std::string("latent"), "What the model denoises: `latent` (VAE latents; "
         "samples are written as latents) or `pixel` (images in [-1, 1]; samples are written as a PNG grid).",
         -inf, inf, {"latent", "pixel"}},
        {"model.attention", Type::Choice, std::string("auto"), "GPU attention kernel of "
         "scaled_dot_product_attention: `auto` tries cuDNN, then flash, memory-efficient and math, taking the first "
         "that supports the inputs; a named backend is tried first, the others stay as fallbacks. With `auto` or "
         "`cudnn`, self-attention without a mask in bf16/fp16 runs cuDNN's fused attention on the packed q/k/v "
         "projection instead (its backward writes the packed gradient). With `auto`, sequences of up to 64 tokens (STDiT's "
         "and Latte's frames) run opendit's short-sequence attention kernel, which reads STDiT's frames in place.",
         -inf, inf,
         {"auto", "cudnn", "flash", "efficient", "math"}},
        {"diffusion.num_steps", Type::Int, int64_t{1000}, "Diffusion steps T of training.", 1, 100000, {}},
        {"diffusion.schedule", Type::Choice, std::string("linear"), "Noise schedule: `linear` betas (scaled by "
         "1000/T) or `cosine` (IDDPM).", -inf, inf, {"linear", "cosine"}},
        {"sample.steps", Type::String, std::string("250"), "Sampling steps: `250` (DDPM on 250 respaced steps), "
         "`ddim50` (DDIM on 50), or section counts such as `10,20,30`. Text-to-video models take `100` when the deck "
         "does not set it (Open-Sora v1.0's inference).", -inf, inf, {}},
        {"sample.eta", Type::Float, 0.0, "DDIM eta (0 = deterministic).", 0, 1, {}},
        {"sample.cfg_scale", Type::Float, 4.0, "Classifier-free guidance scale (1 = no guidance). Text-to-video models "
         "take 7.0 when the deck does not set it (Open-Sora v1.0's inference).", 0, 1000, {}},
        {"sample.cfg_channels", Type::Choice, std::string("all"), "Channels that guidance applies to: `all` eps "
         "channels, or `first3` (the quirk of the official DiT and Open-Sora v1.0 samplers, for reproducing their "
         "samples).", -inf, inf,
         {"all", "first3"}},
        {"sample.seed", Type::Int, int64_t{0}, "Seed of the initial noise and of DDPM's per-step noise.", 0,
         9.0e18, {}},
        {"sample.precision", Type::Choice, std::string("fp32"), "Network dtype while sampling: `fp32` (as the "
         "official sampler), or `bf16` (GPU speed: bf16 weights and activations; the diffusion arithmetic stays "
         "fp32).", -inf, inf, {"fp32", "bf16"}},
        {"sample.cfg_parallel", Type::Bool, false, "Classifier-free guidance's conditional and unconditional halves "
         "on two ranks (or two sp groups): run `opendit sample` on 2 x parallel.sp_size ranks. The same samples as "
         "one rank's.", -inf, inf, {}},
        {"sample.cuda_graph", Type::Bool, true, "On a GPU, run each step's network call (forward and guidance) as "
         "a captured CUDA graph; `false` runs it eagerly (as `opendit sample --no-graph`).", -inf, inf, {}},
        {"run.name", Type::String, std::string("dit"), "Run name: its files go to out_dir/name.", -inf, inf, {}},
        {"run.out_dir", Type::String, std::string("out"), "Folder that holds run folders.", -inf, inf, {}},
        {"run.seed", Type::Int, int64_t{0}, "Seed of the initial weights, data order, timesteps, noise and label "
         "dropout (all world-size independent).", 0, 9.0e18, {}},
        {"data.path", Type::String, std::string(""), "The dataset file (required by `train`).", -inf, inf, {}},
        {"data.global_batch", Type::Int, int64_t{256}, "Samples per optimizer step over all data-parallel ranks.", 1,
         1 << 24, {}},
        {"data.prefetch", Type::Int, int64_t{4}, "Batches read ahead by a background thread (0 = none).", 0, 64,
         {}},
        {"data.verify", Type::Bool, true, "Before training (and in a dry run), verify every dataset of the file "
         "against its crc32: each rank reads an equal share of the rows once, so the whole file is read once per "
         "start. `false` skips it (`opendit check FILE` verifies a file by hand).", -inf, inf, {}},
        {"encode.image_size", Type::Int, int64_t{256}, "Pixels of the square the inputs are cropped to (DiT's "
         "center_crop_arr for images; the short side, then the centre, for video frames).", 8, 8192, {}},
        {"encode.num_frames", Type::Int, int64_t{16}, "Frames of a video clip (Open-Sora v1.0: 16).", 1, 4096, {}},
        {"encode.frame_interval", Type::Int, int64_t{3}, "Stride between the clip's frames, from the first frame "
         "(Open-Sora v1.0: 3).", 1, 1000, {}},
        {"encode.batch", Type::Int, int64_t{32}, "Inputs per encoder call on each rank.", 1, 1 << 20, {}},
        {"encode.block", Type::Int, int64_t{256}, "Inputs per block file: the unit of resume and of sharing work "
         "between ranks (a killed job loses at most the blocks in flight).", 1, 1 << 24, {}},
        {"encode.posterior", Type::Choice, std::string("mean_logvar"), "What is stored of the VAE posterior: "
         "`mean_logvar` (training draws a fresh latent each step, as DiT's train.py does) or `mean` (half the size; "
         "training uses the mean).", -inf, inf, {"mean_logvar", "mean"}},
        {"encode.dtype", Type::Choice, std::string("float16"), "Stored dtype of latents and caption embeddings.", -inf,
         inf, {"float16", "bfloat16", "float32"}},
        {"encode.vae_dtype", Type::Choice, std::string("fp32"), "VAE precision while encoding.", -inf, inf,
         {"fp32", "bf16"}},
        {"encode.vae_micro_batch", Type::Int, int64_t{32}, "Images (video frames) per VAE pass.", 1, 1 << 20, {}},
        {"encode.text_dtype", Type::Choice, std::string("bf16"), "T5 precision while encoding.", -inf, inf,
         {"bf16", "fp32"}},
        {"encode.text_length", Type::Int, int64_t{120}, "T5 tokens kept per caption (Open-Sora v1.0: 120); longer "
         "captions are cut and counted in the summary.", 1, 1 << 16, {}},
        {"encode.clean_captions", Type::Bool, true, "Open-Sora's caption cleaning before tokenizing.", -inf, inf, {}},
        {"encode.max_failures", Type::Int, int64_t{100}, "Inputs that may fail (unreadable, truncated, wrong "
         "format; skipped and listed in the file) before the job stops; -1: no limit.", -1, 9.0e18, {}},
        {"encode.threads", Type::Int, int64_t{0}, "Decoding threads per rank; 0: the cores bound to the rank (srun "
         "--cpu-bind, a cgroup), or the node's cores shared by its ranks; less one.", 0, 1024, {}},
        {"train.steps", Type::Int, int64_t{1000}, "Optimizer steps of the run.", 1, 1e12, {}},
        {"train.precision", Type::Choice, std::string("bf16"), "`bf16`: bf16 compute, fp32 master weights, "
         "optimizer state, EMA and loss; `fp32`: everything fp32.", -inf, inf, {"bf16", "fp32"}},
        {"train.lr", Type::Float, 1e-4, "Peak learning rate of AdamW.", 0, 10, {}},
        {"train.beta1", Type::Float, 0.9, "AdamW beta1.", 0, 1, {}},
        {"train.beta2", Type::Float, 0.999, "AdamW beta2.", 0, 1, {}},
        {"train.eps", Type::Float, 1e-8, "AdamW epsilon.", 0, 1, {}},
        {"train.weight_decay", Type::Float, 0.0, "Decoupled weight decay (DiT trains with 0).", 0, 10, {}},
        {"train.lr_schedule", Type::Choice, std::string("constant"), "After warmup: `constant`, or `cosine` decay "
         "to min_lr at the last step.", -inf, inf, {"constant", "cosine"}},
        {"train.warmup_steps", Type::Int, int64_t{0}, "Linear warmup steps.", 0, 1e12, {}},
        {"train.min_lr", Type::Float, 0.0, "Final learning rate of the cosine schedule.", 0, 10, {}},
        {"train.grad_clip", Type::Float, 0.0, "Clip the global gradient norm to this (0 = off).", 0, 1e6, {}},
        {"train.accumulation", Type::Int, int64_t{1}, "Micro-batches per optimizer step (gradient accumulation).", 1,
         1 << 16, {}},
        {"train.activation_checkpointing", Type::Bool, false, "Recompute each block's activations in backward "
         "(less memory, one more forward).", -inf, inf, {}},
        {"train.checkpoint_blocks", Type::Int, int64_t{0}, "Recompute the activations of only the first K blocks "
         "in backward (memory traded for time one block at a time; `activation_checkpointing = true` means all).",
         0, 1e6, {}},
        {"train.cuda_graph", Type::Bool, true, "On one GPU (a world of one rank), replay each optimizer step as one "
         "CUDA graph after two eager warm-up steps (the same kernels without the host's launch gaps); the CPU and "
         "runs of more ranks step eagerly.", -inf, inf, {}},
        {"train.run_ahead", Type::Bool, true, "With the step's CUDA graph, queue the next step before reading this "
         "one's loss and gradient norm (not across log steps, checkpoints or the profiled step), so that the GPU "
         "does not wait while the host loads the next batch; the same results either way.", -inf, inf, {}},
        {"train.profile_step", Type::Int, int64_t{0}, "Profile this step (counted from 1) with the torch profiler: a "
         "per-op GPU/CPU time table on stdout and profile.json in the run folder; 0 = off.", 0, 1e12, {}},
        {"train.ema_decay", Type::Float, 0.9999, "EMA decay per optimizer step.", 0, 1, {}},
        {"train.ema_every", Type::Int, int64_t{1}, "Optimizer updates between EMA updates (each applies ema_decay "
         "once).", 1, 1e9, {}},
        {"train.log_every", Type::Int, int64_t{10}, "Steps between log lines and metrics records.", 1, 1e9, {}},
        {"train.checkpoint_every", Type::Int, int64_t{1000}, "Steps between checkpoints (and one at the end).", 1,
         1e12, {}},
        {"train.keep_checkpoints", Type::Int, int64_t{3}, "Complete checkpoints kept; older ones are deleted.", 1,
         1000, {}},
        {"train.async_checkpoint", Type::Bool, true, "Write checkpoints in the background: training stops only to "
         "copy its state to host memory, and the next checkpoint (or the end of the run) waits for the write. Needs "
         "MPI with MPI_THREAD_MULTIPLE (otherwise checkpoints are written in the foreground, with a note).",
         -inf, inf, {}},
        {"train.max_nonfinite_steps", Type::Int, int64_t{5}, "Consecutive steps with a NaN/Inf loss or gradient "
         "that are skipped before the run stops.", 1, 1000000, {}},
        {"parallel.strategy", Type::Choice, std::string("zero2"), "Data parallelism: `ddp` (all-reduce), `zero1` "
         "(optimizer state sharded), `zero2` (gradients and optimizer state sharded). The EMA is sharded like the "
         "optimizer state.", -inf, inf, {"ddp", "zero1", "zero2"}},
        {"parallel.device", Type::Choice, std::string("auto"), "`auto` (a GPU per rank when there are GPUs), `cpu` "
         "or `cuda`.", -inf, inf, {"auto", "cpu", "cuda"}},
        {"parallel.sp_size", Type::Int, int64_t{1},
         "Ranks per sequence-parallel group (contiguous ranks). The data-parallel size is world / sp_size, which "
         "must divide. The ranks of a group work on the same samples, each on 1/sp_size of every sample's tokens "
         "(parallel.sp_mode).",
         1, 1 << 20, {}},
        {"parallel.sp_mode", Type::Choice, std::string("auto"), "Sequence parallelism (sp_size > 1): `ulysses` "
         "(all-to-all q, k, v to head shards), `fastseq` (all-gather of the attention input overlapped with the "
         "local heads' qkv GEMM, all-to-all back), `dsp` (video models: frames or positions sharded, 2 all-to-alls "
         "per block); `auto`: dsp for video models, ulysses for DiT. Frames, tokens and heads need not divide by "
         "sp_size (padded and masked).", -inf, inf, {"auto", "ulysses", "fastseq", "dsp"}},
        {"parallel.fastseq_chunks", Type::Int, int64_t{2}, "fastseq: the all-gather of the attention input in this "
         "many pieces, each overlapped with the previous piece's qkv GEMM.", 1, 64, {}},
        {"parallel.watchdog_s", Type::Float, 900.0,
         "Seconds a training step, a checkpoint save or a collective may take before the watchdog names it and ends "
         "the job (a rank that died or hangs must not hold the others forever); 0 turns it off. Raise it when one "
         "checkpoint takes longer to write.",
         0, 1e9, {}},
    };
    return s;
  }();
  return s;
}

const Option* Schema::find(const std::string& key) const {
  for (const auto& o : options)
    if (o.key == key) return &o;
  return nullptr;
}

bool Schema::has_section(const std::string& name) const {
  for (const auto& s : sections)
    if (s.name == name) return true;
  return false;
}

std::vector<std::string> Schema::keys() const {
  std::vector<std::string> k;
  for (const auto& o : options) k.push_back(o.key);
  return k;
}

static std::string number(double x) {
  if (x == std::floor(x) && std::fabs(x) < 1e15) return std::to_string(static_cast<int64_t>(x));
  return shortest(x);
}

std::string type_name(const Option& opt) {
  auto range = [&](const char* what) {
    std::string s = what;
    bool lo = opt.min > -1e299, hi = opt.max < 1e299;
    if (lo && hi) s += " in [" + number(opt.min) + ", " + number(opt.max) + "]";
    else if (lo) s += " >= " + number(opt.min);
    else if (hi) s += " <= " + number(opt.max);
    return s;
  };
  switch (opt.type) {
    case Type::Bool: return "boolean";
    case Type::Int: return range("integer");
    case Type::Float: return range("number");
    case Type::String: return "string";
    case Type::Choice: return "one of " + join(opt.choices, ", ");
  }
  return "?";
}

std::string value_to_toml(const Value& v) {
  if (auto b = std::get_if<bool>(&v)) return *b ? "true" : "false";
  if (auto i = std::get_if<int64_t>(&v)) return std::to_string(*i);
  if (auto d = std::get_if<double>(&v)) {
    std::string s = shortest(*d);  // 0.1, not 0.10000000000000001
    if (s.find_first_of(".eEn") == std::string::npos) s += ".0";  // keep it a TOML float: 1.0, not 1
    return s;
  }
  std::string out = "\"";
  for (char c : std::get<std::string>(v)) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out + "\"";
}

std::string schema_markdown(const Schema& schema) {
  std::ostringstream md;
  md << "# Input deck reference\n\n"
     << "Generated from the schema in `src/config/schema.cpp` (`opendit info --config-doc > docs/CONFIG.md`);\n"
     << "a test fails when this file and the schema disagree.\n\n"
     << "A deck is a TOML file (`--config FILE`); `--set section.key=value` overrides one key and may be repeated.\n"
     << "Every key is optional and takes the default below. An unknown key, a wrong type or a value out of range is\n"
     << "an error that names the file and line.\n";
  for (const auto& sec : schema.sections) {
    md << "\n## [" << sec.name << "]\n\n" << sec.doc << "\n\n"
       << "| key | type | default | meaning |\n|---|---|---|---|\n";
    for (const auto& o : schema.options) {
      if (o.key.rfind(sec.name + ".", 0) != 0) continue;
      md << "| `" << o.key.substr(sec.name.size() + 1) << "` | " << type_name(o) << " | `"
         << value_to_toml(o.default_value) << "` | " << o.doc << " |\n";
    }
  }
  return md.str();
}

}  // namespace opendit::config
