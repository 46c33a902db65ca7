// Torch bindings of the memkernels CUDA kernels: input checks, device guard,
// stream, output allocation, launch checks, and the op registration
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

#include "memkernels.h"

namespace memkernels {
namespace {

using at::Tensor;

DType dtype_of(const char* op, const char* name, const Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat:
      return DType::Float32;
    case at::kHalf:
      return DType::Float16;
    case at::kBFloat16:
      return DType::BFloat16;
    default:
      TORCH_CHECK(false, op, ": ", name, " has dtype ", t.scalar_type(),
                  "; the CUDA kernels take float32, float16 or bfloat16 (float64 is not "
                  "supported by the CUDA backend; use backend='torch')");
  }
  return DType::Float32;  // unreachable
}

void check_cuda(const char* op, const char* name, const Tensor& t, const Tensor& ref) {
  TORCH_CHECK(t.is_cuda(), op, ": ", name, " must be a CUDA tensor, got device ", t.device());
  TORCH_CHECK(t.device() == ref.device(), op, ": ", name, " is on ", t.device(),
              " but the first input is on ", ref.device(), "; all inputs must share one device");
}

// A floating input of the op's element type, on the right device, of the given sizes.
void check_input(const char* op, const char* name, const Tensor& t, const Tensor& ref,
                 at::IntArrayRef sizes) {
  check_cuda(op, name, t, ref);
  dtype_of(op, name, t);
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), op, ": ", name, " has dtype ",
              t.scalar_type(), " but expected ", ref.scalar_type(),
              " (all floating inputs must share one dtype)");
  TORCH_CHECK(t.sizes() == sizes, op, ": ", name, " must have shape ", sizes, ", got ",
              t.sizes());
}

// A float32 statistic (lse / norm) of the given sizes; returned contiguous.
Tensor check_stat(const char* op, const char* name, const Tensor& t, const Tensor& ref,
                  at::IntArrayRef sizes) {
  check_cuda(op, name, t, ref);
  TORCH_CHECK(t.scalar_type() == at::kFloat, op, ": ", name, " must be float32, got ",
              t.scalar_type());
  TORCH_CHECK(t.sizes() == sizes, op, ": ", name, " must have shape ", sizes, ", got ",
              t.sizes());
  return t.contiguous();
}

void check_rank(const char* op, const char* name, const Tensor& t, int64_t rank,
                const char* layout) {
  TORCH_CHECK(t.dim() == rank, op, ": ", name, " must be ", rank, "-d ", layout, ", got shape ",
              t.sizes());
}

void check_head_dim(const char* op, int64_t D) {
  TORCH_CHECK(D >= 1 && D <= kMaxHeadDim, op, ": head dim D must be in [1, ", kMaxHeadDim,
              "] for the CUDA kernels, got ", D);
}

void check_scalar(const char* op, const char* name, double x) {
  TORCH_CHECK(std::isfinite(x), op, ": ", name, " must be finite, got ", x);
}

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

Mask check_mask(const char* op, const std::optional<Tensor>& mask, const Tensor& ref, int64_t B,
                int64_t L) {
  Mask out;
  if (!mask.has_value()) return out;
  const Tensor& m = *mask;
  check_cuda(op, "key_padding_mask", m, ref);
  TORCH_CHECK(m.scalar_type() == at::kBool, op, ": key_padding_mask must be bool, got ",
              m.scalar_type());
  TORCH_CHECK(m.dim() == 2 && m.size(0) == B && m.size(1) == L, op,
              ": key_padding_mask must have shape (B, L) = (", B, ", ", L, "), got ", m.sizes());
  out.ptr = m.data_ptr<bool>();
  out.s0 = m.stride(0);
  out.s1 = m.stride(1);
  return out;
}

// ---------------------------------------------------------------------------
// memory_read

std::tuple<Tensor, Tensor> memory_read_forward(const Tensor& q, const Tensor& k, const Tensor& v,
                                               double scale) {
  const char* op = "memory_read_cuda_forward";
  check_rank(op, "q", q, 4, "(B, L, H, D)");
  check_rank(op, "k", k, 4, "(B, K, H, D)");
  const int64_t B = q.size(0), L = q.size(1), H = q.size(2), D = q.size(3), K = k.size(1);
  check_input(op, "q", q, q, {B, L, H, D});
  check_input(op, "k", k, q, {B, K, H, D});
  check_input(op, "v", v, q, {B, K, H, D});
  check_head_dim(op, D);
  check_scalar(op, "scale", scale);
  TORCH_CHECK(K >= 1, op, ": memory needs at least one slot (K >= 1), got K = ", K);
  const DType dt = dtype_of(op, "q", q);

  const c10::cuda::CUDAGuard guard(q.device());
  Tensor out = at::empty({B, L, H, D}, q.options());
  Tensor lse = at::empty({B, H, L}, q.options().dtype(at::kFloat));
  if (B * L * H == 0) return {out, lse};
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  launch_memory_read_forward(dt, view4(q), view4(k), view4(v), view4(out), lse.data_ptr<float>(),
                             B, L, K, H, D, static_cast<float>(scale), stream);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {out, lse};
}

