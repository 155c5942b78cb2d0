// Shared by the two halves of the latent dataset reader (io/latent_dataset.cpp: version 1 and the common parts;
// io/latent_dataset_v2.cpp: version 2). Not for other code.
#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#include <string>
#include <vector>

#include "io/h5.hpp"

namespace opendit::io {

// int64 [count] labels in [0, num_classes), read whole and checked against their crc32.
at::Tensor read_labels(const H5Dataset& labels, std::int64_t count, std::int64_t num_classes);
// Version 2: the datasets `opendit check` verifies (all of them), and their bytes.
std::vector<std::string> v2_dataset_names(const H5File& file);
std::int64_t v2_bytes(const H5File& file);

}  // namespace opendit::io
