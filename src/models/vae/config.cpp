#include "models/vae/config.hpp"

#include <nlohmann/json.hpp>

#include "core/error.hpp"
#include "core/strings.hpp"

namespace opendit::models::vae {

VaeConfig sd_vae_config() { return VaeConfig{}; }

void VaeConfig::validate(const std::string& origin) const {
  auto bad = [&](const std::string& what) { throw Error(cat(origin, ": ", what)); };
  if (in_channels < 1 || out_channels < 1 || latent_channels < 1) bad("channel counts must be >= 1");
  if (block_out_channels.empty() || block_out_channels.size() > 8) bad("block_out_channels must list 1 to 8 widths");
  if (layers_per_block < 1) bad("layers_per_block must be >= 1");
  if (norm_num_groups < 1) bad("norm_num_groups must be >= 1");
  for (int64_t c : block_out_channels)
    if (c < 1 || c % norm_num_groups != 0)
      bad(cat("block_out_channels ", shape_str(block_out_channels),
              ": every width must be a multiple of norm_num_groups ", norm_num_groups));
  if (!(scaling_factor > 0)) bad("scaling_factor must be > 0");
}

std::string VaeConfig::to_json() const {
  nlohmann::ordered_json j;
  j["_class_name"] = "AutoencoderKL";
  j["in_channels"] = in_channels;
  j["out_channels"] = out_channels;
  j["down_block_types"] = std::vector<std::string>(block_out_channels.size(), "DownEncoderBlock2D");
  j["up_block_types"] = std::vector<std::string>(block_out_channels.size(), "UpDecoderBlock2D");
  j["block_out_channels"] = block_out_channels;
  j["layers_per_block"] = layers_per_block;
  j["act_fn"] = "silu";
  j["latent_channels"] = latent_channels;
  j["norm_num_groups"] = norm_num_groups;
  j["sample_size"] = sample_size;
  j["scaling_factor"] = scaling_factor;
  if (shift_factor != 0) j["shift_factor"] = shift_factor;
  j["use_quant_conv"] = use_quant_conv;
  j["use_post_quant_conv"] = use_post_quant_conv;
  j["mid_block_add_attention"] = mid_block_add_attention;
  return j.dump(2);
}

std::string VaeConfig::describe() const {
  std::vector<std::string> widths;
  for (int64_t c : block_out_channels) widths.push_back(std::to_string(c));
  return cat("AutoencoderKL: ", latent_channels, " latent channels, factor ", factor(), ", widths ", join(widths, "-"),
             ", ", layers_per_block, " resnets per block, scaling ", shortest(scaling_factor));
}

VaeConfig vae_config_from_json(const std::string& text, const std::string& origin) {
  const nlohmann::json j = nlohmann::json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object()) throw Error(cat(origin, ": not a JSON object"));
  const std::string cls = j.value("_class_name", std::string());
  if (cls.empty() && (j.contains("d_model") || j.contains("model_type")))
    throw Error(cat(origin, ": a ", j.value("model_type", std::string("transformers")),
                    " model's config (d_model, model_type), not a VAE's (diffusers AutoencoderKL)"));
  if (!cls.empty() && cls != "AutoencoderKL")
    throw Error(cat(origin, ": a ", cls, " config; opendit reads diffusers AutoencoderKL (the SD VAE)"));
  VaeConfig c;
  try {
    c.in_channels = j.value("in_channels", c.in_channels);
    c.out_channels = j.value("out_channels", c.out_channels);
    c.latent_channels = j.value("latent_channels", c.latent_channels);
    c.block_out_channels = j.value("block_out_channels", std::vector<int64_t>{64});  // diffusers' default
    c.layers_per_block = j.value("layers_per_block", int64_t{1});
    c.norm_num_groups = j.value("norm_num_groups", c.norm_num_groups);
    c.sample_size = j.value("sample_size", int64_t{32});
    c.scaling_factor = j.value("scaling_factor", c.scaling_factor);
    if (j.contains("shift_factor") && !j["shift_factor"].is_null()) c.shift_factor = j["shift_factor"].get<double>();
    c.use_quant_conv = j.value("use_quant_conv", true);
    c.use_post_quant_conv = j.value("use_post_quant_conv", true);
    c.mid_block_add_attention = j.value("mid_block_add_attention", true);
    const std::string act = j.value("act_fn", std::string("silu"));
    if (act != "silu") throw Error(cat(origin, ": act_fn \"", act, "\" (opendit's AutoencoderKL has SiLU only)"));
    for (const char* key : {"down_block_types", "up_block_types"}) {
      if (!j.contains(key)) continue;
      const auto types = j[key].get<std::vector<std::string>>();
      const std::string want = key[0] == 'd' ? "DownEncoderBlock2D" : "UpDecoderBlock2D";
      for (const std::string& t : types)
        if (t != want) throw Error(cat(origin, ": ", key, " has \"", t, "\" (only ", want, " is supported)"));
      if (types.size() != c.block_out_channels.size())
        throw Error(cat(origin, ": ", key, " lists ", types.size(), " blocks, block_out_channels ",
                        c.block_out_channels.size()));
    }
    for (const char* key : {"latents_mean", "latents_std"})
      if (j.contains(key) && !j[key].is_null())
        throw Error(cat(origin, ": ", key, " is set (per-channel latent statistics are not supported)"));
  } catch (const nlohmann::json::exception& e) {
    throw Error(cat(origin, ": ", e.what()));
  }
  c.validate(origin);
  return c;
}

}  // namespace opendit::models::vae
