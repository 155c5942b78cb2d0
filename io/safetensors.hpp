// Reading and writing the safetensors format (https://github.com/huggingface/safetensors), the format of
// published DiT / VAE / text-encoder weights and of our own checkpoints.
//
// Layout of a file:
//   [8 bytes]  N, little-endian uint64: length of the header
//   [N bytes]  UTF-8 JSON object: name -> {"dtype": "F32", "shape": [d0, d1, ...], "data_offsets": [begin, end]},
//              plus an optional "__metadata__": {string: string}
//   [rest]     the data buffer; offsets are relative to its start; tensors are C-contiguous little-endian.
//
// load_safetensors validates the whole header against the file size before it reads any data, so a malformed
// or truncated file gives one opendit::Error line (path, tensor, expected vs found), never a crash.
#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace opendit::io {

struct SafetensorsFile {
  std::map<std::string, at::Tensor> tensors;    // CPU, contiguous, owning their memory
  std::map<std::string, std::string> metadata;  // the "__metadata__" object
};

// One tensor of a header, validated: [begin, end) lies inside the data buffer (offsets relative to its start) and
// holds exactly numel * itemsize bytes; no two tensors share bytes.
struct SafetensorsEntry {
  std::string name;
  at::ScalarType dtype;
  std::vector<std::int64_t> shape;
  std::uint64_t begin, end;
};

struct SafetensorsHeader {
  std::vector<SafetensorsEntry> tensors;        // by offset
  std::map<std::string, std::string> metadata;  // the "__metadata__" object
  std::uint64_t file_bytes = 0, data_bytes = 0;  // the file, and its data buffer (after the header)
};

// Supported dtypes: F64 F32 F16 BF16 I64 I32 I16 I8 U8 BOOL.
SafetensorsFile load_safetensors(const std::string& path);
// The header alone, validated as load_safetensors validates it (no tensor data is read).
SafetensorsHeader read_safetensors_header(const std::string& path);

// Tensors may live on any device and be non-contiguous; they are copied to contiguous CPU memory first.
// Written sorted by name, header padded with spaces to a multiple of 8 bytes, atomically
// (path + ".tmp", fsync, rename), so a crash never leaves a half-written file under `path`.
void save_safetensors(const std::string& path, const std::map<std::string, at::Tensor>& tensors,
                      const std::map<std::string, std::string>& metadata = {});

}  // namespace opendit::io
