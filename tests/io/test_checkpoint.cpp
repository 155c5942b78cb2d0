// Checkpoints under mpirun (1-4 ranks): the world writes a checkpoint and every sub-world of 1..W ranks reads it
// back; ddp-style and zero-style shards; the parallel and the serial path; retention and completion markers; every
// kind of bad input gives one error on all ranks (and the good checkpoint stays loadable).
#include <gtest/gtest.h>
#include <mpi.h>

#include <fstream>
#include <memory>

#include "io_test_util.hpp"
#include "core/error.hpp"
#include "io/checkpoint.hpp"
#include "io/h5.hpp"

using namespace opendit;
using namespace opendit::io;
using opendit::test::SharedDir;
using opendit::test::TempDir;
using parallel::ProcessGroup;

namespace {

const ProcessGroup& world() { return opendit::test::world_group(); }
int rank_of() { return world().rank(); }
int size_of() { return world().size(); }


// Odd shapes, a 4-D one; the second layout has another order and alignment (placement differs, names agree).
const std::vector<FlatLayout::Spec> kSpecs = {{"x_embedder.weight", {7, 5}},
                                              {"blocks.0.conv.weight", {3, 4, 5, 2}},
                                              {"blocks.0.bias", {13}},
                                              {"final.linear", {2, 3, 11}},
                                              {"t_embedder.w", {1}}};
FlatLayout layout_a() { return FlatLayout(kSpecs, 16); }
FlatLayout layout_b() { return FlatLayout({kSpecs[3], kSpecs[1], kSpecs[4], kSpecs[0], kSpecs[2]}, 1); }

// The full value of group g of every parameter: a function of the parameter's name, not of its place.
NamedTensors full(int g, std::int64_t step = 1) {
  NamedTensors out;
  for (std::size_t i = 0; i < kSpecs.size(); ++i) {
    std::int64_t n = 1;
    for (auto d : kSpecs[i].shape) n *= d;
    out[kSpecs[i].name] =
        at::arange(n, at::kFloat).mul(0.37 * (g + 1)).sin().add(double(i) * 10 + step * 100).reshape(kSpecs[i].shape);
  }
  return out;
}

ShardedState state(const FlatLayout& layout, FlatRange r, bool ema = true, std::int64_t step = 1) {
  ShardedState s{r, {}};
  for (std::size_t g = 0; g < checkpoint_groups().size(); ++g)
    if (ema || checkpoint_groups()[g] != "ema")
      s.groups[checkpoint_groups()[g]] = flatten_range(layout, r, full(int(g), step));
  return s;
}

std::map<std::string, at::Tensor> frozen() { return {{"pos_embed", at::arange(24, at::kFloat).reshape({1, 6, 4})}}; }

CheckpointMeta meta(std::int64_t step) {
  CheckpointMeta m;
  m.step = step, m.loader_epoch = 3, m.loader_cursor = 17, m.skipped_in_a_row = 1;
  m.world_size = size_of(), m.dp_size = size_of(), m.sp_size = 1;
  m.strategy = "zero2", m.deck_json = R"({"run":{"seed":7}})", m.model_json = R"({"depth":1})";
  m.seed = 0xFEDCBA9876543210ull;
  return m;
}

// Loaded state equals the expected one on the parameters (gaps and padding are zero on load).
void expect_state(const FlatLayout& layout, const ShardedState& got, bool ema = true, std::int64_t step = 1) {
  ShardedState want = state(layout, got.range, ema, step);
  ASSERT_EQ(got.groups.size(), want.groups.size());
  for (const auto& [name, t] : want.groups) {
    ASSERT_TRUE(got.groups.count(name)) << name;
    EXPECT_TRUE(at::equal(got.groups.at(name), t))
        << name << " range [" << got.range.begin << ", " << got.range.end << ")";
  }
}

// Every sub-world of k = 1..W ranks loads `path` in layout b, zero-style shards, and checks the values.
void load_in_every_world(const std::string& path, bool ema = true) {
  const FlatLayout b = layout_b();
  for (int k = 1; k <= size_of(); ++k) {
    const ProcessGroup sub = world().split(rank_of() < k ? 0 : 1, rank_of());
    if (rank_of() < k) {
      ShardedState s{b.shard(k, sub.rank()), {}};
      CheckpointMeta m = load_checkpoint(path, b, s, sub);
      EXPECT_EQ(m.step, 5);
      expect_state(b, s, ema);
    }
    world().barrier();
  }
}

// Every rank expects the same opendit::CollectiveError, whose message contains all of `parts`.
template <typename F>
void expect_error(F f, std::vector<std::string> parts) {
  bool threw = false;
  try {
    f();
  } catch (const CollectiveError& e) {
    threw = true;
    for (const auto& p : parts)
      EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << e.what() << " | want: " << p;
  } catch (const std::exception& e) {
    ADD_FAILURE() << "not an opendit::CollectiveError: " << e.what();
    threw = true;
  }
  EXPECT_TRUE(threw) << "no error; expected one mentioning " << parts.front();
  world().barrier();
}

}  // namespace

