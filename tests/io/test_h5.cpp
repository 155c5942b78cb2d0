// io/h5: round trips of every dtype (whole, rows, 1-D slices), attributes, the stored types other tools see
// (h5dump), error messages (file, object, HDF5's own words), and concurrent use from two threads.
#include <gtest/gtest.h>

#include <cstdio>
#include <thread>

#include "core/error.hpp"
#include "io/h5.hpp"
#include "io_test_util.hpp"

using namespace opendit::io;
using opendit::Error;
using opendit::test::bit_equal;
using opendit::test::error_of;
using opendit::test::TempDir;

namespace {

const at::ScalarType kDtypes[] = {at::kFloat, at::kHalf, at::kBFloat16, at::kLong, at::kByte};

at::Tensor sample(at::ScalarType dtype, std::vector<std::int64_t> shape) {
  at::Tensor t = at::randn(shape, at::kDouble) * 100;
  return (dtype == at::kLong || dtype == at::kByte) ? t.abs().to(dtype) : t.to(dtype);
}


}  // namespace

TEST(H5, ReportsParallelism) {
#ifdef H5_HAVE_PARALLEL
  EXPECT_TRUE(hdf5_is_parallel());
#else
  EXPECT_FALSE(hdf5_is_parallel());
#endif
}

TEST(H5, WholeDatasetRoundTripEveryDtype) {
  TempDir dir;
  const std::string path = dir.file("whole.h5");
  std::map<std::string, at::Tensor> written;
  {
    H5File f = H5File::create(path);
    H5Group g = f.root().create_group("tensors");
    for (auto dtype : kDtypes) {
      const std::string name = c10::toString(dtype);
      written[name] = sample(dtype, {3, 4, 5});
      g.create_dataset(name, dtype, {3, 4, 5}).write(written[name]);
    }
    written["scalar"] = at::tensor(2.5f).reshape({});
    g.create_dataset("scalar", at::kFloat, {}).write(written["scalar"]);
  }
  H5File f = H5File::open(path);
  H5Group g = f.root().open_group("tensors");
  for (const auto& [name, t] : written) {
    H5Dataset ds = g.open_dataset(name);
    EXPECT_EQ(ds.dtype(), t.scalar_type()) << name;
    EXPECT_TRUE(bit_equal(ds.read(), t)) << name;
  }
  // bfloat16 is uint16 on disk, tagged with a dtype attribute.
  H5Dataset bf = g.open_dataset("BFloat16");
  EXPECT_EQ(bf.read_attr_string("dtype"), "bfloat16");
  H5Handle type(H5Dget_type(bf.id()), H5Tclose);
  EXPECT_EQ(H5Tget_class(type.id()), H5T_INTEGER);
  EXPECT_EQ(H5Tget_size(type.id()), 2u);
}

TEST(H5, RowsAndExtensibleDatasets) {
  TempDir dir;
  const std::string path = dir.file("rows.h5");
  for (auto dtype : kDtypes) {
    const at::Tensor all = sample(dtype, {10, 3, 2});
    {
      H5File f = H5File::create(path);
      H5Dataset ds = f.root().create_dataset("x", dtype, {0, 3, 2}, {{4, 3, 2}, true});
      EXPECT_EQ(ds.chunk(), (std::vector<std::int64_t>{4, 3, 2}));
      for (std::int64_t start : {0, 3, 7}) {  // appends of 3, 4 and 3 rows
        const std::int64_t n = start == 3 ? 4 : 3;
        ds.extend_rows(start + n);
        ds.write_rows(start, all.narrow(0, start, n));
      }
      EXPECT_EQ(ds.shape(), (std::vector<std::int64_t>{10, 3, 2}));
    }
    H5Dataset ds = H5File::open(path).root().open_dataset("x", 0);
    EXPECT_TRUE(bit_equal(ds.read(), all));
    EXPECT_TRUE(bit_equal(ds.read_rows(2, 5), all.narrow(0, 2, 5)));
    EXPECT_EQ(ds.read_rows(4, 0).sizes(), (at::IntArrayRef{0, 3, 2}));
    at::Tensor out = at::empty({6, 3, 2}, dtype);
    ds.read_rows_into(1, out.narrow(0, 2, 3));
    EXPECT_TRUE(bit_equal(out.narrow(0, 2, 3), all.narrow(0, 1, 3)));
  }
}

