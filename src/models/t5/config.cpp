#include "models/t5/config.hpp"

#include <nlohmann/json.hpp>

#include "core/error.hpp"
#include "core/strings.hpp"

namespace opendit::models::t5 {

T5Config t5_xxl_config() { return T5Config{}; }

int64_t T5Config::num_parameters() const {
  const int64_t attn = 4 * d_model * inner(), ff = (gated ? 3 : 2) * d_model * d_ff;
  return vocab_size * d_model + num_layers * (attn + ff + 2 * d_model) + relative_attention_num_buckets * num_heads +
         d_model;
}

double T5Config::flops(int64_t tokens) const {
  const double t = static_cast<double>(tokens);
  const double linear = 4.0 * d_model * inner() + (gated ? 3.0 : 2.0) * d_model * d_ff;
  return 2.0 * num_layers * (t * linear + 2.0 * t * t * inner());
}

void T5Config::validate(const std::string& origin) const {
  if (vocab_size < 1 || d_model < 1 || d_kv < 1 || d_ff < 1 || num_layers < 1 || num_heads < 1)
    throw Error(cat(origin, ": vocab_size, d_model, d_kv, d_ff, num_layers and num_heads must be >= 1"));
  if (relative_attention_num_buckets < 2 || relative_attention_max_distance < 2)
    throw Error(cat(origin, ": relative_attention_num_buckets and relative_attention_max_distance must be >= 2"));
  if (!(layer_norm_epsilon > 0)) throw Error(cat(origin, ": layer_norm_epsilon must be > 0"));
}

std::string T5Config::to_json() const {
  nlohmann::ordered_json j = {{"architectures", {"T5EncoderModel"}},
                              {"model_type", "t5"},
                              {"vocab_size", vocab_size},
                              {"d_model", d_model},
                              {"d_kv", d_kv},
                              {"d_ff", d_ff},
                              {"num_layers", num_layers},
                              {"num_heads", num_heads},
                              {"relative_attention_num_buckets", relative_attention_num_buckets},
                              {"relative_attention_max_distance", relative_attention_max_distance},
                              {"feed_forward_proj", gated ? "gated-gelu" : "relu"},
                              {"layer_norm_epsilon", layer_norm_epsilon}};
  return j.dump(2);
}

std::string T5Config::describe() const {
  return cat("T5 encoder: ", num_layers, " layers, d_model ", d_model, ", ", num_heads, " heads of ", d_kv, ", d_ff ",
             d_ff, " (", gated ? "gated GELU" : "ReLU", "), vocabulary ", vocab_size);
}

T5Config t5_config_from_json(const std::string& text, const std::string& origin) {
  const nlohmann::json j = nlohmann::json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object()) throw Error(cat(origin, ": not a JSON object"));
  const std::string type = j.value("model_type", std::string());
  if (type != "t5") {
    const std::string what = !type.empty() ? cat("a ", type, " model's config")
                             : j.contains("_class_name")
                                 ? cat("a diffusers ", j["_class_name"].get<std::string>(), " config")
                                 : std::string("a config without model_type");
    throw Error(cat(origin, ": ", what, "; the text encoder must be a T5 (model_type \"t5\")"));
  }
  T5Config c;
  try {
    c.vocab_size = j.value("vocab_size", c.vocab_size);
    c.d_model = j.value("d_model", int64_t{512});
    c.d_kv = j.value("d_kv", int64_t{64});
    c.d_ff = j.value("d_ff", int64_t{2048});
    c.num_layers = j.value("num_layers", int64_t{6});
    c.num_heads = j.value("num_heads", int64_t{8});
    c.relative_attention_num_buckets = j.value("relative_attention_num_buckets", int64_t{32});
    c.relative_attention_max_distance = j.value("relative_attention_max_distance", int64_t{128});
    c.layer_norm_epsilon = j.value("layer_norm_epsilon", 1e-6);
    const std::string ff = j.value("feed_forward_proj", std::string("relu"));
    if (ff == "gated-gelu") {
      c.gated = true;
    } else if (ff == "relu") {
      c.gated = false;
    } else {
      throw Error(cat(origin, ": feed_forward_proj \"", ff, "\" (opendit's T5 has gated-gelu, as T5 v1.1, and relu)"));
    }
  } catch (const nlohmann::json::exception& e) {
    throw Error(cat(origin, ": ", e.what()));
  }
  c.validate(origin);
  return c;
}

}  // namespace opendit::models::t5
