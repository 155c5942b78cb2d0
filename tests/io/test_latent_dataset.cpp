// io/latent_dataset: writer and reader round trips (images and videos, three dtypes, labels and text), rows read
// in any order, and one opendit::Error line for each way a file can be wrong.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <random>

#include "core/error.hpp"
#include "io/latent_dataset.hpp"
#include "io_test_util.hpp"

using namespace opendit::io;
using namespace opendit::test;
using opendit::Error;

namespace {

const std::vector<std::int64_t> kShape = {4, 8, 8};

// Opening `path` must fail with an opendit::Error whose message holds every piece of `want`.
void expect_open_error(const std::string& path, const std::vector<std::string>& want) {
  try {
    LatentDataset ds(path);
    ADD_FAILURE() << "opened " << path << " without error";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;  // one line
    for (const auto& w : want) EXPECT_NE(msg.find(w), std::string::npos) << "'" << w << "' not in: " << msg;
  }
}

bool exists(const std::string& path) { return ::access(path.c_str(), F_OK) == 0; }

// A valid 20-sample file, then `edit` changes it through the HDF5 layer.
template <typename Edit>
std::string edited_file(const TempDir& dir, Edit&& edit) {
  const std::string path = dir.file("edited.h5");
  write_synthetic(path, 20, kShape);
  H5File f = H5File::open(path, H5Mode::read_write);
  H5Group root = f.root();
  edit(root);
  return path;
}

}  // namespace

TEST(LatentDataset, RoundTripEveryDtype) {
  TempDir dir;
  for (auto dtype : {at::kFloat, at::kHalf, at::kBFloat16}) {
    const std::string path = dir.file("rt.h5");
    write_synthetic(path, 37, kShape, dtype, 10, /*batch=*/8, /*chunk_rows=*/5);
    EXPECT_FALSE(exists(path + ".partial"));
    LatentDataset ds(path);
    EXPECT_EQ(ds.size(), 37);
    EXPECT_EQ(ds.sample_shape(), kShape);
    EXPECT_EQ(ds.stored_dtype(), dtype);
    EXPECT_EQ(ds.num_classes(), 10);
    EXPECT_TRUE(ds.has_labels());
    EXPECT_FALSE(ds.has_text());
    EXPECT_EQ(ds.space(), "latent");
    EXPECT_DOUBLE_EQ(ds.scale_factor(), 0.18215);
    EXPECT_EQ(ds.bytes_per_sample(), 4 * 8 * 8 * at::elementSize(dtype) + 8);

    // Any order, repeats, runs across chunk boundaries (chunks of 5 rows).
    const std::vector<std::int64_t> rows = {36, 3, 4, 5, 6, 7, 0, 3, 20, 19, 21, 36};
    LatentBatch b = ds.read(rows);
    ASSERT_EQ(b.latents.sizes(), (at::IntArrayRef{12, 4, 8, 8}));
    EXPECT_EQ(b.latents.scalar_type(), at::kFloat);
    for (std::size_t i = 0; i < rows.size(); ++i) {
      EXPECT_TRUE(b.latents[i].equal(expected_row(rows[i], kShape, dtype))) << "row " << rows[i];
      EXPECT_EQ(b.labels[i].item<std::int64_t>(), synthetic_label(rows[i], 10));
      EXPECT_EQ(b.indices[i].item<std::int64_t>(), rows[i]);
    }
    EXPECT_TRUE(ds.read({2, 3, 4}).latents[1].equal(expected_row(3, kShape, dtype)));  // sorted: read as is
    EXPECT_EQ(ds.read({}).latents.size(0), 0);
  }
}

TEST(LatentDataset, RootAttributes) {
  TempDir dir;
  const std::string path = dir.file("a.h5");
  write_synthetic(path, 3, kShape);
  H5Group root = H5File::open(path).root();
  EXPECT_EQ(root.read_attr_string("format"), "opendit.latents");
  EXPECT_EQ(root.read_attr_int64("version"), 1);
  EXPECT_EQ(root.read_attr_int64("count"), 3);
  EXPECT_EQ(root.read_attr_string("source"), "synthetic test data");
  EXPECT_EQ(root.read_attr_string("created_by").rfind("opendit ", 0), 0u);
  const std::string at = root.read_attr_string("created_at");  // 2025-01-31T12:00:00Z
  EXPECT_EQ(at.size(), 20u) << at;
  EXPECT_EQ(at.back(), 'Z') << at;
  EXPECT_EQ(at[10], 'T') << at;
  EXPECT_EQ(root.open_dataset("latents").chunk()[0], 1 << 20 >> 9);  // about 1 MiB: 2048 rows of 512 bytes
}

TEST(LatentDataset, VideoWithTextAndNoLabels) {
  TempDir dir;
  const std::string path = dir.file("video.h5");
  const std::vector<std::int64_t> shape = {4, 3, 4, 4};  // [C, T, H, W]
  LatentDatasetInfo info;
  info.text_length = 6, info.text_dim = 5;
  {
    LatentDatasetWriter w(path, shape, at::kBFloat16, info);
    w.append(at::stack({synthetic_row(0, shape), synthetic_row(1, shape)}), {},
             at::stack({synthetic_row(10, {6, 5}), synthetic_row(11, {6, 5})}),
             at::tensor({1, 1, 1, 0, 0, 0, 1, 1, 1, 1, 1, 0}, at::kByte).reshape({2, 6}));
    w.finalize();
  }
  LatentDataset ds(path);
  EXPECT_EQ(ds.sample_shape(), shape);
  EXPECT_FALSE(ds.has_labels());
  EXPECT_TRUE(ds.has_text());
  LatentBatch b = ds.read({1, 0});
  EXPECT_TRUE(b.latents[0].equal(expected_row(1, shape, at::kBFloat16)));
  EXPECT_TRUE(b.text_emb[1].equal(expected_row(10, {6, 5}, at::kBFloat16)));
  EXPECT_EQ(b.text_mask[0].sum().item<std::int64_t>(), 5);
  EXPECT_FALSE(b.labels.defined());
}

