// The `opendit` command line: one CLI11 app, one file per subcommand; each is argument parsing over the layers
// below (train/, sample/, models/, io/).
#pragma once
#include <CLI/CLI.hpp>
#include <string>
#include <vector>

#include "config/deck.hpp"
#include "parallel/mpi_runtime.hpp"

namespace opendit::cli {

using parallel::MpiRuntime;

// Runs the command line; returns the process exit code. Throws opendit::CollectiveError for errors every rank
// reaches (bad arguments, a bad deck) and opendit::Error for one rank's.
int run(int argc, char** argv, MpiRuntime& mpi);

// A one-process command's device choice (auto | cpu | cuda; `option` names where it came from for the error):
// true for the GPU. "cuda" without a visible GPU is an error.
bool pick_gpu(const std::string& choice, const std::string& option = "--device");

// A single-process subcommand (sample, convert, bench) refuses mpirun: one clear error instead of N copies of the
// same work.
void require_one_process(const MpiRuntime& mpi, const std::string& what);

// --config FILE and repeated --set section.key=value, shared by every subcommand that reads a deck.
struct DeckArgs {
  std::string config_path;
  std::vector<std::string> sets;
  void add_to(CLI::App& cmd);
  // Rank 0 reads the file and broadcasts it, so that every rank parses the same text; a bad deck is then a
  // collective error (one message, every rank exits 1).
  config::Deck load(const parallel::ProcessGroup& world) const;
};

// Subcommands.
void add_info(CLI::App& app, MpiRuntime& mpi);
void add_convert(CLI::App& app, MpiRuntime& mpi);
void add_sample(CLI::App& app, MpiRuntime& mpi);
void add_decode(CLI::App& app, MpiRuntime& mpi);
// status: the exit status (0, or kExitStopped when a signal stopped the job between blocks).
void add_encode(CLI::App& app, MpiRuntime& mpi, int& status);
void add_bench_encoders(CLI::App& bench, MpiRuntime& mpi);  // `bench vae` and `bench t5`, called by add_bench
void add_bench(CLI::App& app, MpiRuntime& mpi);
void add_bench_sample(CLI::App& bench, MpiRuntime& mpi);   // `bench sample`, under add_bench's `bench`
void add_bench_kernels(CLI::App& bench, MpiRuntime& mpi);  // `bench kernels`, called by add_bench
void add_bench_sp(CLI::App& bench, MpiRuntime& mpi);       // `bench sp` (bench_sp.cpp), called by add_bench
// status: the exit status of the run (0, or core/stop_request.hpp's kExitStopped after a signal).
void add_train(CLI::App& app, MpiRuntime& mpi, int& status);
// status: the exit status of the run (1 when a file is damaged; check prints its own report, no error line).
void add_check(CLI::App& app, MpiRuntime& mpi, int& status);

}  // namespace opendit::cli