TEST(H5, OneDimensionalSlicesOfFlattenedTensors) {
  TempDir dir;
  const std::string path = dir.file("slices.h5");
  const at::Tensor t = sample(at::kBFloat16, {7, 9});  // flattened: 63 elements, written in three slices
  {
    H5File f = H5File::create(path);
    H5Dataset ds = f.root().create_dataset("flat", at::kBFloat16, {63});
    ds.write_slice(0, t.narrow(0, 0, 2));               // 18 elements
    ds.write_slice(18, t.narrow(0, 2, 5));              // 45 elements
    ds.write_slice(63, at::empty({0}, at::kBFloat16));  // nothing, at the end: valid
  }
  H5Dataset ds = H5File::open(path).root().open_dataset("flat");
  EXPECT_TRUE(bit_equal(ds.read().reshape({7, 9}), t));
  EXPECT_TRUE(bit_equal(ds.read_slice(10, 20), t.reshape({-1}).narrow(0, 10, 20)));
  EXPECT_EQ(ds.read_slice(5, 0).numel(), 0);
}

TEST(H5, Attributes) {
  TempDir dir;
  const std::string path = dir.file("attrs.h5");
  {
    H5File f = H5File::create(path);
    H5Group root = f.root();
    root.write_attr("format", "opendit.test");
    root.write_attr("version", std::int64_t(3));
    root.write_attr("scale", 0.18215);
    root.write_attr("unicode", std::string("λ = 0.5 ✓"));
    root.write_attr("version", 4);  // replaced
    H5Dataset ds = root.create_dataset("d", at::kFloat, {2});
    ds.write_attr("note", "");
  }
  H5File f = H5File::open(path);
  H5Group root = f.root();
  EXPECT_EQ(root.read_attr_string("format"), "opendit.test");
  EXPECT_EQ(root.read_attr_int64("version"), 4);
  EXPECT_EQ(root.read_attr_double("version"), 4.0);  // integers read as numbers too
  EXPECT_EQ(root.read_attr_double("scale"), 0.18215);
  EXPECT_EQ(root.read_attr_string("unicode"), "λ = 0.5 ✓");
  EXPECT_EQ(root.open_dataset("d").read_attr_string("note"), "");
  EXPECT_TRUE(root.has_attr("scale"));
  EXPECT_FALSE(root.has_attr("nope"));

  std::string msg = error_of([&] { root.read_attr_int64("format"); });
  EXPECT_NE(msg.find("attribute 'format' must be an integer, found string"), std::string::npos) << msg;
  EXPECT_NE(msg.find(path), std::string::npos) << msg;
  msg = error_of([&] { root.open_dataset("d").read_attr_double("missing"); });
  EXPECT_NE(msg.find("object '/d': attribute 'missing' is missing"), std::string::npos) << msg;
  msg = error_of([&] { root.read_attr_string("scale"); });
  EXPECT_NE(msg.find("must be a string, found float64"), std::string::npos) << msg;
}