TEST(LatentDataset, WriterRefusesBadInputAndCleansUp) {
  TempDir dir;
  const std::string path = dir.file("w.h5");
  LatentDatasetInfo info;
  info.num_classes = 10;
  {
    LatentDatasetWriter w(path, kShape, at::kHalf, info);
    EXPECT_TRUE(exists(path + ".partial"));
    EXPECT_THROW(w.append(at::zeros({2, 4, 8, 9})), Error);                                  // shape
    EXPECT_THROW(w.append(at::zeros({2, 4, 8, 8})), Error);                                  // labels missing
    EXPECT_THROW(w.append(at::zeros({2, 4, 8, 8}), at::tensor({0, 10}, at::kLong)), Error);  // out of range
    w.append(at::zeros({2, 4, 8, 8}), at::tensor({0, 9}, at::kLong));
    EXPECT_EQ(w.count(), 2);
  }  // never finalized
  EXPECT_FALSE(exists(path + ".partial"));
  EXPECT_FALSE(exists(path));
  EXPECT_THROW(LatentDatasetWriter(path, {4, 8}, at::kHalf, info), Error);  // rank
  EXPECT_THROW(LatentDatasetWriter(path, kShape, at::kLong, info), Error);  // dtype
  info.space = "pixels";
  EXPECT_THROW(LatentDatasetWriter(path, kShape, at::kFloat, info), Error);  // space
}

// ---- bad files: one test each ---------------------------------------------------------------------

TEST(LatentDatasetBadInput, MissingFile) {
  TempDir dir;
  expect_open_error(dir.file("nope.h5"), {"nope.h5", "No such file"});
}

TEST(LatentDatasetBadInput, NotHdf5) {
  TempDir dir;
  std::mt19937 rng(1);
  std::string bytes(1 << 16, '\0');
  for (auto& c : bytes) c = char(rng());
  write_bytes(dir.file("random.h5"), bytes);
  expect_open_error(dir.file("random.h5"), {"random.h5", "cannot open file", "file signature not found"});
}

TEST(LatentDatasetBadInput, TruncatedFile) {
  TempDir dir;
  const std::string path = dir.file("t.h5");
  write_synthetic(path, 200, kShape);
  struct stat st;
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  ASSERT_EQ(::truncate(path.c_str(), st.st_size / 2), 0);
  expect_open_error(path, {"t.h5", "truncated file"});
}

TEST(LatentDatasetBadInput, WrongFormat) {
  TempDir dir;
  expect_open_error(edited_file(dir, [](H5Group& r) { r.write_attr("format", "opendit.checkpoint"); }),
                    {"object '/'", "format is \"opendit.checkpoint\", expected \"opendit.latents\""});
  H5File::create(dir.file("empty.h5"));
  expect_open_error(dir.file("empty.h5"), {"attribute 'format' is missing"});
}

TEST(LatentDatasetBadInput, WrongVersion) {
  TempDir dir;
  expect_open_error(edited_file(dir, [](H5Group& r) { r.write_attr("version", 3); }),
                    {"format version 3 is not supported (this build reads versions 1 and 2)"});
}

TEST(LatentDatasetBadInput, LabelCountDiffersFromLatents) {
  TempDir dir;
  const std::string path = edited_file(dir, [](H5Group& r) {
    r.remove("labels");
    r.create_dataset("labels", at::kLong, {19}).write(at::zeros({19}, at::kLong));
  });
  expect_open_error(path, {"object '/labels'", "has 19 labels for 20 samples"});
}

TEST(LatentDatasetBadInput, CountAttributeDiffersFromLatents) {
  TempDir dir;
  expect_open_error(edited_file(dir, [](H5Group& r) { r.write_attr("count", 21); }),
                    {"object '/latents'", "has 20 samples, attribute count says 21"});
}

TEST(LatentDatasetBadInput, WrongRank) {
  TempDir dir;
  const std::string path = edited_file(dir, [](H5Group& r) {
    r.remove("latents");
    r.create_dataset("latents", at::kHalf, {20, 256}).write(at::zeros({20, 256}, at::kHalf));
  });
  expect_open_error(path, {"object '/latents'", "shape must be [N, C, H, W] or [N, C, T, H, W], found [20, 256]"});
}

TEST(LatentDatasetBadInput, UnsupportedDtype) {
  TempDir dir;
  std::string path = edited_file(dir, [](H5Group& r) {
    r.remove("latents");
    r.create_dataset("latents", at::kLong, {20, 4, 8, 8}).write(at::zeros({20, 4, 8, 8}, at::kLong));
  });
  expect_open_error(path, {"object '/latents'", "dtype must be float32, float16 or bfloat16, found int64"});
  path = edited_file(dir, [](H5Group& r) {  // float64, which the HDF5 layer does not read at all
    r.remove("latents");
    H5Space space = H5Space::simple({20, 4, 8, 8});
    H5Handle d(H5Dcreate2(r.id(), "latents", H5T_IEEE_F64LE, space.id(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT),
               H5Dclose);
  });
  expect_open_error(path, {"object '/latents'", "stored type float64 is not supported"});
}

TEST(LatentDatasetBadInput, LabelsOutsideClasses) {
  TempDir dir;  // labels are (7 i) mod 10; with 3 classes row 1 holds label 7
  expect_open_error(edited_file(dir, [](H5Group& r) { r.write_attr("num_classes", 3); }),
                    {"object '/labels'", "label 7 at row 1 is outside [0, 3)"});
}