std::tuple<Tensor, Tensor, Tensor> memory_read_backward(const Tensor& dout, const Tensor& q,
                                                        const Tensor& k, const Tensor& v,
                                                        const Tensor& out, const Tensor& lse_in,
                                                        double scale) {
  const char* op = "memory_read_cuda_backward";
  check_rank(op, "q", q, 4, "(B, L, H, D)");
  check_rank(op, "k", k, 4, "(B, K, H, D)");
  const int64_t B = q.size(0), L = q.size(1), H = q.size(2), D = q.size(3), K = k.size(1);
  check_input(op, "q", q, q, {B, L, H, D});
  check_input(op, "k", k, q, {B, K, H, D});
  check_input(op, "v", v, q, {B, K, H, D});
  check_input(op, "dout", dout, q, {B, L, H, D});
  check_input(op, "out", out, q, {B, L, H, D});
  const Tensor lse = check_stat(op, "lse", lse_in, q, {B, H, L});
  check_head_dim(op, D);
  check_scalar(op, "scale", scale);
  TORCH_CHECK(K >= 1, op, ": memory needs at least one slot (K >= 1), got K = ", K);
  const DType dt = dtype_of(op, "q", q);

  const c10::cuda::CUDAGuard guard(q.device());
  Tensor dq = at::empty({B, L, H, D}, q.options());
  Tensor dk = at::empty({B, K, H, D}, q.options());
  Tensor dv = at::empty({B, K, H, D}, q.options());
  if (B * H == 0) return {dq, dk, dv};
  if (L == 0) {  // no token reads the memory
    dk.zero_();
    dv.zero_();
    return {dq, dk, dv};
  }
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  Tensor delta = at::empty({B, H, L}, q.options().dtype(at::kFloat));
  launch_row_delta(dt, view4(dout), view4(out), delta.data_ptr<float>(), B, L, H, D, stream);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  launch_memory_read_backward_dq(dt, view4(dout), view4(q), view4(k), view4(v),
                                 lse.data_ptr<float>(), delta.data_ptr<float>(), view4(dq), B, L,
                                 K, H, D, static_cast<float>(scale), stream);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  launch_memory_read_backward_dkdv(dt, view4(dout), view4(q), view4(k), view4(v),
                                   lse.data_ptr<float>(), delta.data_ptr<float>(), view4(dk),
                                   view4(dv), B, L, K, H, D, static_cast<float>(scale), stream);
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
  check_rank(op, "q", q, 4, "(B, K, H, D)");
  check_rank(op, "k_tok", k_tok, 4, "(B, L, H, D)");
  const int64_t B = q.size(0), K = q.size(1), H = q.size(2), D = q.size(3), L = k_tok.size(1);
  check_input(op, "q", q, q, {B, K, H, D});
  check_input(op, "k", k, q, {B, K, H, D});
  check_input(op, "v", v, q, {B, K, H, D});
  check_input(op, "k_tok", k_tok, q, {B, L, H, D});
  check_input(op, "v_tok", v_tok, q, {B, L, H, D});
  const Mask mask = check_mask(op, key_padding_mask, q, B, L);
  check_head_dim(op, D);
  check_scalar(op, "scale", scale);
  const DType dt = dtype_of(op, "q", q);

  const c10::cuda::CUDAGuard guard(q.device());
  Tensor out = at::empty({B, K, H, D}, q.options());
  Tensor lse = at::empty({B, H, K}, q.options().dtype(at::kFloat));
  if (B * K * H == 0) return {out, lse};
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  launch_slot_attention_forward(dt, view4(q), view4(k), view4(v), view4(k_tok), view4(v_tok),
                                mask.ptr, mask.s0, mask.s1, view4(out), lse.data_ptr<float>(), B,
                                K, L, H, D, static_cast<float>(scale), stream);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {out, lse};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> slot_attention_backward(
    const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& k_tok,
    const Tensor& v_tok, const std::optional<Tensor>& key_padding_mask, const Tensor& out,
    const Tensor& lse_in, double scale) {
  const char* op = "slot_attention_cuda_backward";
  check_rank(op, "q", q, 4, "(B, K, H, D)");
  check_rank(op, "k_tok", k_tok, 4, "(B, L, H, D)");
  const int64_t B = q.size(0), K = q.size(1), H = q.size(2), D = q.size(3), L = k_tok.size(1);
  check_input(op, "q", q, q, {B, K, H, D});
  check_input(op, "k", k, q, {B, K, H, D});
  check_input(op, "v", v, q, {B, K, H, D});
  check_input(op, "k_tok", k_tok, q, {B, L, H, D});
  check_input(op, "v_tok", v_tok, q, {B, L, H, D});
  check_input(op, "dout", dout, q, {B, K, H, D});
  check_input(op, "out", out, q, {B, K, H, D});
  const Tensor lse = check_stat(op, "lse", lse_in, q, {B, H, K});
  const Mask mask = check_mask(op, key_padding_mask, q, B, L);
  check_head_dim(op, D);
  check_scalar(op, "scale", scale);
  const DType dt = dtype_of(op, "q", q);

  const c10::cuda::CUDAGuard guard(q.device());
  Tensor dq = at::empty({B, K, H, D}, q.options());
  Tensor dk = at::empty({B, K, H, D}, q.options());
  Tensor dv = at::empty({B, K, H, D}, q.options());
  Tensor dk_tok = at::empty({B, L, H, D}, q.options());
  Tensor dv_tok = at::empty({B, L, H, D}, q.options());
  if (B * H == 0) return {dq, dk, dv, dk_tok, dv_tok};
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  if (K == 0) {  // no slot attends to the tokens
    dk_tok.zero_();
    dv_tok.zero_();
    return {dq, dk, dv, dk_tok, dv_tok};
  }
  Tensor delta = at::empty({B, H, K}, q.options().dtype(at::kFloat));
  launch_row_delta(dt, view4(dout), view4(out), delta.data_ptr<float>(), B, K, H, D, stream);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  launch_slot_attention_backward_slots(dt, view4(dout), view4(q), view4(k), view4(v),
                                       view4(k_tok), view4(v_tok), mask.ptr, mask.s0, mask.s1,
                                       lse.data_ptr<float>(), delta.data_ptr<float>(), view4(dq),
                                       view4(dk), view4(dv), B, K, L, H, D,
                                       static_cast<float>(scale), stream);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (L > 0) {
    launch_slot_attention_backward_tokens(dt, view4(dout), view4(q), view4(k_tok), view4(v_tok),
                                          mask.ptr, mask.s0, mask.s1, lse.data_ptr<float>(),
                                          delta.data_ptr<float>(), view4(dk_tok), view4(dv_tok),
                                          B, K, L, H, D, static_cast<float>(scale), stream);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return {dq, dk, dv, dk_tok, dv_tok};
}

// ---------------------------------------------------------------------------
// memory_norm

std::tuple<Tensor, Tensor> memory_norm_forward(const Tensor& m, const Tensor& bias, double eps) {
  const char* op = "memory_norm_cuda_forward";
  check_rank(op, "m", m, 3, "(B, K, W)");
  const int64_t B = m.size(0), K = m.size(1), W = m.size(2);
  check_input(op, "m", m, m, {B, K, W});
  check_input(op, "bias", bias, m, {K, W});
  check_scalar(op, "eps", eps);
  TORCH_CHECK(eps > 0, op, ": eps must be positive, got ", eps);
  const DType dt = dtype_of(op, "m", m);

  const c10::cuda::CUDAGuard guard(m.device());
  Tensor out = at::empty({B, K, W}, m.options());
  Tensor norm = at::empty({B, K}, m.options().dtype(at::kFloat));
  if (B * K == 0) return {out, norm};
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  launch_memory_norm_forward(dt, view3(m), bias.data_ptr(), bias.stride(0), bias.stride(1),
                             view3(out), norm.data_ptr<float>(), B, K, W,
                             static_cast<float>(eps), stream);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {out, norm};
}

std::tuple<Tensor, Tensor> memory_norm_backward(const Tensor& dout, const Tensor& out,
                                                const Tensor& norm_in, double eps) {
  const char* op = "memory_norm_cuda_backward";
  check_rank(op, "out", out, 3, "(B, K, W)");
  const int64_t B = out.size(0), K = out.size(1), W = out.size(2);
  check_input(op, "out", out, out, {B, K, W});
  check_input(op, "dout", dout, out, {B, K, W});
  const Tensor norm = check_stat(op, "norm", norm_in, out, {B, K});
  check_scalar(op, "eps", eps);
  TORCH_CHECK(eps > 0, op, ": eps must be positive, got ", eps);
  const DType dt = dtype_of(op, "out", out);

  const c10::cuda::CUDAGuard guard(out.device());
  Tensor dm = at::empty({B, K, W}, out.options());
  if (B == 0 || K * W == 0) return {dm, at::zeros({K, W}, out.options())};
  Tensor dbias = at::empty({K, W}, out.options());
  Tensor rowdot = at::empty({B, K}, out.options().dtype(at::kFloat));
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  launch_memory_norm_backward_rows(dt, view3(dout), view3(out), norm.data_ptr<float>(), view3(dm),
                                   rowdot.data_ptr<float>(), B, K, W, static_cast<float>(eps),
                                   stream);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  launch_memory_norm_backward_bias(dt, view3(dout), view3(out), norm.data_ptr<float>(),
                                   rowdot.data_ptr<float>(), dbias.data_ptr(), B, K, W,
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

// CPU tensors reach the same entry points only to be refused with a clear
// message ("<op>: q must be a CUDA tensor, got device cpu") instead of the
// dispatcher's generic "could not run ... with arguments from the 'CPU' backend".
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