TEST(Checkpoint, ZeroShardsLoadInAnyWorld) {
  SharedDir dir;
  const FlatLayout a = layout_a();
  const std::string path =
      save_checkpoint(dir.path, a, state(a, a.shard(size_of(), rank_of())), frozen(), meta(5), world(), 2);
  EXPECT_EQ(path, dir.file("ckpt-00000005.h5"));
  EXPECT_EQ(latest_checkpoint(dir.path), path);
  load_in_every_world(path);

  // Meta and the export view.
  const CheckpointMeta m = read_checkpoint_meta(path);
  EXPECT_EQ(m.loader_epoch, 3);
  EXPECT_EQ(m.loader_cursor, 17);
  EXPECT_EQ(m.skipped_in_a_row, 1);
  EXPECT_EQ(m.world_size, size_of());
  EXPECT_EQ(m.strategy, "zero2");
  EXPECT_EQ(m.seed, 0xFEDCBA9876543210ull);
  EXPECT_EQ(m.deck_json, R"({"run":{"seed":7}})");
  EXPECT_EQ(m.model_json, R"({"depth":1})");
  EXPECT_FALSE(m.created_at.empty());
  for (const std::string g : {"model", "ema"}) {
    auto w = read_checkpoint_weights(path, g);
    auto want = full(g == "model" ? 0 : 1);
    EXPECT_EQ(w.size(), want.size() + 1);
    for (const auto& [name, t] : want) EXPECT_TRUE(at::equal(w.at(name), t)) << name;
    EXPECT_TRUE(at::equal(w.at("pos_embed"), frozen().at("pos_embed")));
  }
  auto opt = read_checkpoint_weights(path, "optim/exp_avg_sq");
  EXPECT_EQ(opt.size(), kSpecs.size());  // no frozen tensors among the optimizer state
}

TEST(Checkpoint, DdpStyleFullStateOnEveryRank) {
  SharedDir dir;
  const FlatLayout a = layout_a();
  const FlatRange everything{0, a.padded_numel(size_of())};
  const std::string path = save_checkpoint(dir.path, a, state(a, everything), frozen(), meta(5), world(), 2);
  load_in_every_world(path);
  // ddp loads the whole state on every rank.
  ShardedState s{{0, layout_b().numel()}, {}};
  load_checkpoint(path, layout_b(), s, world());
  expect_state(layout_b(), s);
}

TEST(Checkpoint, UnevenRangesAndNoEma) {
  SharedDir dir;
  const FlatLayout a = layout_a();
  // Rank r holds [cut(r), cut(r+1)) with cuts that fall inside parameters and rows.
  const int w = size_of(), r = rank_of();
  auto cut = [&](int i) { return i == w ? a.numel() : std::int64_t(i) * a.numel() / w + (i ? 3 : 0); };
  const std::string path =
      save_checkpoint(dir.path, a, state(a, {cut(r), cut(r + 1)}, false), {}, meta(5), world(), 2);
  load_in_every_world(path, false);
}

