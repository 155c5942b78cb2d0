// Block files -> one opendit.latents v2 file (see assemble.hpp and docs/FORMATS.md).
#include "encode/assemble.hpp"

#include <sys/stat.h>

#include <algorithm>
#include <map>

#include "core/error.hpp"
#include "core/strings.hpp"
#include "encode/block_file.hpp"
#include "io/atomic_file.hpp"
#include "io/files.hpp"
#include "io/latent_dataset.hpp"
#include "io/row_writer.hpp"

namespace opendit::encode {
namespace {

at::Tensor longs(const std::vector<int64_t>& v) { return at::tensor(v, at::kLong).reshape({int64_t(v.size())}); }

// What every rank works out from the blocks' indexes: where each success and each block's rows go.
struct Plan {
  std::vector<std::vector<int64_t>> shapes;  // bucket k's shape (sorted)
  std::vector<int64_t> bucket_size;
  std::vector<int64_t> input;                // per sample (input order): its input-list index
  std::vector<int64_t> bucket, bucket_row;   // per sample
  std::vector<int64_t> text_offset;          // [samples + 1]
  std::map<int64_t, int64_t> sample_of;      // input index -> sample
  std::vector<std::pair<int64_t, std::string>> failed;  // input, reason (sorted)
  int64_t truncated = 0;
};

Plan make_plan(const std::vector<EncodedBlock>& blocks, bool text) {
  Plan p;
  std::map<std::vector<int64_t>, int64_t> shape_ids;
  std::vector<std::pair<int64_t, std::vector<int64_t>>> successes;  // input, shape
  std::map<int64_t, int64_t> text_len;
  for (const EncodedBlock& b : blocks) {
    for (const EncodedGroup& g : b.groups) {
      shape_ids[g.shape] = 0;
      for (int64_t i : g.inputs) successes.push_back({i, g.shape});
    }
    for (std::size_t i = 0; i < b.text_inputs.size(); ++i) text_len[b.text_inputs[i]] = b.text_lengths[i];
    for (std::size_t i = 0; i < b.failed.size(); ++i) p.failed.push_back({b.failed[i], b.reasons[i]});
    p.truncated += b.truncated;
  }
  for (auto& [shape, id] : shape_ids) id = int64_t(p.shapes.size()), p.shapes.push_back(shape);
  p.bucket_size.assign(p.shapes.size(), 0);
  std::sort(successes.begin(), successes.end());
  std::sort(p.failed.begin(), p.failed.end());
  p.text_offset.push_back(0);
  for (const auto& [input, shape] : successes) {
    const int64_t k = shape_ids[shape];
    p.sample_of[input] = int64_t(p.input.size());
    p.input.push_back(input);
    p.bucket.push_back(k);
    p.bucket_row.push_back(p.bucket_size[k]++);
    if (text) {
      auto it = text_len.find(input);
      if (it == text_len.end()) throw Error(cat("encode: input ", input, " has a latent but no caption tokens"));
      p.text_offset.push_back(p.text_offset.back() + it->second);
    }
  }
  return p;
}

}  // namespace

AssembleResult assemble(const InputList& inputs, const AssembleSettings& s, const parallel::ProcessGroup& group) {
  const bool text = s.text_dim > 0;
  std::vector<EncodedBlock> index(s.blocks);
  Plan plan;
  group.agree([&] {
    for (int64_t b = 0; b < s.blocks; ++b) {
      const std::string path = block_path(s.parts_dir, b);
      if (!io::path_exists(path)) throw Error(cat("encode: block file ", path, " is missing"));
      index[b] = read_block(path, false);
    }
    plan = make_plan(index, text);
  });
  const int64_t n = int64_t(plan.input.size()), nf = int64_t(plan.failed.size());
  const int64_t tokens = text ? plan.text_offset.back() : 0;

  int64_t num_classes = 0;
  if (inputs.has_labels) {
    num_classes = int64_t(inputs.class_names.size());
    for (const InputItem& it : inputs.items) num_classes = std::max(num_classes, it.label + 1);
  }
  std::vector<io::RowDataset> ds;
  for (std::size_t k = 0; k < plan.shapes.size(); ++k) {
    const std::string b = cat("bucket_", k, "/");
    ds.push_back({b + "mean", s.dtype, plan.shapes[k], plan.bucket_size[k]});
    if (!s.mean_only) ds.push_back({b + "logvar", s.dtype, plan.shapes[k], plan.bucket_size[k]});
  }
  // The strings and indexes of samples and failures: rank 0 writes them whole.
  std::vector<std::string> paths, captions, failed_paths, reasons;
  std::vector<int64_t> labels, failed_inputs;
  for (int64_t i : plan.input) {
    paths.push_back(inputs.items[i].path);
    if (inputs.has_captions) captions.push_back(inputs.items[i].caption);
    if (inputs.has_labels) labels.push_back(inputs.items[i].label);
  }
  for (const auto& [i, why] : plan.failed)
    failed_inputs.push_back(i), failed_paths.push_back(inputs.items[i].path), reasons.push_back(why);
  std::map<std::string, io::RowBlock> whole;
  auto add_whole = [&](const std::string& name, const at::Tensor& t) {
    std::vector<int64_t> row(t.sizes().begin() + 1, t.sizes().end());
    ds.push_back({name, t.scalar_type(), row, t.size(0)});
    whole[name] = {0, t};
  };
  auto add_strings = [&](const std::string& name, const std::vector<std::string>& v) {
    auto [off, bytes] = io::pack_strings(v);
    add_whole(name + "_offset", off);
    add_whole(name + "_bytes", bytes);
  };
  add_whole("samples/bucket", longs(plan.bucket));
  add_whole("samples/bucket_row", longs(plan.bucket_row));
  add_whole("samples/source", longs(plan.input));
  if (inputs.has_labels) add_whole("samples/label", longs(labels));
  add_strings("samples/path", paths);
  if (inputs.has_captions) add_strings("samples/caption", captions);
  if (text) add_whole("samples/text_offset", longs(plan.text_offset));
  add_whole("failures/source", longs(failed_inputs));
  add_strings("failures/path", failed_paths);
  add_strings("failures/reason", reasons);
  for (std::size_t k = 0; k < plan.shapes.size(); ++k) {
    std::vector<int64_t> rows;
    for (int64_t i = 0; i < n; ++i)
      if (plan.bucket[i] == int64_t(k)) rows.push_back(i);
    add_whole(cat("bucket_", k, "/row"), longs(rows));
  }
  if (text) ds.push_back({"text/tokens", s.dtype, {s.text_dim}, tokens});

  const std::string partial = io::AtomicFile::tmp_path_for(s.output, ".partial");
  auto attrs = [&](io::H5Group& root) {
    if (s.root_attrs) s.root_attrs(root);
    root.write_attr("format", io::kLatentsFormat);
    root.write_attr("version", io::kLatentsVersion2);
    root.write_attr("count", n);
    root.write_attr("buckets", int64_t(plan.shapes.size()));
    root.write_attr("failures", nf);
    root.write_attr("posterior", s.mean_only ? "mean" : "mean_logvar");
    root.write_attr("num_classes", num_classes);
    if (!inputs.class_names.empty()) root.write_attr("class_names", join(inputs.class_names, "\n"));
    root.write_attr("text_dim", s.text_dim);
    root.write_attr("created_at", io::now_iso8601());
  };
  io::RowWriter writer(partial, ds, group, s.force_serial, attrs);

  // Round r: rank q copies block r * size + q into place (the blocks on a shared file system, read by whoever).
  const int64_t size = group.size(), rounds = (s.blocks + size - 1) / size;
  for (int64_t r = 0; r < rounds; ++r) {
    const int64_t b = r * size + group.rank();
    std::map<std::string, io::RowBlock> mine;
    group.agree([&] {
      if (b >= s.blocks) return;
      const EncodedBlock blk = read_block(block_path(s.parts_dir, b), true);
      for (const EncodedGroup& g : blk.groups) {
        if (g.inputs.empty()) continue;
        const int64_t first = plan.sample_of.at(g.inputs.front());
        const std::string k = cat("bucket_", plan.bucket[first], "/");
        mine[k + "mean"] = {plan.bucket_row[first], g.mean};
        if (!s.mean_only) {
          if (!g.logvar.defined()) throw Error(cat("encode: block ", b, " has no log-variance"));
          mine[k + "logvar"] = {plan.bucket_row[first], g.logvar};
        }
      }
      if (text && !blk.text_inputs.empty())
        mine["text/tokens"] = {plan.text_offset[plan.sample_of.at(blk.text_inputs.front())], blk.text_tokens};
    });
    writer.write(mine);
    kill_point_test_hook("assemble", r + 1);
  }
  writer.write(group.rank() == 0 ? whole : std::map<std::string, io::RowBlock>{});
  writer.close();

  AssembleResult res;
  res.samples = n;
  res.failures = nf;
  res.truncated = plan.truncated;
  for (std::size_t k = 0; k < plan.shapes.size(); ++k) res.buckets.push_back({plan.shapes[k], plan.bucket_size[k]});
  for (std::size_t i = 0; i < failed_paths.size(); ++i) res.failed.push_back({failed_paths[i], reasons[i]});
  group.agree([&] {
    if (group.rank() != 0) return;
    io::AtomicFile out(s.output, ".partial");
    out.commit();
    struct stat st {};
    if (::stat(s.output.c_str(), &st) == 0) res.bytes = int64_t(st.st_size);
  });
  return res;
}

}  // namespace opendit::encode
