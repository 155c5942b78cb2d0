// The model interface: what the trainer, the sampler, the benchmarks and `opendit convert` know of a model.
// A model is a set of named tensors (official state-dict names, so published weights map 1:1) and a forward pass
// x, t, condition -> the diffusion network's output. Models know nothing of MPI, the optimizer or files: weights
// come in and go out as state dicts, and parallelism reaches them, when it does, as a setting of their layers.
// Each model type registers once in models/registry.cpp.
#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "models/layers/seq_parallel.hpp"

namespace opendit::models {

using StateDict = std::map<std::string, at::Tensor>;

// What a batch of N samples is conditioned on: class labels (class-conditional DiT) or caption embeddings with their
// mask (text-to-video models). Members a model does not use stay undefined.
struct Condition {
  at::Tensor labels;     // [N] int64 in [0, num_classes]; num_classes is the null class
  at::Tensor text;       // [N, L, C] float: caption token embeddings
  at::Tensor text_mask;  // [N, L] bool or uint8: true at valid tokens

  int64_t batch() const;
  // Shapes and dtypes of the members that are defined (one batch, int64 labels, floating text, a mask per token);
  // throws opendit::Error starting with `what`.
  void check(const std::string& what) const;
  Condition to(at::Device device) const;
  Condition rows(int64_t start, int64_t count) const;            // samples [start, start + count)
  static Condition cat(const Condition& a, const Condition& b);  // a's samples, then b's
};

enum class ConditionKind { Labels, Text };

// The conditioning a model takes, to check a dataset or a sampling request against it.
struct ConditionSpec {
  ConditionKind kind = ConditionKind::Labels;
  int64_t num_classes = 0;                // Labels: classes, the null class not counted
  int64_t text_length = 0, text_dim = 0;  // Text: tokens L and width C
  double dropout = 0;                     // training: probability of the null condition (classifier-free guidance)
  // The unconditional branch of guidance is the embedding of a negative prompt that the sampler makes (Latte's
  // pipeline); the model has no null condition of its own.
  bool null_is_text = false;
};

// Trainable: optimised. Buffer: frozen, part of every state dict and required in weights (STDiT's null caption).
// Recomputed: frozen and computed from the config (position tables); weights may omit it.
enum class ParamKind { Trainable, Buffer, Recomputed };

class Model;
// parallel.sp_mode for `model`: "auto" (dsp when the model takes it, else ulysses) or a mode by name; an unknown
// name or a mode the model cannot run is one opendit::Error.
layers::SpMode resolve_sp_mode(const std::string& name, const Model& model);

// Random conditions of n samples for benchmarks: labels in [0, num_classes), or captions [n, L, C] ~ N(0, 1) with
// every token valid (the most work a caption can cost).
Condition random_condition(const ConditionSpec& spec, int64_t n, at::Generator gen);

struct Param {
  std::string name;    // official state-dict key
  at::Tensor* tensor;  // the model's own slot (the trainer re-points it at a view of its flat buffer)
  bool trainable;      // false: frozen (a buffer or a recomputed table), still part of state dicts
  bool recomputed;     // frozen and recomputed from the config: may be absent from weights
};

class Model {
 public:
  virtual ~Model() = default;
  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;

  // ---- identity -------------------------------------------------------------------------------------------------
  virtual std::string type() const = 0;         // its registry name: model.type in decks
  virtual std::string describe() const = 0;     // one line: sizes, parameters, FLOPs
  virtual std::string config_json() const = 0;  // the hyper-parameters as JSON: checkpoints record it, resume compares

  // ---- shapes and cost ------------------------------------------------------------------------------------------
  virtual std::vector<int64_t> sample_shape() const = 0;  // one input sample, [C, H, W] (video: [C, T, H, W])
  virtual int64_t out_channels() const = 0;               // C (eps), or 2 C (eps and the learned variance)
  bool learn_sigma() const { return out_channels() == 2 * sample_shape().front(); }
  // Multiply-adds x 2 of one sample's forward pass at the given sample shape.
  virtual double forward_flops(const std::vector<int64_t>& sample_shape) const = 0;
  int64_t num_parameters() const;  // every tensor of parameters(), frozen ones included

