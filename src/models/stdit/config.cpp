#include "models/stdit/config.hpp"

#include <cmath>
#include <nlohmann/json.hpp>
#include <sstream>

#include "config/deck.hpp"
#include "core/error.hpp"
#include "core/strings.hpp"

namespace opendit::models::stdit {

namespace {
struct Preset {
  const char* name;
  int depth, hidden, heads;
};
// Open-Sora v1.0 publishes XL/2; S/2 and B/2 are DiT's smaller widths with the same block, for experiments.
constexpr Preset kPresets[] = {{"STDiT-XL/2", 28, 1152, 16}, {"STDiT-B/2", 12, 768, 12}, {"STDiT-S/2", 12, 384, 6}};
}  // namespace

const std::vector<std::string>& preset_names() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> n;
    for (const auto& p : kPresets) n.push_back(p.name);
    return n;
  }();
  return names;
}

STDiTConfig preset(const std::string& name) {
  for (const auto& p : kPresets)
    if (name == p.name) {
      STDiTConfig c;
      c.depth = p.depth, c.hidden_size = p.hidden, c.num_heads = p.heads;
      return c;
    }
  throw CollectiveError(cat("model.preset = \"", name, "\" is not an STDiT preset (model.type = \"stdit\"; its presets: ",
                            join(preset_names(), ", "), ")"));
}

int64_t STDiTConfig::num_parameters() const {
  const int64_t D = hidden_size, M = mlp_hidden(), P = patch_volume(), Cc = caption_channels;
  int64_t n = int64_t(s_tokens()) * D + int64_t(t_tokens()) * D;  // pos_embed, pos_embed_temporal
  n += D * in_channels * P + D;                                   // x_embedder
  n += 256 * D + D + D * D + D;                                   // t_embedder
  n += 6 * D * D + 6 * D;                                         // t_block
  n += int64_t(text_length) * Cc + Cc * D + D + D * D + D;        // y_embedding, y_proj
  const int64_t block = 6 * D                                     // scale_shift_table
                        + 2 * (3 * D * D + 3 * D + D * D + D)     // attn, attn_temp
                        + (D * D + D) + (2 * D * D + 2 * D) + (D * D + D)  // cross_attn q, kv, proj
                        + (M * D + M) + (D * M + D);              // mlp
  n += depth * block;
  n += 2 * D + P * out_channels() * D + P * out_channels();       // final layer
  return n;
}

double STDiTConfig::forward_flops(int64_t T, int64_t S, int64_t L) const {
  const double D = hidden_size, M = mlp_hidden(), P = patch_volume(), tok = double(T) * double(S);
  double macs = tok * D * in_channels * P;                        // patch embedding
  macs += 256 * D + D * D + 6 * D * D;                            // timestep MLP, t_block
  macs += double(L) * (caption_channels * D + D * D);             // caption MLP
  const double block = tok * (8 * D * D + 2 * D * D + 2 * D * M)  // self-attn x2 (qkv, proj), cross q/proj, mlp
                       + double(L) * 2 * D * D                    // cross kv on the caption
                       + tok * 2 * D * double(S + T + L);         // scores and values: spatial, temporal, cross
  macs += depth * block + tok * D * P * out_channels();
  return 2 * macs;
}

void STDiTConfig::validate() const {
  auto need = [](bool ok, const std::string& msg) {
    if (!ok) throw CollectiveError("model: " + msg);
  };
  need(depth >= 1, cat("model.depth must be >= 1, found ", depth));
  need(hidden_size >= 1 && num_heads >= 1 && hidden_size % num_heads == 0,
       cat("model.hidden_size (", hidden_size, ") must be a multiple of model.num_heads (", num_heads, ")"));
  need(hidden_size % 4 == 0, cat("model.hidden_size must be a multiple of 4 for the sin-cos position tables, found ",
                                 hidden_size));
  need(patch_h >= 1 && patch_w >= 1 && height >= 1 && width >= 1 && height % patch_h == 0 && width % patch_w == 0,
       cat("the latent ", height, "x", width, " (model.input_size, model.input_width) must be a multiple of "
           "model.patch_size (", patch_h, ")"));
  need(patch_t >= 1 && frames >= 1 && frames % patch_t == 0,
       cat("model.num_frames (", frames, ") must be a positive multiple of model.temporal_patch (", patch_t, ")"));
  need(in_channels >= 1, cat("model.in_channels must be >= 1, found ", in_channels));
  need(caption_channels >= 1 && text_length >= 1,
       cat("model.caption_channels and model.text_length must be >= 1, found ", caption_channels, " and ",
           text_length));
  need(space_scale > 0 && time_scale > 0,
       cat("model.space_scale and model.time_scale must be > 0, found ", space_scale, " and ", time_scale));
}

