// `opendit train`: see train/trainer.hpp.
#include "cli/app.hpp"
#include "parallel/mesh.hpp"
#include "train/trainer.hpp"

namespace opendit::cli {

namespace {
struct TrainArgs {
  DeckArgs deck;
  train::TrainOptions options;
};
}  // namespace

void add_train(CLI::App& app, MpiRuntime& mpi, int& status) {
  auto a = std::make_shared<TrainArgs>();
  auto* cmd =
      app.add_subcommand("train", "Train a model on an opendit.latents dataset (mpirun -np N for data parallelism)");
  a->deck.add_to(*cmd);
  cmd->add_flag("--dry-run", a->options.dry_run,
                "Validate the deck, the data, the mesh, the run folder, --resume and the free space; print the plan");
  cmd->add_flag("--no-save", a->options.no_save,
                "Write no checkpoints and no final weights (benchmarks, quick experiments: nothing is kept!)");
  cmd->add_option("--resume", a->options.resume,
                  "auto (the newest complete checkpoint of the run, or a fresh start) or a checkpoint file; any "
                  "number of ranks may resume it; later checkpoints of the run move to RUN/abandoned/");
  cmd->add_flag("--overwrite", a->options.overwrite,
                "Start afresh in a run folder that holds a run, deleting its checkpoints, metrics and weights");
  cmd->add_flag("--allow-deck-change", a->options.allow_deck_change,
                "Resume although keys that define the run (model, data, optimizer, seed) changed since the checkpoint");
  cmd->callback([a, &mpi, &status] {
    const config::Deck deck = a->deck.load(mpi.world());
    const parallel::Mesh mesh(mpi.world(), static_cast<int>(deck.get_int("parallel.sp_size")));
    status = train::train(deck, mesh, a->options);  // 0, or kExitStopped after a signal (every rank alike)
  });
}

}  // namespace opendit::cli
