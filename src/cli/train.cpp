// `opendit train`: see train/trainer.hpp. Before the trainer starts, the dataset is verified against its checksums
// (data.verify), every rank reading a share of it.
#include <chrono>
#include <cstdio>

#include "cli/app.hpp"
#include "core/error.hpp"
#include "core/progress.hpp"
#include "core/strings.hpp"
#include "io/checksum.hpp"
#include "io/latent_dataset.hpp"
#include "models/registry.hpp"
#include "parallel/mesh.hpp"
#include "train/settings.hpp"
#include "train/trainer.hpp"

namespace opendit::cli {

namespace {
struct TrainArgs {
  DeckArgs deck;
  train::TrainOptions options;
};

// Collective, when data.verify. Every dataset of data.path against its crc32, the rows shared out over all ranks: a
// damaged file stops the run before any step with one error naming the dataset; a file written before checksums
// gets a one-line note. The deck's own errors come first (the trainer checks them again): they take no time.
void verify_data(const config::Deck& deck, const parallel::Mesh& mesh) {
  if (!deck.get_bool("data.verify")) return;
  const parallel::ProcessGroup& world = mesh.world();
  world.agree([&] {
    train::train_settings_from(deck, mesh.dp_size());
    models::make_model(deck, std::nullopt);
  });
  const std::string path = deck.get_string("data.path");
  std::vector<std::string> names;
  std::int64_t bytes = 0;
  world.agree([&] {
    const io::LatentDataset ds(path);  // the format, and /labels' crc32, checked on open
    names = ds.dataset_names();
    bytes = ds.size() * ds.bytes_per_sample();
  });
  const auto t0 = std::chrono::steady_clock::now();
  // Rank 0 shows its share's progress when it is large (about bytes / ranks).
  const std::int64_t share = bytes / world.size(), mib = std::int64_t(1) << 20;
  Progress progress("verifying " + path + " (MiB of rank 0's share)", share / mib + 1,
                    world.rank() == 0 && share >= 256 * mib);
  std::int64_t mine = 0;
  const auto checks =
      io::verify_datasets(path, names, world, [&](std::int64_t n) { progress.update((mine += n) / mib); });
  progress.finish();
  std::vector<std::string> verified, unverified;
  for (const io::DatasetCheck& c : checks) {
    if (!c.intact())
      throw CollectiveError(cat("HDF5 file '", path, "', object '", c.path, "': ", c.mismatch(),
                                "; `opendit check ", path, "` lists every dataset, data.verify = false skips this"));
    (c.verified() ? verified : unverified).push_back(c.path);
  }
  if (world.rank() != 0) return;
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (!verified.empty())
    std::printf("data: %s verified against crc32 (%.1f MiB in %.1f s on %d ranks)\n", join(verified, ", ").c_str(),
                double(bytes) / (1 << 20), s, world.size());
  if (!unverified.empty())
    std::printf("note: %s: %s %s no checksums (written before opendit stored them): not verified\n", path.c_str(),
                join(unverified, ", ").c_str(), unverified.size() > 1 ? "have" : "has");
  std::fflush(stdout);
}
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
    verify_data(deck, mesh);
    status = train::train(deck, mesh, a->options);  // 0, or kExitStopped after a signal (every rank alike)
  });
}

}  // namespace opendit::cli
