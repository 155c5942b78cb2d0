#include "cli/app.hpp"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/build_info.hpp"
#include "core/devices.hpp"
#include "core/error.hpp"
#include "core/strings.hpp"
#include "models/registry.hpp"

namespace opendit::cli {

void DeckArgs::add_to(CLI::App& cmd) {
  cmd.add_option("--config", config_path, "Input deck (TOML); defaults apply to keys it omits");
  cmd.add_option("--set", sets, "Override one deck key: --set section.key=value (repeatable)")
      ->type_name("KEY=VALUE")
      ->allow_extra_args(false);
}

config::Deck DeckArgs::load(const parallel::ProcessGroup& world) const {
  const config::Schema& schema = models::deck_schema();
  std::string text;
  if (!config_path.empty()) {
    bool readable = false;
    if (world.rank() == 0 && std::filesystem::is_regular_file(config_path)) {  // a folder reads as empty text
      std::ifstream f(config_path, std::ios::binary);
      std::ostringstream ss;
      ss << f.rdbuf();
      readable = bool(f), text = ss.str();
    }
    if (!world.broadcast(std::vector<std::int64_t>{readable ? 1 : 0})[0])
      throw CollectiveError(cat(config_path, ": cannot read the input deck (missing, a folder, or not readable)"));
    text = world.broadcast(text);
  }
  config::Deck deck(schema);
  world.agree([&] {
    if (!config_path.empty()) deck = config::Deck::from_toml(text, config_path, schema);
    for (const auto& s : sets) deck.set(s);
  });
  return deck;
}

namespace {

// `opendit trian` names the word and the closest subcommand (CLI11 alone says "A subcommand is required"). Walks
// argv down the commands that require a subcommand (opendit, opendit bench) while its words name subcommands.
void check_subcommand_words(const CLI::App& app, int argc, char** argv) {
  const CLI::App* cur = &app;
  std::string where = "opendit";
  for (int i = 1; i < argc && cur->get_require_subcommand_min() > 0; ++i) {
    const std::string word = argv[i];
    if (word.empty() || word[0] == '-') return;  // an option: CLI11's own checks follow
    std::vector<std::string> names;
    for (const CLI::App* sub : cur->get_subcommands([](const CLI::App*) { return true; }))
      names.push_back(sub->get_name());
    if (std::find(names.begin(), names.end(), word) != names.end()) {
      cur = cur->get_subcommand(word);
      where += " " + word;
      continue;
    }
    const std::string near = closest_match(word, names);
    const std::string prefix = where == "opendit" ? "" : where.substr(8) + " ";  // "bench "
    const bool close = edit_distance(word, near) <= std::max<std::size_t>(2, word.size() / 3);
    throw CollectiveError(cat("unknown subcommand '", prefix, word, "'",
                              close ? "; did you mean '" + prefix + near + "'?"
                                    : " (subcommands: " + join(names, ", ") + ")",
                              " (see ", where, " --help)"));
  }
}

}  // namespace

int run(int argc, char** argv, MpiRuntime& mpi) {
  CLI::App app{"opendit: train and sample Diffusion Transformers on GPU clusters (MPI + NCCL + HDF5)", "opendit"};
  app.set_version_flag("--version", std::string("opendit ") + OPENDIT_VERSION + " (" + OPENDIT_GIT_COMMIT + ")");
  app.require_subcommand(1);
  add_info(app, mpi);
  add_convert(app, mpi);
  add_sample(app, mpi);
  add_decode(app, mpi);
  int status = 0;  // the exit status of train, encode or check (a stop on a signal, a damaged file)
  add_encode(app, mpi, status);
  add_train(app, mpi, status);
  add_bench(app, mpi);
  add_check(app, mpi, status);
  check_subcommand_words(app, argc, argv);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // Every rank parses the same argv: help and usage errors are printed once, and every rank exits alike.
    if (e.get_exit_code() == 0) {
      if (mpi.rank() == 0) app.exit(e);
      return 0;
    }
    std::ostringstream out, err;
    app.exit(e, out, err);
    std::string msg = err.str();
    while (!msg.empty() && msg.back() == '\n') msg.pop_back();
    throw CollectiveError(msg + " (see opendit --help)");
  }
  return status;
}

bool pick_gpu(const std::string& choice, const std::string& option) {
  const bool have_gpu = gpu_count() > 0;
  if (choice == "cuda" && !have_gpu) throw Error(cat(option, " cuda: no GPU is visible"));
  return choice == "cuda" || (choice == "auto" && have_gpu);
}

void require_one_process(const MpiRuntime& mpi, const std::string& what) {
  if (mpi.size() > 1) throw CollectiveError(cat(what, " runs as one process: run it without mpirun"));
}

}  // namespace opendit::cli
