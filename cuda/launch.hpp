// The CUDA launchers behind cuda/ops.hpp (defined in cuda/*.cu, built only with nvcc). Callers go through ops.hpp,
// which checks shapes and picks these for float32/bfloat16 CUDA tensors. Each has its reference's signature
// (ops.hpp): dispatch.cpp's route() takes the two as one function type, so the compiler keeps them alike.
#pragma once
#include "cuda/ops.hpp"

namespace opendit::kernels::cuda_impl {
NormModulate norm_modulate(const at::Tensor& x, const at::Tensor& shift, const at::Tensor& scale, double eps);
NormModulateGrads norm_modulate_backward(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& mean,
                                         const at::Tensor& rstd, const at::Tensor& scale, const at::Tensor& dres,
                                         const at::Tensor& shift);
at::Tensor gated_residual(const at::Tensor& x, const at::Tensor& y, const at::Tensor& gate, const at::Tensor& bias);
GatedResidualGrads gated_residual_backward(const at::Tensor& dout, const at::Tensor& y, const at::Tensor& gate,
                                           const at::Tensor& bias);
at::Tensor bias_gelu(const at::Tensor& a, const at::Tensor& bias);
BiasGeluGrads bias_gelu_backward(const at::Tensor& dg, const at::Tensor& a, const at::Tensor& bias,
                                 bool reuse_dg = false, bool with_gelu = false);
void adamw_ema(const AdamWTensors& t, const AdamWScalars& s);
at::Tensor group_norm_silu(const at::Tensor& x, int64_t groups, const at::Tensor& weight, const at::Tensor& bias,
                           double eps, bool silu);
at::Tensor add_rms_norm(const at::Tensor& x, const at::Tensor& delta, const at::Tensor& weight, double eps,
                        at::ScalarType out_dtype);
at::Tensor gated_gelu(const at::Tensor& ab);
LinearGelu linear_gelu(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b);  // cuda/gemm_epilogue.cpp
LinearGrads linear_wgrad(const at::Tensor& dy, const at::Tensor& x, bool bias);
void linear_wgrad_into(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& dw, const at::Tensor& db,
                       bool accumulate);
// cuda/packed_attention.cpp: cuDNN graphs, the definition where cuDNN declines the shape.
PackedAttention packed_attention(const at::Tensor& qkv);
at::Tensor packed_attention_backward(const at::Tensor& dout, const at::Tensor& qkv, const at::Tensor& out,
                                     const at::Tensor& stats);
bool packed_attention_builds(const at::Tensor& qkv);  // both graphs of qkv's shape build (cached)
// cuda/short_attention.cu
ShortAttention short_attention(const at::Tensor& qkv, int64_t valid);
at::Tensor short_attention_backward(const at::Tensor& dout, const at::Tensor& qkv, const at::Tensor& out,
                                    const at::Tensor& stats, int64_t valid);
bool short_attention_fits(const at::Tensor& qkv);  // the backward's tiles fit the device's shared memory
}  // namespace opendit::kernels::cuda_impl
