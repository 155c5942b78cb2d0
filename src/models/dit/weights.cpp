#include "models/dit/weights.hpp"

#include "core/error.hpp"

namespace opendit::models::dit {

namespace {

const std::string kEmb = "transformer_blocks.0.norm1.emb.";

// Per-block renames between official (first) and diffusers (second) names; qkv is split into to_q/to_k/to_v.
const std::pair<const char*, const char*> kBlockRenames[] = {
    {"adaLN_modulation.1", "norm1.linear"},
    {"attn.proj", "attn1.to_out.0"},
    {"mlp.fc1", "ff.net.0.proj"},
    {"mlp.fc2", "ff.net.2"},
};
const std::pair<const char*, const char*> kGlobalRenames[] = {
    {"x_embedder.proj", "pos_embed.proj"},
    {"t_embedder.mlp.0", "norm1.emb.timestep_embedder.linear_1"},  // in every block (block 0 is read)
    {"t_embedder.mlp.2", "norm1.emb.timestep_embedder.linear_2"},
    {"final_layer.adaLN_modulation.1", "proj_out_1"},
    {"final_layer.linear", "proj_out_2"},
};

int count_blocks(const StateDict& sd, const std::string& prefix, const std::string& probe) {
  int n = 0;
  while (sd.count(prefix + std::to_string(n) + "." + probe)) ++n;
  return n;
}

const at::Tensor& need(const StateDict& sd, const std::string& key, const std::string& origin) {
  auto it = sd.find(key);
  if (it == sd.end()) throw Error(cat(origin, ": diffusers DiT weights lack '", key, "'"));
  return it->second;
}

}  // namespace

std::string why_not_dit(const StateDict& sd) {
  if (auto it = sd.find("x_embedder.proj.weight"); it != sd.end() && it->second.dim() != 4)
    return cat("not DiT weights (x_embedder.proj.weight is ", it->second.dim(), "-D; DiT's patch embedding is a "
               "Conv2d)");
  if (sd.count("adaln_single.linear.weight"))
    return "not DiT weights (they have adaln_single: the PixArt / Latte layout)";
  if (sd.count("x_embedder.proj.weight") || sd.count("pos_embed.proj.weight")) return "";
  return "not DiT weights (neither 'x_embedder.proj.weight' of the official layout nor 'pos_embed.proj.weight' of "
         "diffusers' DiTTransformer2DModel)";
}

WeightLayout detect_layout(const StateDict& sd, const std::string& origin) {
  if (const std::string why = why_not_dit(sd); !why.empty()) throw Error(cat(origin, ": ", why));
  return sd.count("x_embedder.proj.weight") ? WeightLayout::Official : WeightLayout::Diffusers;
}

StateDict diffusers_to_official(const StateDict& sd, const std::string& origin) {
  StateDict out;
  const int depth = count_blocks(sd, "transformer_blocks.", "attn1.to_q.weight");
  for (const char* suffix : {".weight", ".bias"}) {
    for (const auto& [ours, theirs] : kGlobalRenames) {
      std::string src = std::string(theirs).rfind("norm1.", 0) == 0 ? "transformer_blocks.0." + std::string(theirs)
                                                                      : std::string(theirs);
      out[std::string(ours) + suffix] = need(sd, src + suffix, origin);
    }
    for (int i = 0; i < depth; ++i) {
      std::string b = "blocks." + std::to_string(i) + ".", d = "transformer_blocks." + std::to_string(i) + ".";
      for (const auto& [ours, theirs] : kBlockRenames) out[b + ours + suffix] = need(sd, d + theirs + suffix, origin);
      out[b + "attn.qkv" + suffix] = at::cat({need(sd, d + "attn1.to_q" + suffix, origin),
                                              need(sd, d + "attn1.to_k" + suffix, origin),
                                              need(sd, d + "attn1.to_v" + suffix, origin)},
                                             0);
    }
  }
  out["y_embedder.embedding_table.weight"] = need(sd, kEmb + "class_embedder.embedding_table.weight", origin);
  // Every block's embedder copy must equal block 0's, or the weights are not those of a DiT.
  for (int i = 1; i < depth; ++i) {
    std::string pre = "transformer_blocks." + std::to_string(i) + ".norm1.emb.";
    for (const auto& [key, t] : sd) {
      if (key.rfind(pre, 0) != 0) continue;
      const at::Tensor first = need(sd, kEmb + key.substr(pre.size()), origin);
      if (!at::equal(first, t))
        throw Error(cat(origin, ": ", key, " differs from block 0's copy; official DiT shares one timestep/label "
                                       "embedder, so these weights cannot be represented as a DiT"));
    }
  }
  if (auto it = sd.find("pos_embed.pos_embed"); it != sd.end()) out["pos_embed"] = it->second;
  return out;
}

StateDict official_to_diffusers(const StateDict& sd) {
  StateDict out;
  const int depth = count_blocks(sd, "blocks.", "attn.qkv.weight");
  auto get = [&](const std::string& k) {
    auto it = sd.find(k);
    if (it == sd.end()) throw Error(cat("DiT weights lack '", k, "'"));
    return it->second;
  };
  for (const char* suffix : {".weight", ".bias"}) {
    for (int i = 0; i < depth; ++i) {
      std::string b = "blocks." + std::to_string(i) + ".", d = "transformer_blocks." + std::to_string(i) + ".";
      for (const auto& [ours, theirs] : kBlockRenames) out[d + theirs + suffix] = get(b + ours + suffix);
      auto qkv = get(b + "attn.qkv" + suffix).chunk(3, 0);
      out[d + "attn1.to_q" + suffix] = qkv[0].contiguous();
      out[d + "attn1.to_k" + suffix] = qkv[1].contiguous();
      out[d + "attn1.to_v" + suffix] = qkv[2].contiguous();
      for (const auto& [ours, theirs] : kGlobalRenames)
        if (std::string(theirs).rfind("norm1.", 0) == 0) out[d + theirs + suffix] = get(std::string(ours) + suffix);
      out[d + "norm1.emb.class_embedder.embedding_table.weight"] = get("y_embedder.embedding_table.weight");
    }
    for (const auto& [ours, theirs] : kGlobalRenames)
      if (std::string(theirs).rfind("norm1.", 0) != 0) out[std::string(theirs) + suffix] = get(std::string(ours) + suffix);
  }
  out["pos_embed.pos_embed"] = get("pos_embed");
  return out;
}

StateDict to_official(const StateDict& sd, const std::string& origin) {
  return detect_layout(sd, origin) == WeightLayout::Diffusers ? diffusers_to_official(sd, origin) : sd;
}

}  // namespace opendit::models::dit
