#include "encode/encoders.hpp"

#include <ATen/Context.h>

#include <algorithm>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "core/error.hpp"
#include "io/files.hpp"
#include "io/safetensors.hpp"
#include "models/t5/config.hpp"
#include "models/vae/config.hpp"

namespace opendit::encode {

namespace fs = std::filesystem;

namespace {

// Which of `names` exist in `dir`, for messages.
std::string listing(const fs::path& dir) {
  std::vector<std::string> names;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  if (names.empty()) return "it is empty";
  if (names.size() > 8) names.resize(8), names.push_back("...");
  std::string s = "it holds ";
  for (size_t i = 0; i < names.size(); ++i) s += (i ? ", " : "") + names[i];
  return s;
}

at::ScalarType dtype_of(const std::map<std::string, at::Tensor>& sd) {
  for (const auto& [name, t] : sd)
    if (t.is_floating_point()) return t.scalar_type();
  return at::kFloat;
}

// The tensors of a safetensors file; header_only: meta tensors of the header's shapes and dtypes (validated against
// the file's size as a full read is), for checks that need no data.
std::map<std::string, at::Tensor> read_tensors(const fs::path& file, bool header_only) {
  if (!header_only) return io::load_safetensors(file.string()).tensors;
  std::map<std::string, at::Tensor> sd;
  for (const io::SafetensorsEntry& e : io::read_safetensors_header(file.string()).tensors)
    sd[e.name] = at::empty(e.shape, at::TensorOptions(e.dtype).device(at::kMeta));
  return sd;
}

void check_run_dtype(const at::TensorOptions& options, const char* what) {
  const at::ScalarType dt = options.dtype().toScalarType();
  if (dt != at::kFloat && dt != at::kBFloat16)
    throw Error(cat(what, " runs in float32 or bfloat16 (float16 overflows in T5's feed-forward), not ", dt));
}

}  // namespace

at::ScalarType parse_dtype(const std::string& text, const std::string& flag) {
  if (text == "bf16" || text == "bfloat16") return at::kBFloat16;
  if (text == "fp32" || text == "float32") return at::kFloat;
  throw Error(cat(flag, " \"", text, "\": expected bf16 or fp32"));
}

std::string component_folder(const std::string& path, const std::string& sub, const std::string& what) {
  const fs::path p(path);
  if (!fs::exists(p)) throw Error(cat(what, " ", path, ": no such file or folder"));
  if (!fs::is_directory(p))
    throw Error(cat(what, " ", path, ": expected a folder (config.json and its .safetensors), not a file"));
  if (fs::exists(p / "config.json")) return p.string();
  if (fs::exists(p / sub / "config.json")) return (p / sub).string();
  throw Error(cat(what, " ", path, ": no config.json here or in ", sub, "/ (", listing(p), ")"));
}

LoadedVae load_vae(const std::string& path, const at::TensorOptions& options) {
  check_run_dtype(options, "the VAE");
  LoadedVae out;
  out.folder = component_folder(path, "vae", "VAE");
  const fs::path dir(out.folder);
  out.config_json = io::read_text_file((dir / "config.json").string());
  const models::vae::VaeConfig cfg = models::vae::vae_config_from_json(out.config_json, (dir / "config.json").string());
  const fs::path file = dir / "diffusion_pytorch_model.safetensors";
  if (!fs::exists(file)) {
    if (fs::exists(dir / "diffusion_pytorch_model.bin"))
      throw Error(cat(dir.string(),
                      ": the weights are a pickled .bin; opendit reads safetensors (save them with "
                      "AutoencoderKL.from_pretrained(dir).save_pretrained(out, safe_serialization=True))"));
    throw Error(cat(dir.string(), ": no diffusion_pytorch_model.safetensors (", listing(dir), ")"));
  }
  const std::map<std::string, at::Tensor> sd = read_tensors(file, options.device().is_meta());
  out.file_dtype = dtype_of(sd);
  out.weight_files = {file.string()};
  out.model = std::make_unique<models::vae::AutoencoderKL>(cfg);
  out.model->load(sd, file.string(), options);
  // cuDNN picks each convolution's algorithm by timing them once per shape (a process-wide setting; a VAE runs the
  // same few shapes many times).
  if (options.device().is_cuda()) at::globalContext().setBenchmarkCuDNN(true);
  return out;
}

LoadedT5 load_t5(const std::string& path, const at::TensorOptions& options, bool with_tokenizer) {
  check_run_dtype(options, "the T5 encoder");
  LoadedT5 out;
  out.folder = component_folder(path, "text_encoder", "text encoder");
  const fs::path dir(out.folder);
  out.config_json = io::read_text_file((dir / "config.json").string());
  const models::t5::T5Config cfg = models::t5::t5_config_from_json(out.config_json, (dir / "config.json").string());
  // One file, or shards listed by the index (name -> shard file). Each shard is converted to the run's device and
  // dtype as it is read, so that a 19 GB float32 XXL never sits whole in host memory next to its copy.
  std::map<std::string, at::Tensor> sd;
  std::string origin;
  auto take = [&](const fs::path& file, const std::set<std::string>* wanted) {
    std::map<std::string, at::Tensor> tensors = read_tensors(file, options.device().is_meta());
    out.file_dtype = dtype_of(tensors);
    out.weight_files.push_back(file.string());
    for (auto& [name, t] : tensors) {
      if (wanted && !wanted->count(name)) continue;
      const bool used = name.rfind("decoder.", 0) != 0 && name != "lm_head.weight";
      sd[name] = used && t.is_floating_point() ? t.to(options) : t;
    }
  };
  const fs::path single = dir / "model.safetensors", index = dir / "model.safetensors.index.json";
  if (fs::exists(single)) {
    origin = single.string();
    take(single, nullptr);
  } else if (fs::exists(index)) {
    origin = index.string();
    const nlohmann::json j = nlohmann::json::parse(io::read_text_file(index.string()), nullptr, false);
    if (j.is_discarded() || !j.contains("weight_map") || !j["weight_map"].is_object())
      throw Error(cat(index.string(), ": not a safetensors index (a JSON object with a weight_map)"));
    std::map<std::string, std::set<std::string>> shards;  // file -> names
    for (const auto& [name, file] : j["weight_map"].items()) shards[file.get<std::string>()].insert(name);
    for (const auto& [file, names] : shards) {
      if (!fs::exists(dir / file)) throw Error(cat(index.string(), " lists the shard ", file, ", which is missing"));
      take(dir / file, &names);
      for (const std::string& n : names)
        if (!sd.count(n)) throw Error(cat(index.string(), ": ", n, " is listed in ", file, " but not stored there"));
    }
  } else if (fs::exists(dir / "pytorch_model.bin") || fs::exists(dir / "pytorch_model.bin.index.json")) {
    throw Error(cat(dir.string(),
                    ": the weights are pickled .bin files; opendit reads safetensors (save them with "
                    "T5EncoderModel.from_pretrained(dir).save_pretrained(out, safe_serialization=True))"));
  } else {
    throw Error(cat(dir.string(), ": no model.safetensors or model.safetensors.index.json (", listing(dir), ")"));
  }
  for (const auto& [name, t] : sd)
    if (name.rfind("decoder.", 0) == 0 || name == "lm_head.weight") out.skipped.push_back(name);
  out.model = std::make_unique<models::t5::T5Encoder>(cfg);
  out.model->load(sd, origin, options);
  if (with_tokenizer) {
    // The tokenizer's place: beside the weights, or the pipeline's tokenizer/ folder next to text_encoder/.
    std::string spiece;
    try {
      spiece = models::t5::find_spiece_model(out.folder);
    } catch (const Error&) {
      if (dir.has_parent_path() && dir.filename() == "text_encoder" && fs::exists(dir.parent_path() / "tokenizer"))
        spiece = models::t5::find_spiece_model((dir.parent_path() / "tokenizer").string());
      else
        throw;
    }
    out.tokenizer = std::make_unique<models::t5::Tokenizer>(spiece);
  }
  return out;
}

}  // namespace opendit::encode