TEST(Checkpoint, ParallelAndSerialPathsAgree) {
  SharedDir dir;
  const FlatLayout a = layout_a();
  const auto mine = state(a, a.shard(size_of(), rank_of()));
  const std::string p1 = save_checkpoint(dir.file("par"), a, mine, frozen(), meta(5), world(), 2, false);
  const std::string p2 = save_checkpoint(dir.file("ser"), a, mine, frozen(), meta(5), world(), 2, true);
  load_in_every_world(p1);
  load_in_every_world(p2);
  if (rank_of() == 0) {
    for (const std::string g : {"model", "ema", "optim/exp_avg", "optim/exp_avg_sq"}) {
      auto w1 = read_checkpoint_weights(p1, g), w2 = read_checkpoint_weights(p2, g);
      ASSERT_EQ(w1.size(), w2.size());
      for (const auto& [name, t] : w1) EXPECT_TRUE(at::equal(t, w2.at(name))) << g << "/" << name;
    }
  }
  world().barrier();
}

TEST(Checkpoint, KeepLastAndCompletionMarkers) {
  SharedDir dir;
  const FlatLayout a = layout_a();
  const auto mine = state(a, a.shard(size_of(), rank_of()));
  for (int step = 1; step <= 5; ++step) save_checkpoint(dir.path, a, mine, {}, meta(step), world(), 2);
  if (rank_of() == 0) {
    for (int step = 1; step <= 5; ++step) {
      const std::string p = checkpoint_path(dir.path, step);
      EXPECT_EQ(std::ifstream(p).good(), step >= 4) << p;
      EXPECT_EQ(std::ifstream(p + ".done").good(), step >= 4) << p;
    }
    EXPECT_EQ(latest_checkpoint(dir.path), checkpoint_path(dir.path, 5));
    // A newer checkpoint without its marker and a leftover .tmp do not count.
    std::ofstream(checkpoint_path(dir.path, 9)) << opendit::test::read_bytes(checkpoint_path(dir.path, 5));
    std::ofstream(checkpoint_path(dir.path, 10) + ".tmp") << "half a file";
    std::ofstream(dir.file("ckpt-7.h5.done")) << "";  // not a checkpoint name
    EXPECT_EQ(latest_checkpoint(dir.path), checkpoint_path(dir.path, 5));
    EXPECT_EQ(latest_checkpoint(dir.file("no_such_dir")), std::nullopt);
  }
  world().barrier();
  // Saving again after a crash left a .tmp of the same step.
  if (rank_of() == 0) std::ofstream(checkpoint_path(dir.path, 6) + ".tmp") << "garbage";
  world().barrier();
  save_checkpoint(dir.path, a, mine, {}, meta(6), world(), 2);
  EXPECT_EQ(latest_checkpoint(dir.path), checkpoint_path(dir.path, 6));
  ShardedState s{a.shard(size_of(), rank_of()), {}};
  EXPECT_EQ(load_checkpoint(checkpoint_path(dir.path, 6), a, s, world()).step, 6);
  expect_state(a, s);
  if (rank_of() == 0) EXPECT_FALSE(std::ifstream(checkpoint_path(dir.path, 4)).good());  // pruned: 5 and 6 stay
}

