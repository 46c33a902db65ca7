// Torch bindings of the memkernels CUDA kernels: argument checks (checks.h, all
// of them before the device check), device guard, stream, output allocation,
// launch checks, and the op registration
//   memkernels::{memory_read,slot_attention,memory_norm}_cuda_{forward,backward}.
// Importing the Python module memkernels._C registers the ops.
#include <torch/extension.h>

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include <cmath>
#include <optional>
#include <string>
#include <vector>

#include "checks.h"
#include "memkernels.h"

namespace memkernels {
namespace {

View4 view4(const Tensor& t) {
  return View4{const_cast<void*>(t.data_ptr()), t.stride(0), t.stride(1), t.stride(2),
               t.stride(3)};
}

View3 view3(const Tensor& t) {
  return View3{const_cast<void*>(t.data_ptr()), t.stride(0), t.stride(1), t.stride(2)};
}

struct Mask {
  const bool* ptr = nullptr;
  int64_t s0 = 0, s1 = 0;
};

Mask mask_view(const std::optional<Tensor>& mask) {
  if (!mask.has_value()) return {};
  return Mask{mask->data_ptr<bool>(), mask->stride(0), mask->stride(1)};
}

// ---------------------------------------------------------------------------
// memory_read

std::tuple<Tensor, Tensor> memory_read_forward(const Tensor& q, const Tensor& k, const Tensor& v,
                                               double scale) {
  const char* op = "memory_read_cuda_forward";
  const AttentionSizes s = check_memory_read(op, q, k, v);
  check_finite(op, "scale", scale);
  require_cuda(op, {{"q", &q}, {"k", &k}, {"v", &v}});

  const c10::cuda::CUDAGuard guard(q.device());
  Tensor out = at::empty({s.B, s.rows, s.H, s.D}, q.options());
  Tensor lse = at::empty({s.B, s.H, s.rows}, q.options().dtype(at::kFloat));
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  launch_memory_read_forward(s.dtype, view4(q), view4(k), view4(v), view4(out),
                             lse.data_ptr<float>(), s.B, s.rows, s.keys, s.H, s.D,
                             static_cast<float>(scale), stream);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {out, lse};
}

std::tuple<Tensor, Tensor, Tensor> memory_read_backward(const Tensor& dout, const Tensor& q,
                                                        const Tensor& k, const Tensor& v,
                                                        const Tensor& out, const Tensor& lse_in,
                                                        double scale) {
  const char* op = "memory_read_cuda_backward";
  const AttentionSizes s = check_memory_read(op, q, k, v);
  check_like(op, "dout", dout, "q", q);
  check_like(op, "out", out, "q", q);
  check_statistic(op, "lse", lse_in, {s.B, s.H, s.rows}, "(B, H, L)", q);
  check_finite(op, "scale", scale);
  require_cuda(op, {{"dout", &dout}, {"q", &q}, {"k", &k}, {"v", &v}, {"out", &out},
                    {"lse", &lse_in}});

  const c10::cuda::CUDAGuard guard(q.device());
  const Tensor lse = lse_in.contiguous();
  Tensor dq = at::empty({s.B, s.rows, s.H, s.D}, q.options());
  Tensor dk = at::empty({s.B, s.keys, s.H, s.D}, q.options());
  Tensor dv = at::empty({s.B, s.keys, s.H, s.D}, q.options());
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  Tensor delta = at::empty({s.B, s.H, s.rows}, q.options().dtype(at::kFloat));
  launch_row_delta(s.dtype, view4(dout), view4(out), delta.data_ptr<float>(), s.B, s.rows, s.H,
                   s.D, stream);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  launch_memory_read_backward_dq(s.dtype, view4(dout), view4(q), view4(k), view4(v),
                                 lse.data_ptr<float>(), delta.data_ptr<float>(), view4(dq), s.B,
                                 s.rows, s.keys, s.H, s.D, static_cast<float>(scale), stream);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  launch_memory_read_backward_dkdv(s.dtype, view4(dout), view4(q), view4(k), view4(v),
                                   lse.data_ptr<float>(), delta.data_ptr<float>(), view4(dk),
                                   view4(dv), s.B, s.rows, s.keys, s.H, s.D,
                                   static_cast<float>(scale), stream);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {dq, dk, dv};
}

// ---------------------------------------------------------------------------
// slot_attention

std::tuple<Tensor, Tensor> slot_attention_forward(const Tensor& q, const Tensor& k,
                                                  const Tensor& v, const Tensor& k_tok,
                                                  const Tensor& v_tok,
                                                  const std::optional<Tensor>& key_padding_mask,
                                                  double scale) {
  const char* op = "slot_attention_cuda_forward";
  const AttentionSizes s = check_slot_attention(op, q, k, v, k_tok, v_tok, key_padding_mask);
  check_finite(op, "scale", scale);
  require_cuda(op, {{"q", &q}, {"k", &k}, {"v", &v}, {"k_tok", &k_tok}, {"v_tok", &v_tok}});
  if (key_padding_mask.has_value()) require_cuda(op, {{"key_padding_mask", &*key_padding_mask}});

  const c10::cuda::CUDAGuard guard(q.device());
  Tensor out = at::empty({s.B, s.rows, s.H, s.D}, q.options());
  Tensor lse = at::empty({s.B, s.H, s.rows}, q.options().dtype(at::kFloat));
  const Mask mask = mask_view(key_padding_mask);
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  launch_slot_attention_forward(s.dtype, view4(q), view4(k), view4(v), view4(k_tok),
                                view4(v_tok), mask.ptr, mask.s0, mask.s1, view4(out),
                                lse.data_ptr<float>(), s.B, s.rows, s.keys, s.H, s.D,
                                static_cast<float>(scale), stream);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {out, lse};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> slot_attention_backward(
    const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& k_tok,
    const Tensor& v_tok, const std::optional<Tensor>& key_padding_mask, const Tensor& out,
    const Tensor& lse_in, double scale) {
  const char* op = "slot_attention_cuda_backward";
  const AttentionSizes s = check_slot_attention(op, q, k, v, k_tok, v_tok, key_padding_mask);
  check_like(op, "dout", dout, "q", q);
  check_like(op, "out", out, "q", q);
  check_statistic(op, "lse", lse_in, {s.B, s.H, s.rows}, "(B, H, K)", q);
  check_finite(op, "scale", scale);
  require_cuda(op, {{"dout", &dout}, {"q", &q}, {"k", &k}, {"v", &v}, {"k_tok", &k_tok},
                    {"v_tok", &v_tok}, {"out", &out}, {"lse", &lse_in}});
  if (key_padding_mask.has_value()) require_cuda(op, {{"key_padding_mask", &*key_padding_mask}});

  const c10::cuda::CUDAGuard guard(q.device());
  const Tensor lse = lse_in.contiguous();
  Tensor dq = at::empty({s.B, s.rows, s.H, s.D}, q.options());
  Tensor dk = at::empty({s.B, s.rows, s.H, s.D}, q.options());
  Tensor dv = at::empty({s.B, s.rows, s.H, s.D}, q.options());
  Tensor dk_tok = at::empty({s.B, s.keys, s.H, s.D}, q.options());
  Tensor dv_tok = at::empty({s.B, s.keys, s.H, s.D}, q.options());
  const Mask mask = mask_view(key_padding_mask);
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  Tensor delta = at::empty({s.B, s.H, s.rows}, q.options().dtype(at::kFloat));
  launch_row_delta(s.dtype, view4(dout), view4(out), delta.data_ptr<float>(), s.B, s.rows, s.H,
                   s.D, stream);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  launch_slot_attention_backward_slots(s.dtype, view4(dout), view4(q), view4(k), view4(v),
                                       view4(k_tok), view4(v_tok), mask.ptr, mask.s0, mask.s1,
                                       lse.data_ptr<float>(), delta.data_ptr<float>(), view4(dq),
                                       view4(dk), view4(dv), s.B, s.rows, s.keys, s.H, s.D,
                                       static_cast<float>(scale), stream);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  launch_slot_attention_backward_tokens(s.dtype, view4(dout), view4(q), view4(k_tok),
                                        view4(v_tok), mask.ptr, mask.s0, mask.s1,
                                        lse.data_ptr<float>(), delta.data_ptr<float>(),
                                        view4(dk_tok), view4(dv_tok), s.B, s.rows, s.keys, s.H,
                                        s.D, static_cast<float>(scale), stream);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {dq, dk, dv, dk_tok, dv_tok};
}

// ---------------------------------------------------------------------------
// memory_norm

std::tuple<Tensor, Tensor> memory_norm_forward(const Tensor& m, const Tensor& bias, double eps) {
  const char* op = "memory_norm_cuda_forward";
  const NormSizes s = check_memory_norm(op, m, bias);
  check_positive(op, "eps", eps);
  require_cuda(op, {{"m", &m}, {"bias", &bias}});

  const c10::cuda::CUDAGuard guard(m.device());
  Tensor out = at::empty({s.B, s.K, s.W}, m.options());
  Tensor norm = at::empty({s.B, s.K}, m.options().dtype(at::kFloat));
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  launch_memory_norm_forward(s.dtype, view3(m), bias.data_ptr(), bias.stride(0), bias.stride(1),
                             view3(out), norm.data_ptr<float>(), s.B, s.K, s.W,
                             static_cast<float>(eps), stream);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {out, norm};
}

std::tuple<Tensor, Tensor> memory_norm_backward(const Tensor& dout, const Tensor& out,
                                                const Tensor& norm_in, double eps) {
  const char* op = "memory_norm_cuda_backward";
  const NormSizes s = check_memory_norm_output(op, out);
  check_like(op, "dout", dout, "out", out);
  check_statistic(op, "norm", norm_in, {s.B, s.K}, "(B, K)", out);
  check_positive(op, "eps", eps);
  require_cuda(op, {{"dout", &dout}, {"out", &out}, {"norm", &norm_in}});

  const c10::cuda::CUDAGuard guard(out.device());
  const Tensor norm = norm_in.contiguous();
  Tensor dm = at::empty({s.B, s.K, s.W}, out.options());
  Tensor dbias = at::empty({s.K, s.W}, out.options());
  Tensor rowdot = at::empty({s.B, s.K}, out.options().dtype(at::kFloat));
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  launch_memory_norm_backward_rows(s.dtype, view3(dout), view3(out), norm.data_ptr<float>(),
                                   view3(dm), rowdot.data_ptr<float>(), s.B, s.K, s.W,
                                   static_cast<float>(eps), stream);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  launch_memory_norm_backward_bias(s.dtype, view3(dout), view3(out), norm.data_ptr<float>(),
                                   rowdot.data_ptr<float>(), dbias.data_ptr(), s.B, s.K, s.W,
                                   static_cast<float>(eps), stream);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {dm, dbias};
}

}  // namespace
}  // namespace memkernels

TORCH_LIBRARY_FRAGMENT(memkernels, m) {
  m.def("memory_read_cuda_forward(Tensor q, Tensor k, Tensor v, float scale) -> (Tensor out, Tensor lse)");
  m.def(
      "memory_read_cuda_backward(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor out, "
      "Tensor lse, float scale) -> (Tensor dq, Tensor dk, Tensor dv)");
  m.def(
      "slot_attention_cuda_forward(Tensor q, Tensor k, Tensor v, Tensor k_tok, Tensor v_tok, "
      "Tensor? key_padding_mask, float scale) -> (Tensor out, Tensor lse)");
  m.def(
      "slot_attention_cuda_backward(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor k_tok, "
      "Tensor v_tok, Tensor? key_padding_mask, Tensor out, Tensor lse, float scale) -> "
      "(Tensor dq, Tensor dk, Tensor dv, Tensor dk_tok, Tensor dv_tok)");
  m.def("memory_norm_cuda_forward(Tensor m, Tensor bias, float eps) -> (Tensor out, Tensor norm)");
  m.def(
      "memory_norm_cuda_backward(Tensor dout, Tensor out, Tensor norm, float eps) -> "
      "(Tensor dm, Tensor dbias)");
}

TORCH_LIBRARY_IMPL(memkernels, CUDA, m) {
  m.impl("memory_read_cuda_forward", &memkernels::memory_read_forward);
  m.impl("memory_read_cuda_backward", &memkernels::memory_read_backward);
  m.impl("slot_attention_cuda_forward", &memkernels::slot_attention_forward);
  m.impl("slot_attention_cuda_backward", &memkernels::slot_attention_backward);
  m.impl("memory_norm_cuda_forward", &memkernels::memory_norm_forward);
  m.impl("memory_norm_cuda_backward", &memkernels::memory_norm_backward);
}

// CPU tensors reach the same entry points: every argument check runs on them
// (so the checks are testable without a GPU), and well-formed CPU inputs are
// refused last with "<op>: q must be a CUDA tensor, got device cpu" instead of
// the dispatcher's generic "could not run ... with arguments from the 'CPU' backend".
TORCH_LIBRARY_IMPL(memkernels, CPU, m) {
  m.impl("memory_read_cuda_forward", &memkernels::memory_read_forward);
  m.impl("memory_read_cuda_backward", &memkernels::memory_read_backward);
  m.impl("slot_attention_cuda_forward", &memkernels::slot_attention_forward);
  m.impl("slot_attention_cuda_backward", &memkernels::slot_attention_backward);
  m.impl("memory_norm_cuda_forward", &memkernels::memory_norm_forward);
  m.impl("memory_norm_cuda_backward", &memkernels::memory_norm_backward);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.doc() = "memkernels CUDA kernels; importing this module registers the memkernels::*_cuda_* ops";
}