std::string STDiTConfig::describe() const {
  std::ostringstream os;
  os << "STDiT depth " << depth << ", hidden " << hidden_size << ", heads " << num_heads << ", patch " << patch_t
     << "x" << patch_h << "x" << patch_w << ", latent " << in_channels << "x" << frames << "x" << height << "x"
     << width << " (" << t_tokens() << " x " << s_tokens() << " tokens), captions " << text_length << " x "
     << caption_channels << ", learn_sigma " << (learn_sigma ? "on" : "off") << ", " << num_parameters() / 1e6
     << " M parameters, " << forward_flops(t_tokens(), s_tokens(), text_length) / 1e12 << " TFLOP/forward";
  return os.str();
}

std::vector<config::Option> deck_options() {
  using config::Type;
  const double inf = 1e300;
  std::vector<std::string> presets = {"auto", "custom"};
  for (const auto& n : preset_names()) presets.push_back(n);
  // Besides these STDiT reads keys that DiT declares with the same meaning (models/dit/config.cpp): depth,
  // hidden_size, num_heads, patch_size (spatial), in_channels, input_size (latent height), learn_sigma, mlp_ratio,
  // class_dropout_prob. The registry merges the preset choices of both.
  std::vector<config::Option> own = {
      {"model.preset", Type::Choice, std::string("auto"), "Official size preset of the model type.", -inf, inf,
       presets},
      {"model.num_frames", Type::Int, int64_t{16}, "Video models: latent frames T of a sample (16 = Open-Sora "
       "v1.0's 16-frame clips; the image VAE keeps T).", 1, 1 << 16, {}},
      {"model.input_width", Type::Int, int64_t{0}, "Video models: latent width; 0 = input_size (square).", 0, 1 << 14,
       {}},
      {"model.temporal_patch", Type::Int, int64_t{1}, "Video models: frames per patch (Open-Sora v1.0: 1).", 1, 64, {}},
      {"model.caption_channels", Type::Int, int64_t{4096}, "Video models: caption embedding width (T5-XXL: 4096).",
       1, 1 << 16, {}},
      {"model.text_length", Type::Int, int64_t{120}, "Video models: caption tokens (T5's max_length; the null "
       "caption has this many).", 1, 1 << 16, {}},
      {"model.space_scale", Type::Float, 0.0, "Video models: spatial position table positions / scale; 0 = "
       "input_size / 64 (Open-Sora: 0.5 at 256^2, 1.0 at 512^2).", 0, 1e6, {}},
      {"model.time_scale", Type::Float, 1.0, "Video models: temporal position table positions / scale.", 1e-6, 1e6,
       {}},
  };
  return own;
}

STDiTConfig config_from(const config::Deck& deck) {
  std::string name = deck.get_string("model.preset");
  if (name == "auto") name = "STDiT-XL/2";
  STDiTConfig c = name == "custom" ? STDiTConfig{} : preset(name);
  auto override_int = [&](const char* key, int& field) {
    const int64_t v = deck.get_int(key);
    if (v > 0) field = static_cast<int>(v);
    else if (name == "custom") throw CollectiveError(cat(key, " must be set when model.preset = \"custom\""));
  };
  override_int("model.depth", c.depth);
  override_int("model.hidden_size", c.hidden_size);
  override_int("model.num_heads", c.num_heads);
  if (const int64_t p = deck.get_int("model.patch_size"); p > 0) c.patch_h = c.patch_w = static_cast<int>(p);
  c.patch_t = static_cast<int>(deck.get_int("model.temporal_patch"));
  c.in_channels = static_cast<int>(deck.get_int("model.in_channels"));
  c.height = static_cast<int>(deck.get_int("model.input_size"));
  const int64_t w = deck.get_int("model.input_width");
  c.width = w > 0 ? static_cast<int>(w) : c.height;
  c.frames = static_cast<int>(deck.get_int("model.num_frames"));
  c.caption_channels = static_cast<int>(deck.get_int("model.caption_channels"));
  c.text_length = static_cast<int>(deck.get_int("model.text_length"));
  c.learn_sigma = deck.get_bool("model.learn_sigma");
  c.mlp_ratio = deck.get_float("model.mlp_ratio");
  const double s = deck.get_float("model.space_scale");
  c.space_scale = s > 0 ? s : c.height / 64.0;
  c.time_scale = deck.get_float("model.time_scale");
  c.class_dropout_prob = deck.get_float("model.class_dropout_prob");
  c.validate();
  return c;
}

