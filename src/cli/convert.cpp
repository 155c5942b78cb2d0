// `opendit convert IN OUT`: weights between published layouts (diffusers) and opendit's (official key names), from a
// training checkpoint, or into a step-0 checkpoint to fine-tune from. Any model of the registry; official .pt files
// go through tools/convert_dit_pt.py first (C++ never unpickles).
#include <cstdio>

#include "cli/app.hpp"
#include "core/error.hpp"
#include "io/checkpoint.hpp"
#include "io/weights.hpp"
#include "models/registry.hpp"
#include "train/flat_params.hpp"

namespace opendit::cli {

namespace {

struct ConvertArgs {
  std::string in, out, to = "opendit", group = "ema";
  DeckArgs deck;
};

// Weights -> a step-0 training checkpoint in folder `dir` (model = EMA = the weights, fresh AdamW state), so that
// `opendit train --resume DIR/ckpt-00000000.h5` fine-tunes from them on any number of ranks.
void write_start_checkpoint(const std::string& dir, models::Model& model) {
  std::map<std::string, at::Tensor*> frozen_slots;
  train::FlatParams params(train::FlatParams::trainable(model, &frozen_slots), 1, 0);
  std::map<std::string, at::Tensor> frozen;
  for (const auto& [name, t] : frozen_slots) frozen[name] = *t;
  io::ShardedState st;
  st.range = {0, params.data().numel()};
  st.groups["model"] = params.data();
  st.groups["ema"] = params.data();
  st.groups["optim/exp_avg"] = at::zeros_like(params.data());
  st.groups["optim/exp_avg_sq"] = at::zeros_like(params.data());
  io::CheckpointMeta meta;
  meta.strategy = "ddp";
  meta.deck_json = "{}";
  meta.model_json = model.config_json();
  const std::string path =
      io::save_checkpoint(dir, params.layout(), st, frozen, meta, parallel::ProcessGroup::self(), 0);
  std::printf("wrote %s: step 0, model and EMA = the weights; fine-tune with opendit train --resume %s\n",
              path.c_str(), path.c_str());
}

void run_convert(const ConvertArgs& a, MpiRuntime& mpi) {
  require_one_process(mpi, "convert");
  const bool checkpoint = a.in.size() > 3 && a.in.substr(a.in.size() - 3) == ".h5";
  const bool have_deck = !a.deck.config_path.empty() || !a.deck.sets.empty();
  const config::Deck deck = a.deck.load(mpi.world());
  // The model: the one the weights record (checkpoints always, opendit's safetensors in their metadata), checked
  // against the model keys the deck gives; else the deck's, or the one the weights and a config.json describe.
  models::StateDict sd;
  std::unique_ptr<models::Model> model;
  if (checkpoint) {
    sd = io::read_checkpoint_weights(a.in, a.group);
    model = models::model_from_record(deck, io::read_checkpoint_meta(a.in).model_json, a.in, uint64_t{0});
  } else {
    const io::WeightsFile file = io::read_weights(a.in);
    const std::string recorded = io::recorded_model(file.metadata);
    if (!recorded.empty())
      model = models::model_from_record(deck, recorded, file.path, uint64_t{0});
    else if (have_deck) {
      // A deck that names no type builds the default model: weights of another type are that mistake.
      if (deck.origin("model.type") == "default") {
        const std::string type = models::model_type_of(file.tensors, file.path).name;
        if (type != deck.get_string("model.type"))
          throw Error(cat(a.in, ": these are ", type, " weights but the deck builds a ", deck.get_string("model.type"),
                          " model; add --set model.type=", type, " (or model.type in the deck)"));
      }
      model = models::make_model(deck, uint64_t{0});
    }
    else
      model = models::model_type_of(file.tensors, file.path).from_weights(file.tensors, file.config_json, a.in);
    sd = model->import_weights(file.tensors, file.path);
  }
  model->load_state_dict(sd, a.in);  // checks names, shapes and finiteness
  if (a.to == "checkpoint") {
    write_start_checkpoint(a.out, *model);
    return;
  }
  const std::string layout = a.to;
  io::write_weights(a.out, model->export_weights(model->state_dict(), layout),
                    layout == "opendit" ? model->weight_metadata() : std::map<std::string, std::string>{});
  std::printf("%s -> %s (%s layout)\n  %s\n", a.in.c_str(), a.out.c_str(), a.to.c_str(), model->describe().c_str());
}

}  // namespace

void add_convert(CLI::App& app, MpiRuntime& mpi) {
  auto a = std::make_shared<ConvertArgs>();
  auto* cmd = app.add_subcommand(
      "convert", "Convert model weights: diffusers safetensors (file or model folder) or opendit weights -> opendit "
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
