// Data loading throughput: writes a temporary latent dataset (default 20,000 samples of 4x32x32 float16, the
// DiT-XL/2 256² latent) and reads it with the DataLoader of one process, with and without prefetch, with and
// without a simulated compute wait per batch (a sleep: the CPU is idle while a GPU step would run).
//
//   bench_data_loader [--samples 20000] [--batch 256] [--epochs 2] [--compute-ms 20] [--dir /tmp] [--cold]
//
// One line per mode: samples/s, MB/s of stored data, and the mean time next() kept the caller waiting.
// --cold drops the file from the page cache (posix_fadvise) before every mode; by default it is cached, as a
// dataset read every epoch usually is.
#include <fcntl.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <thread>

#include "core/build_info.hpp"
#include "core/error.hpp"
#include "io/data_loader.hpp"

using namespace opendit;
using Clock = std::chrono::steady_clock;

namespace {

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

void drop_page_cache(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) return;
  ::fdatasync(fd);
  ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
  ::close(fd);
}

struct Mode {
  const char* name;
  int prefetch;
  double compute_ms;
};

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"DataLoader throughput on a temporary latent dataset"};
  std::int64_t samples = 20000, batch = 256, epochs = 2;
  double compute_ms = 20;
  std::string dir = "/tmp";
  bool cold = false;
  app.add_option("--samples", samples, "samples in the dataset");
  app.add_option("--batch", batch, "global batch (one process: all of it)");
  app.add_option("--epochs", epochs, "epochs read per mode");
  app.add_option("--compute-ms", compute_ms, "simulated compute per batch in the overlap modes");
  app.add_option("--dir", dir, "where the temporary dataset goes");
  app.add_flag("--cold", cold, "drop the file from the page cache before every mode");
  CLI11_PARSE(app, argc, argv);

  try {
    const std::vector<std::int64_t> shape = {4, 32, 32};
    const std::string path = dir + "/opendit_bench_latents_" + std::to_string(::getpid()) + ".h5";
    std::printf("bench_data_loader: opendit %s (%s), %lld samples of float16 [4, 32, 32], batch %lld, %s cache\n",
                OPENDIT_VERSION, OPENDIT_GIT_COMMIT, (long long)samples, (long long)batch, cold ? "cold" : "warm");

    // Write in batches of 1000, as an encoder would.
    auto t0 = Clock::now();
    {
      io::LatentDatasetInfo info;
      info.num_classes = 1000;
      info.source = "bench_data_loader: random normal latents";
      io::LatentDatasetWriter w(path, shape, at::kHalf, info);
      for (std::int64_t start = 0; start < samples; start += 1000) {
        const std::int64_t n = std::min<std::int64_t>(1000, samples - start);
        w.append(at::randn({n, 4, 32, 32}), at::randint(1000, {n}, at::kLong));
      }
      w.finalize();
    }
    const double write_s = seconds_since(t0);
    auto dataset = std::make_shared<const io::LatentDataset>(path);
    const double mb_per_sample = dataset->bytes_per_sample() / 1e6;
    std::printf("write       %10.0f samples/s %8.1f MB/s\n", samples / write_s, samples * mb_per_sample / write_s);

    const Mode modes[] = {
        {"sync", 0, 0}, {"prefetch", 4, 0}, {"sync+compute", 0, compute_ms}, {"prefetch+compute", 4, compute_ms}};
    for (const Mode& m : modes) {
      if (cold) drop_page_cache(path);
      io::DataLoader loader(dataset, batch, 0, 1, 1, io::DataLoaderOptions{true, m.prefetch});
      const std::int64_t batches = epochs * loader.batches_per_epoch();
      double wait_s = 0;
      t0 = Clock::now();
      for (std::int64_t b = 0; b < batches; ++b) {
        const auto w0 = Clock::now();
        io::LatentBatch lb = loader.next();
        wait_s += seconds_since(w0);
        if (m.compute_ms > 0) std::this_thread::sleep_for(std::chrono::duration<double, std::milli>(m.compute_ms));
      }
      const double s = seconds_since(t0), n = double(batches * batch);
      std::printf("%-17s %10.0f samples/s %8.1f MB/s  wait %6.2f ms/batch  (compute %g ms/batch, %lld batches)\n",
                  m.name, n / s, n * mb_per_sample / s, 1e3 * wait_s / batches, m.compute_ms, (long long)batches);
    }
    dataset.reset();
    std::remove(path.c_str());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_data_loader: %s\n", e.what());
    return 1;
  }
  return 0;
}
