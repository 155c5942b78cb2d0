// `opendit convert IN OUT`: DiT weights between diffusers' layout and opendit's (official key names).
// Official .pt checkpoints go through tools/convert_dit_pt.py first (C++ never unpickles).
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "cli/app.hpp"
#include "io/checkpoint.hpp"
#include "train/flat_params.hpp"
#include "core/error.hpp"
#include "models/dit.hpp"
#include "models/dit_weights.hpp"

namespace opendit::cli {

namespace {

struct ConvertArgs {
  std::string in, out, to = "opendit", group = "ema";
  DeckArgs deck;
};

// diffusers folders carry config.json beside the weights: the input size and heads that weights cannot tell.
void read_diffusers_config(const std::string& in, models::DiTConfig& c) {
  namespace fs = std::filesystem;
  fs::path dir = fs::is_directory(in) ? fs::path(in) : fs::path(in).parent_path();
  for (fs::path p : {dir / "config.json", dir / "transformer" / "config.json"}) {
    std::ifstream f(p);
    if (!f) continue;
    nlohmann::json j = nlohmann::json::parse(f, nullptr, false);
    if (j.is_discarded() || !j.is_object()) continue;
    if (j.contains("sample_size") && j["sample_size"].is_number_integer()) c.input_size = j["sample_size"];
    if (j.contains("num_attention_heads") && j["num_attention_heads"].is_number_integer())
      c.num_heads = j["num_attention_heads"];
    return;
  }
}

// Weights -> a step-0 training checkpoint in folder `dir` (model = EMA = the weights, fresh AdamW state), so that
// `opendit train --resume DIR/ckpt-00000000.h5` fine-tunes from them on any number of ranks.
void write_start_checkpoint(const std::string& dir, models::DiT& model, const models::DiTConfig& cfg) {
  train::FlatParams::Slots trainable;
  at::Tensor pos_embed;
  for (const auto& slot : model.named_parameters())
    (slot.first == "pos_embed" ? (void)(pos_embed = *slot.second) : trainable.push_back(slot));
  train::FlatParams params(trainable, 1, 0);
  io::ShardedState st;
  st.range = {0, params.data().numel()};
  st.groups["model"] = params.data();
  st.groups["ema"] = params.data();
  st.groups["optim/exp_avg"] = at::zeros_like(params.data());
  st.groups["optim/exp_avg_sq"] = at::zeros_like(params.data());
  io::CheckpointMeta meta;
  meta.strategy = "ddp";
  meta.deck_json = "{}";
  meta.model_json = models::config_to_json(cfg);
  std::string path = io::save_checkpoint(dir, params.layout(), st, {{"pos_embed", pos_embed}}, meta, MPI_COMM_SELF, 0);
  std::printf("wrote %s: step 0, model and EMA = the weights; fine-tune with opendit train --resume %s\n",
              path.c_str(), path.c_str());
}

void run_convert(const ConvertArgs& a, MpiRuntime& mpi) {
  if (mpi.size() > 1) throw Error("convert is a single-process tool: run it without mpirun");
  const bool checkpoint = a.in.size() > 3 && a.in.substr(a.in.size() - 3) == ".h5";
  models::StateDict sd = checkpoint ? io::read_checkpoint_weights(a.in, a.group) : models::load_dit_weights(a.in);
  models::DiTConfig cfg;
  if (!a.deck.config_path.empty() || !a.deck.sets.empty()) {
    cfg = models::dit_config_from(a.deck.load());
  } else if (checkpoint) {
    cfg = models::dit_config_from_json(io::read_checkpoint_meta(a.in).model_json);
  } else {
    cfg = models::infer_dit_config(sd);
    if (!sd.count("pos_embed")) cfg.input_size = 0;  // unknown from the weights alone
    read_diffusers_config(a.in, cfg);
    if (cfg.num_heads == 0 || cfg.input_size == 0)
      throw Error(cat(a.in, ": the weights do not tell the ", cfg.num_heads == 0 ? "number of heads" : "input size",
                      "; pass --config DECK (or --set model.num_heads=H --set model.input_size=S)"));
  }
  models::DiT model(cfg, 0);
  model.load_state_dict(sd, a.in);  // checks names, shapes and finiteness
  if (a.to == "checkpoint") {
    write_start_checkpoint(a.out, model, cfg);
    return;
  }
  auto layout = a.to == "diffusers" ? models::WeightLayout::Diffusers : models::WeightLayout::Official;
  models::save_dit_weights(a.out, model.state_dict(), cfg, layout);
  std::printf("%s -> %s (%s layout)\n  %s\n", a.in.c_str(), a.out.c_str(), a.to.c_str(), cfg.describe().c_str());
}

}  // namespace

void add_convert(CLI::App& app, MpiRuntime& mpi) {
  auto a = std::make_shared<ConvertArgs>();
  auto* cmd = app.add_subcommand(
      "convert", "Convert DiT weights: diffusers safetensors (file or model folder) or opendit weights -> opendit "
                 "weights (official key names) or diffusers safetensors");
  cmd->add_option("input", a->in,
                  "Weights: .safetensors (official or diffusers names), a diffusers folder, or a training "
                  "checkpoint (.h5)")
      ->required();
  cmd->add_option("--group", a->group, "From a checkpoint: the ema or the model (master) weights")
      ->check(CLI::IsMember({"ema", "model"}))
      ->default_str("ema");
  cmd->add_option("output", a->out, "Output .safetensors, or a folder with --to checkpoint")->required();
  cmd->add_option("--to", a->to, "opendit or diffusers weights, or a step-0 training checkpoint to fine-tune from")
      ->check(CLI::IsMember({"opendit", "diffusers", "checkpoint"}))
      ->default_str("opendit");
  a->deck.add_to(*cmd);
  cmd->callback([a, &mpi] { run_convert(*a, mpi); });
}

}  // namespace opendit::cli