TEST(H5, ErrorsNameFileObjectAndLibraryMessage) {
  TempDir dir;
  std::string msg = error_of([&] { H5File::open(dir.file("missing.h5")); });
  EXPECT_NE(msg.find("missing.h5"), std::string::npos) << msg;
  EXPECT_NE(msg.find("No such file"), std::string::npos) << msg;

  opendit::test::write_bytes(dir.file("random.h5"), std::string(4096, '\x5a'));
  msg = error_of([&] { H5File::open(dir.file("random.h5")); });
  EXPECT_NE(msg.find("HDF5: "), std::string::npos) << msg;  // the library's own words
  EXPECT_NE(msg.find("signature"), std::string::npos) << msg;

  const std::string path = dir.file("e.h5");
  H5File f = H5File::create(path);
  H5Group g = f.root().create_group("grp");
  msg = error_of([&] { g.open_dataset("nope"); });
  EXPECT_NE(msg.find("HDF5 file '" + path + "', object '/grp/nope': dataset is missing"), std::string::npos) << msg;
  msg = error_of([&] { g.create_group("sub"), g.create_group("sub"); });
  EXPECT_NE(msg.find("object '/grp/sub': cannot create group (HDF5: "), std::string::npos) << msg;

  H5Dataset ds = g.create_dataset("x", at::kFloat, {4, 2});
  msg = error_of([&] { ds.write_rows(3, at::zeros({2, 2})); });
  EXPECT_NE(msg.find("writing rows [3, 5) outside [0, 4)"), std::string::npos) << msg;
  msg = error_of([&] { ds.write(at::zeros({4, 2}, at::kDouble)); });
  EXPECT_NE(msg.find("tensor of dtype float64 written to a dataset of dtype float32"), std::string::npos) << msg;
  msg = error_of([&] { ds.write(at::zeros({4, 3})); });
  EXPECT_NE(msg.find("shape [4, 3] written to a dataset of shape [4, 2]"), std::string::npos) << msg;
  msg = error_of([&] { ds.extend_rows(8); });  // contiguous datasets do not grow
  EXPECT_NE(msg.find("cannot extend to 8 rows"), std::string::npos) << msg;
  msg = error_of([&] { g.create_dataset("d", at::kDouble, {2}); });
  EXPECT_NE(msg.find("cannot store dtype float64"), std::string::npos) << msg;

  // A type this layer does not read, written with the C API.
  H5Space space = H5Space::simple({3});
  H5Handle raw(H5Dcreate2(g.id(), "int32", H5T_STD_I32LE, space.id(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), H5Dclose);
  ASSERT_TRUE(raw.valid());
  msg = error_of([&] { g.open_dataset("int32"); });
  EXPECT_NE(msg.find("object '/grp/int32': stored type int32 is not supported"), std::string::npos) << msg;
}

// Other HDF5 tools see float16 as a float and read the same numbers.
TEST(H5, Float16IsReadableByH5dump) {
  if (std::system("h5dump --version > /dev/null 2>&1") != 0) GTEST_SKIP() << "h5dump not installed";
  TempDir dir;
  const std::string path = dir.file("half.h5");
  {
    H5File f = H5File::create(path);
    f.root().create_dataset("half", at::kHalf, {4}).write(at::tensor({1.5f, -2.0f, 0.25f, 65504.0f}).to(at::kHalf));
  }
  const std::string out = dir.file("dump.txt");
  ASSERT_EQ(std::system(("h5dump -d /half " + path + " > " + out).c_str()), 0);
  const std::string text = opendit::test::read_bytes(out);
  EXPECT_NE(text.find("1.5, -2, 0.25, 65504"), std::string::npos) << text;
  EXPECT_NE(text.find("16-bit little-endian floating-point"), std::string::npos) << text;
}

// The process-wide lock lets two threads use HDF5 at once (the loader's prefetch thread and a checkpoint writer).
TEST(H5, TwoThreadsAtOnce) {
  TempDir dir;
  const at::Tensor data = sample(at::kFloat, {64, 16});
  {
    H5File f = H5File::create(dir.file("t.h5"));
    f.root().create_dataset("x", at::kFloat, {64, 16}).write(data);
  }
  H5File f = H5File::open(dir.file("t.h5"));
  H5Dataset ds = f.root().open_dataset("x");
  int bad_reads = 0;
  std::thread reader([&] {
    for (int i = 0; i < 300; ++i) bad_reads += !ds.read_rows(i % 60, 4).equal(data.narrow(0, i % 60, 4));
  });
  for (int i = 0; i < 50; ++i) {  // meanwhile: write other files
    H5File w = H5File::create(dir.file("w" + std::to_string(i % 3) + ".h5"));
    w.root().create_dataset("y", at::kFloat, {8}).write(at::ones({8}));
    w.root().write_attr("i", i);
  }
  reader.join();
  EXPECT_EQ(bad_reads, 0);
}
