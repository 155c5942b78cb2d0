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

void add_train(CLI::App& app, MpiRuntime& mpi) {
  auto a = std::make_shared<TrainArgs>();
  auto* cmd =
      app.add_subcommand("train", "Train a model on an opendit.latents dataset (mpirun -np N for data parallelism)");
  a->deck.add_to(*cmd);
  cmd->add_flag("--dry-run", a->options.dry_run, "Validate the deck, the data and the mesh, print the plan, stop");
  cmd->add_flag("--no-save", a->options.no_save,
                "Write no checkpoints and no final weights (benchmarks, quick experiments: nothing is kept!)");
  cmd->add_option("--resume", a->options.resume,
                  "auto (the newest complete checkpoint of the run, or a fresh start) or a checkpoint file; any "
                  "number of ranks may resume it");
  cmd->callback([a, &mpi] {
    const config::Deck deck = a->deck.load(mpi.world());
    const parallel::Mesh mesh(mpi.world(), static_cast<int>(deck.get_int("parallel.sp_size")));
    const int rc = train::train(deck, mesh, a->options);
    if (rc != 0) throw CollectiveError(cat("train ended with status ", rc));
  });
}

}  // namespace opendit::cli