TEST(Checkpoint, BadInputIsOneErrorOnEveryRank) {
  SharedDir dir;
  const FlatLayout a = layout_a();
  const std::string good =
      save_checkpoint(dir.path, a, state(a, a.shard(size_of(), rank_of())), frozen(), meta(5), world(), 3);
  const std::string good_bytes = rank_of() == 0 ? opendit::test::read_bytes(good) : "";
  auto load = [&](const std::string& path, const FlatLayout& layout) {
    return [&, path] {
      ShardedState s{layout.shard(size_of(), rank_of()), {}};
      load_checkpoint(path, layout, s, world());
    };
  };
  // A damaged copy of the good file, made by rank 0.
  auto damaged = [&](const std::string& name, const std::function<void(const std::string&)>& damage) {
    const std::string p = dir.file(name);
    if (rank_of() == 0) {
      std::ofstream(p, std::ios::binary) << good_bytes;
      damage(p);
    }
    world().barrier();
    return p;
  };

  expect_error(load(dir.file("nope.h5"), a), {"nope.h5", "No such file"});

  // Another model: a parameter with another shape, a parameter missing.
  auto specs = kSpecs;
  specs[2].shape = {14};
  expect_error(load(good, FlatLayout(specs)), {good, "/model/blocks.0.bias", "expected shape [14], found [13]"});
  specs = kSpecs;
  specs.push_back({"y_embedder.table", {3, 2}});
  expect_error(load(good, FlatLayout(specs)), {good, "/model/y_embedder.table", "parameter missing"});

  const std::string f16 = damaged("f16.h5", [](const std::string& p) {
    H5File f = H5File::open(p, H5Mode::read_write);
    H5Group g = f.root().open_group("optim").open_group("exp_avg");
    g.remove("final.linear");
    g.create_dataset("final.linear", at::kHalf, {2, 3, 11}).write_attr("crc32", std::int64_t(0));
    f.close();
  });
  expect_error(load(f16, a), {"/optim/exp_avg/final.linear", "expected dtype float32, found float16"});

  const std::string fmt = damaged("fmt.h5", [](const std::string& p) {
    H5File f = H5File::open(p, H5Mode::read_write);
    f.root().write_attr("format", "opendit.latents");
    f.close();
  });
  expect_error(load(fmt, a), {fmt, "expected 'opendit.checkpoint', found 'opendit.latents'"});

  const std::string cut = damaged(
      "cut.h5", [&](const std::string& p) { ASSERT_EQ(::truncate(p.c_str(), off_t(good_bytes.size() / 2)), 0); });
  expect_error(load(cut, a), {cut});

  const std::string flip = damaged("flip.h5", [](const std::string& p) {
    haddr_t off;
    {
      H5File f = H5File::open(p);
      H5Dataset ds = f.root().open_group("ema").open_dataset("blocks.0.conv.weight");
      off = H5Dget_offset(ds.id());
      ASSERT_NE(off, HADDR_UNDEF);
    }
    std::fstream io(p, std::ios::in | std::ios::out | std::ios::binary);
    io.seekg(std::streamoff(off + 101));
    char c = 0;
    io.read(&c, 1);
    c ^= 0x10;
    io.seekp(std::streamoff(off + 101));
    io.write(&c, 1);
  });
  expect_error(load(flip, a), {flip, "/ema/blocks.0.conv.weight", "checksum mismatch"});
  if (rank_of() == 0) EXPECT_THROW(read_checkpoint_weights(flip, "ema"), Error);

  // An output folder that cannot be made (a file is in the way), and input wrong on one rank only.
  if (rank_of() == 0) std::ofstream(dir.file("a_file")) << "x";
  world().barrier();
  const auto mine = state(a, a.shard(size_of(), rank_of()));
  expect_error([&] { save_checkpoint(dir.file("a_file/ckpts"), a, mine, {}, meta(6), world(), 3); },
               {"a_file/ckpts", "not a folder"});
  auto wrong = mine;
  if (rank_of() == size_of() - 1) wrong.groups["optim/exp_avg"] = at::zeros({3}, at::kFloat);
  expect_error([&] { save_checkpoint(dir.path, a, wrong, {}, meta(6), world(), 3); },
               {"optim/exp_avg", "must be float32"});
  auto holes = mine;
  holes.range = rank_of() == 0 ? FlatRange{0, 0} : mine.range;
  for (auto& [name, t] : holes.groups) t = t.narrow(0, 0, holes.range.size());
  expect_error([&] { save_checkpoint(dir.path, a, holes, {}, meta(7), world(), 3); }, {"in no rank's range"});

  // The good checkpoint is untouched and still the latest.
  EXPECT_EQ(latest_checkpoint(dir.path), good);
  load_in_every_world(good);
}
