// Writes a small learnable class-conditional dataset for the training tests: class k's samples are a fixed
// pattern of class k plus a little noise, in [-1, 1]. usage: make_toy_dataset PATH N CLASSES CHANNELS SIZE [nan]
// ("nan" puts a NaN in every sample, to test how training handles non-finite losses).
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <cstdio>
#include <cstdlib>

#include "io/latent_dataset.hpp"

int main(int argc, char** argv) {
  if (argc != 6 && argc != 7) {
    std::fprintf(stderr, "usage: %s PATH N CLASSES CHANNELS SIZE [nan]\n", argv[0]);
    return 2;
  }
  const int64_t n = std::atoll(argv[2]), classes = std::atoll(argv[3]), c = std::atoll(argv[4]),
                s = std::atoll(argv[5]);
  at::Generator gen = at::detail::createCPUGenerator(7);
  at::Tensor patterns = at::rand({classes, c, s, s}, gen) * 1.6 - 0.8;  // one pattern per class
  at::Tensor labels = at::arange(n, at::kLong) % classes;
  at::Tensor x = (patterns.index_select(0, labels) + 0.05 * at::randn({n, c, s, s}, gen)).clamp(-1, 1);
  if (argc == 7) x.select(3, 0).select(2, 0).fill_(NAN);  // pixel (0, 0) of channel 0
  opendit::io::LatentDatasetInfo info;
  info.num_classes = classes;
  info.scale_factor = 1.0;
  info.space = "pixel";
  info.source = "tests/train/make_toy_dataset.cpp";
  opendit::io::LatentDatasetWriter w(argv[1], {c, s, s}, at::kFloat, info);
  w.append(x, labels);
  w.finalize();
  return 0;
}