std::string config_to_json(const STDiTConfig& c) {
  nlohmann::ordered_json j = {
      {"type", "stdit"},
      {"depth", c.depth},
      {"hidden_size", c.hidden_size},
      {"num_heads", c.num_heads},
      {"patch_size", {c.patch_t, c.patch_h, c.patch_w}},
      {"in_channels", c.in_channels},
      {"input_size", {c.frames, c.height, c.width}},
      {"caption_channels", c.caption_channels},
      {"model_max_length", c.text_length},
      {"mlp_ratio", c.mlp_ratio},
      {"pred_sigma", c.learn_sigma},
      {"space_scale", c.space_scale},
      {"time_scale", c.time_scale},
  };
  return j.dump();
}

STDiTConfig config_from_json(const std::string& text) {
  const nlohmann::json j = nlohmann::json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object()) throw Error(cat("not an STDiT configuration: ", text));
  STDiTConfig c;
  try {
    c.depth = j.at("depth"), c.hidden_size = j.at("hidden_size"), c.num_heads = j.at("num_heads");
    const auto& p = j.at("patch_size");
    const auto& in = j.at("input_size");
    c.patch_t = p.at(0), c.patch_h = p.at(1), c.patch_w = p.at(2);
    c.frames = in.at(0), c.height = in.at(1), c.width = in.at(2);
    c.in_channels = j.at("in_channels"), c.caption_channels = j.at("caption_channels");
    c.text_length = j.at("model_max_length"), c.mlp_ratio = j.at("mlp_ratio"), c.learn_sigma = j.at("pred_sigma");
    c.space_scale = j.at("space_scale"), c.time_scale = j.at("time_scale");
  } catch (const nlohmann::json::exception& e) {
    throw Error(cat("STDiT configuration ", text, ": ", e.what()));
  }
  try {
    c.validate();
  } catch (const CollectiveError& e) {
    throw Error(cat("STDiT configuration ", text, ": ", e.what()));
  }
  return c;
}

STDiTConfig infer_config(const StateDict& sd) {
  STDiTConfig c;
  c.num_heads = 0, c.depth = 0, c.frames = 0, c.height = 0, c.width = 0;
  auto get = [&](const std::string& k) -> const at::Tensor* {
    auto it = sd.find(k);
    return it == sd.end() ? nullptr : &it->second;
  };
  if (auto w = get("x_embedder.proj.weight"); w && w->dim() == 5) {
    c.hidden_size = w->size(0), c.in_channels = w->size(1);
    c.patch_t = w->size(2), c.patch_h = w->size(3), c.patch_w = w->size(4);
  }
  while (get("blocks." + std::to_string(c.depth) + ".attn_temp.qkv.weight")) ++c.depth;
  if (auto y = get("y_embedder.y_embedding"); y && y->dim() == 2)
    c.text_length = y->size(0), c.caption_channels = y->size(1);
  if (auto f = get("final_layer.linear.weight"); f && f->dim() == 2)
    c.learn_sigma = f->size(0) == 2 * int64_t(c.patch_volume()) * c.in_channels;
  if (auto fc1 = get("blocks.0.mlp.fc1.weight"); fc1 && fc1->dim() == 2 && c.hidden_size > 0)
    c.mlp_ratio = double(fc1->size(0)) / c.hidden_size;
  if (auto pe = get("pos_embed_temporal"); pe && pe->dim() == 3) c.frames = pe->size(1) * c.patch_t;
  if (auto pe = get("pos_embed"); pe && pe->dim() == 3) {  // a square grid is all a table of S rows tells
    const int g = static_cast<int>(std::lround(std::sqrt(double(pe->size(1)))));
    if (int64_t(g) * g == pe->size(1)) c.height = g * c.patch_h, c.width = g * c.patch_w;
  }
  for (const auto& p : kPresets)
    if (p.hidden == c.hidden_size) c.num_heads = p.heads;
  return c;
}

std::string closest_preset_text(const StateDict& sd) {
  const STDiTConfig c = infer_config(sd);
  std::string what = cat("depth ", c.depth, ", hidden ", c.hidden_size, ", patch ", c.patch_t, "x", c.patch_h, "x",
                         c.patch_w, ", ", c.in_channels, " channels, captions ", c.text_length, " x ",
                         c.caption_channels, ", learn_sigma ", c.learn_sigma ? "on" : "off");
  for (const auto& p : kPresets)
    if (p.depth == c.depth && p.hidden == c.hidden_size) return cat("The weights look like ", p.name, " (", what, ").");
  return cat("The weights look like a custom STDiT: ", what, ".");
}

}  // namespace opendit::models::stdit