  // ---- conditioning ---------------------------------------------------------------------------------------------
  virtual ConditionSpec condition_spec() const = 0;
  // The null condition for each sample of `like` (the unconditional half of guidance, the dropped condition).
  virtual Condition null_condition(const Condition& like) const = 0;
  // Training dropout: the condition with the null one where drop [N] (bool) is true.
  virtual Condition drop_condition(const Condition& cond, const at::Tensor& drop) const;
  // Checks a condition against the model before any work (sampling requests); throws opendit::Error.
  virtual void check_condition(const Condition& cond) const = 0;

  // ---- the network ----------------------------------------------------------------------------------------------
  // x [N, sample_shape...], t [N] float timesteps (fractional allowed), cond of N samples
  // -> [N, out_channels, spatial...]: eps, then (learned sigma) the variance interpolation channels.
  virtual at::Tensor forward(const at::Tensor& x, const at::Tensor& t, const Condition& cond) const = 0;
  // Activation recompute of the first `blocks` blocks in backward (-1: all): memory traded for one more forward.
  virtual void set_recompute_blocks(int blocks) = 0;
  virtual int depth() const = 0;
  // Sequence parallelism over the ranks of sp.comm (every rank of the group calls forward() with the same whole
  // samples and gets the same whole output; each computes 1/P of the tokens). A mode the model has no use for is
  // one opendit::Error (DiT: dsp, which needs a temporal axis).
  void set_sequence_parallel(const layers::SeqParallel& sp);
  const layers::SeqParallel& sequence_parallel() const { return sp_; }
  // Why this model cannot run `mode` ("" when it can).
  virtual std::string sp_mode_problem(layers::SpMode mode) const { return ""; }

  // ---- parameters -----------------------------------------------------------------------------------------------
  const std::vector<Param>& parameters() const { return params_; }  // state-dict order
  StateDict state_dict() const;
  // Copies a state dict in (any dtype/device; converted to the model's). Every name and shape must match and every
  // value be finite; otherwise one opendit::Error lists the first mismatches (and what the weights look like).
  // Recomputed tensors may be absent (some published files omit them).
  void load_state_dict(const StateDict& sd, const std::string& origin);
  // "" when every name and shape of `sd` matches (described models too: no data is touched), else why not.
  std::string mismatch(const StateDict& sd) const;
  void to(const at::TensorOptions& options);  // device and/or dtype of every tensor
  void set_requires_grad(bool on);           // trainable tensors only

  // ---- weight files (the adapter between published layouts and the official names) ---------------------------
  // The layouts it writes besides its own: "opendit" (official names + metadata) and e.g. "diffusers".
  virtual std::vector<std::string> layouts() const { return {"opendit"}; }
  // Weights in any layout this model reads -> official names. Throws opendit::Error naming `origin`.
  virtual StateDict import_weights(const StateDict& sd, const std::string& origin) const { return sd; }
  // Official names -> `layout` (one of layouts()).
  virtual StateDict export_weights(const StateDict& official, const std::string& layout) const;
  // The safetensors metadata of the "opendit" layout: format, version, config.
  virtual std::map<std::string, std::string> weight_metadata() const = 0;

 protected:
  Model() = default;
  layers::SeqParallel sp_;
  // Layers declare their tensors here, in state-dict order.
  void add_param(const std::string& name, at::Tensor& tensor, ParamKind kind = ParamKind::Trainable);
  // What a mismatching state dict looks like (e.g. "The weights look like DiT-S/2 ..."); appended to load errors.
  virtual std::string explain_weights(const StateDict& sd) const { return ""; }

 private:
  std::vector<Param> params_;
};

}  // namespace opendit::models
