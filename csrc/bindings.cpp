// Torch bindings of the memkernels CUDA kernels: argument checks (checks.h, all
// of them before the device check), device guard, stream, output allocation,
// launch checks, and the op registration
//   memkernels::{memory_read,slot_attention,memory_norm}_cuda_{forward,backward}.
// Importing the Python module memkernels._C registers the ops.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/extension.h>

#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "attention.h"
#include "checks.h"
#include "memkernels.h"
#include "memory_norm_vectorized.h"

namespace memkernels {
namespace {

View4 view4(const Tensor& t) {
  return View4{const_cast<void*>(t.data_ptr()), t.stride(0), t.stride(1), t.stride(2), t.stride(3)};
}

View3 view3(const Tensor& t) {
  return View3{const_cast<void*>(t.data_ptr()), t.stride(0), t.stride(1), t.stride(2)};
}

TensorRef ref(const Tensor& t) {
  return TensorRef{const_cast<void*>(t.data_ptr()), t.stride(0), t.stride(1), t.stride(2),
                   t.stride(3)};
}

// The fast paths (tensor-core attention, vectorized memory_norm) have not yet
// run on a GPU, so they are off unless MEMKERNELS_CUDA_FAST_PATHS=1 at import
// or set_fast_paths(true); the scalar kernels, which the H100 run verified, run
// otherwise. Enable them by default once the GPU suite passes on them.
std::atomic<bool>& fast_paths_flag() {
  static std::atomic<bool> flag{[] {
    const char* env = std::getenv("MEMKERNELS_CUDA_FAST_PATHS");
    return env != nullptr && std::strcmp(env, "1") == 0;
  }()};
  return flag;
}

constexpr const char* kFastPathsOff =
    "the fast paths are off: they have not yet run on a GPU (MEMKERNELS_CUDA_FAST_PATHS=1 or "
    "memkernels.cuda_kernels.set_fast_paths(True) opts in)";

// A compute capability given to kernel_path, (major, minor); nullopt: the tensors' own.
using Capability = std::optional<std::vector<int64_t>>;

// The device the tensor-core decision is made for: the GPU that `t` is on, or for CPU tensors
// (kernel_path) an sm_90 whose shared memory the tiles fit; `capability` replaces its compute
// capability, so that the rules are testable for any GPU without one.
DeviceTraits traits_for(const Tensor& t, const Capability& capability) {
  DeviceTraits traits = t.is_cuda() ? device_traits(t.get_device())
                                    : DeviceTraits{9, 0, std::numeric_limits<int>::max()};
  if (capability.has_value()) {
    traits.cc_major = static_cast<int>((*capability)[0]);
    traits.cc_minor = static_cast<int>((*capability)[1]);
  }
  return traits;
}

// Why these attention operands take the scalar kernels; nullptr: tensor cores.
const char* refusal(const AttentionSizes& s, std::initializer_list<const Tensor*> operands,
                    const Capability& capability = std::nullopt) {
  if (!fast_paths_flag().load(std::memory_order_relaxed)) return kFastPathsOff;
  std::vector<TensorRef> refs;
  for (const Tensor* t : operands) refs.push_back(ref(*t));
  return tensor_core_refusal(s.dtype, s.B, s.H, s.rows, s.keys, s.D, refs.data(),
                             static_cast<int>(refs.size()),
                             traits_for(**operands.begin(), capability));
}

// The tensor-core kernels built for a GPU older than sm_80 are CuTe's invalid-path trap, a
// device assert that kills the CUDA context: never launch them there, whatever chose the path.
void require_tensor_core_device(const char* op, const Tensor& q) {
  const DeviceTraits d = device_traits(q.get_device());
  const char* why = tensor_core_arch_refusal(d.cc_major, d.cc_minor);
  TORCH_CHECK(why == nullptr, op, ": the tensor-core kernels cannot run on ", q.device(), " (sm_",
              d.cc_major, d.cc_minor, "): ", why);
}

NormOperand norm_operand(const Tensor& t) {
  if (t.dim() == 2) return NormOperand{t.data_ptr(), 0, t.stride(0), t.stride(1)};
  return NormOperand{t.data_ptr(), t.stride(0), t.stride(1), t.stride(2)};
}

// Why these memory_norm operands take the scalar kernels; nullptr: vectorized.
const char* norm_refusal(const NormSizes& s, std::initializer_list<const Tensor*> operands) {
  if (!fast_paths_flag().load(std::memory_order_relaxed)) return kFastPathsOff;
  std::vector<NormOperand> refs;
  for (const Tensor* t : operands) refs.push_back(norm_operand(*t));
  const int elem_bytes = static_cast<int>((*operands.begin())->element_size());
  if (norm_vectorizable(refs.data(), static_cast<int>(refs.size()), s.W, elem_bytes)) {
    return nullptr;
  }
  return "a row is not whole 16-byte vectors in a unit-stride, 16-byte aligned layout, or is "
         "wider than the vectorized kernels hold (16384 16-bit or 8192 float32 elements)";
}

AttentionParams attention_params(const AttentionSizes& s, double scale) {
  AttentionParams p;
  p.B = static_cast<int>(s.B);
  p.H = static_cast<int>(s.H);
  p.rows = static_cast<int>(s.rows);
  p.keys = static_cast<int>(s.keys);
  p.D = static_cast<int>(s.D);
  p.scale = static_cast<float>(scale);
  p.scale_log2 = static_cast<float>(scale * 1.4426950408889634);
  return p;
}

struct Mask {
  const bool* ptr = nullptr;
  int64_t s0 = 0, s1 = 0;
};

Mask mask_view(const std::optional<Tensor>& mask) {
  if (!mask.has_value()) return {};
  return Mask{mask->data_ptr<bool>(), mask->stride(0), mask->stride(1)};
}

// slot_attention as the shared kernels see it: rows are the slots, keys the
// tokens, and each slot's own key/value is the self term.
AttentionParams slot_params(const AttentionSizes& s, double scale, const Tensor& q, const Tensor& k,
                            const Tensor& v, const Tensor& k_tok, const Tensor& v_tok,
                            const Mask& mask) {
  AttentionParams p = attention_params(s, scale);
  p.q = ref(q);
  p.k = ref(k_tok);
  p.v = ref(v_tok);
  p.k_self = ref(k);
  p.v_self = ref(v);
  p.mask = mask.ptr;
  p.mask_batch_stride = mask.s0;
  p.mask_key_stride = mask.s1;
  return p;
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
  if (refusal(s, {&q, &k, &v}) == nullptr) {
    AttentionParams p = attention_params(s, scale);
    p.q = ref(q);
    p.k = ref(k);
    p.v = ref(v);
    p.out = ref(out);
    p.lse = lse.data_ptr<float>();
    require_tensor_core_device(op, q);
    launch_tc_forward(s.dtype, p, stream);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return {out, lse};
  }
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
  require_cuda(op,
               {{"dout", &dout}, {"q", &q}, {"k", &k}, {"v", &v}, {"out", &out}, {"lse", &lse_in}});

  const c10::cuda::CUDAGuard guard(q.device());
  const Tensor lse = lse_in.contiguous();
  Tensor dq = at::empty({s.B, s.rows, s.H, s.D}, q.options());
  Tensor dk = at::empty({s.B, s.keys, s.H, s.D}, q.options());
  Tensor dv = at::empty({s.B, s.keys, s.H, s.D}, q.options());
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  Tensor delta = at::empty({s.B, s.H, s.rows}, q.options().dtype(at::kFloat));
  if (refusal(s, {&q, &k, &v, &dout}) == nullptr) {
    AttentionParams p = attention_params(s, scale);
    p.q = ref(q);
    p.k = ref(k);
    p.v = ref(v);
    p.dout = ref(dout);
    p.lse = const_cast<float*>(lse.data_ptr<float>());
    p.delta = delta.data_ptr<float>();
    p.dq = ref(dq);
    p.dk = ref(dk);
    p.dv = ref(dv);
    require_tensor_core_device(op, q);
    launch_tc_backward(s.dtype, p, stream);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return {dq, dk, dv};
  }
  Tensor p_sum = at::empty({s.B, s.H, s.rows}, q.options().dtype(at::kFloat));
  launch_memory_read_backward_dq(s.dtype, view4(dout), view4(q), view4(k), view4(v),
                                 lse.data_ptr<float>(), delta.data_ptr<float>(),
                                 p_sum.data_ptr<float>(), view4(dq), s.B, s.rows, s.keys, s.H, s.D,
                                 static_cast<float>(scale), stream);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  launch_memory_read_backward_dkdv(s.dtype, view4(dout), view4(q), view4(k), view4(v),
                                   lse.data_ptr<float>(), delta.data_ptr<float>(),
                                   p_sum.data_ptr<float>(), view4(dk), view4(dv), s.B, s.rows,
                                   s.keys, s.H, s.D, static_cast<float>(scale), stream);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {dq, dk, dv};
}

// ---------------------------------------------------------------------------
// slot_attention

std::tuple<Tensor, Tensor> slot_attention_forward(const Tensor& q, const Tensor& k, const Tensor& v,
                                                  const Tensor& k_tok, const Tensor& v_tok,
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
  if (refusal(s, {&q, &k, &v, &k_tok, &v_tok}) == nullptr) {
    AttentionParams p = slot_params(s, scale, q, k, v, k_tok, v_tok, mask);
    p.out = ref(out);
    p.lse = lse.data_ptr<float>();
    require_tensor_core_device(op, q);
    launch_tc_forward(s.dtype, p, stream);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return {out, lse};
  }
  launch_slot_attention_forward(s.dtype, view4(q), view4(k), view4(v), view4(k_tok), view4(v_tok),
                                mask.ptr, mask.s0, mask.s1, view4(out), lse.data_ptr<float>(), s.B,
                                s.rows, s.keys, s.H, s.D, static_cast<float>(scale), stream);
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
  require_cuda(op, {{"dout", &dout},
                    {"q", &q},
                    {"k", &k},
                    {"v", &v},
                    {"k_tok", &k_tok},
                    {"v_tok", &v_tok},
                    {"out", &out},
                    {"lse", &lse_in}});
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
  if (refusal(s, {&q, &k, &v, &k_tok, &v_tok, &dout}) == nullptr) {
    AttentionParams p = slot_params(s, scale, q, k, v, k_tok, v_tok, mask);
    p.dout = ref(dout);
    p.lse = const_cast<float*>(lse.data_ptr<float>());
    p.delta = delta.data_ptr<float>();
    p.dq = ref(dq);
    p.dk = ref(dk_tok);
    p.dv = ref(dv_tok);
    p.dk_self = ref(dk);
    p.dv_self = ref(dv);
    require_tensor_core_device(op, q);
    launch_tc_backward(s.dtype, p, stream);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return {dq, dk, dv, dk_tok, dv_tok};
  }
  Tensor p_sum = at::empty({s.B, s.H, s.rows}, q.options().dtype(at::kFloat));
  launch_slot_attention_backward_slots(
      s.dtype, view4(dout), view4(q), view4(k), view4(v), view4(k_tok), view4(v_tok), mask.ptr,
      mask.s0, mask.s1, lse.data_ptr<float>(), delta.data_ptr<float>(), p_sum.data_ptr<float>(),
      view4(dq), view4(dk), view4(dv), s.B, s.rows, s.keys, s.H, s.D, static_cast<float>(scale),
      stream);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  launch_slot_attention_backward_tokens(
      s.dtype, view4(dout), view4(q), view4(k_tok), view4(v_tok), mask.ptr, mask.s0, mask.s1,
      lse.data_ptr<float>(), delta.data_ptr<float>(), p_sum.data_ptr<float>(), view4(dk_tok),
      view4(dv_tok), s.B, s.rows, s.keys, s.H, s.D, static_cast<float>(scale), stream);
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
  if (norm_refusal(s, {&m, &bias}) == nullptr) {
    launch_memory_norm_forward_vec(s.dtype, view3(m), bias.data_ptr(), bias.stride(0),
                                   out.data_ptr(), norm.data_ptr<float>(), s.B, s.K, s.W,
                                   static_cast<float>(eps), stream);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return {out, norm};
  }
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
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  if (norm_refusal(s, {&dout, &out}) == nullptr) {
    launch_memory_norm_backward_vec(s.dtype, view3(dout), view3(out), norm.data_ptr<float>(),
                                    dm.data_ptr(), dbias.data_ptr(), s.B, s.K, s.W,
                                    static_cast<float>(eps), stream);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return {dm, dbias};
  }
  Tensor rowdot = at::empty({s.B, s.K}, out.options().dtype(at::kFloat));
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
  m.def(
      "memory_read_cuda_forward(Tensor q, Tensor k, Tensor v, float scale) -> (Tensor out, Tensor "
      "lse)");
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

namespace memkernels {
namespace {

// The kernels a call of `op` ("memory_read", "slot_attention", "memory_norm")
// on these inputs runs: "tensor-core", "vectorized", or "scalar: <why>". The
// inputs are the op's forward tensors (memory_norm: m, bias), checked like the
// op's own arguments; CPU tensors are answered as if on an sm_90 with enough
// shared memory, and `capability` stands in for the GPU's compute capability,
// so that the rules are testable without a GPU.
std::string kernel_path(const std::string& op, const std::vector<Tensor>& t,
                        const Capability& capability) {
  const char* name = "kernel_path";
  TORCH_CHECK(!capability.has_value() || capability->size() == 2, name,
              ": compute_capability must be (major, minor), got ",
              capability.has_value() ? capability->size() : 0, " numbers");
  const char* why = nullptr;
  const char* fast = "tensor-core";
  if (op == "memory_norm") {
    TORCH_CHECK(t.size() == 2, name, ": memory_norm takes (m, bias), got ", t.size(), " tensors");
    why = norm_refusal(check_memory_norm(name, t[0], t[1]), {&t[0], &t[1]});
    fast = "vectorized";
  } else if (op == "memory_read") {
    TORCH_CHECK(t.size() == 3, name, ": memory_read takes (q, k, v), got ", t.size(), " tensors");
    why = refusal(check_memory_read(name, t[0], t[1], t[2]), {&t[0], &t[1], &t[2]}, capability);
  } else if (op == "slot_attention") {
    TORCH_CHECK(t.size() == 5, name, ": slot_attention takes (q, k, v, k_tok, v_tok), got ",
                t.size(), " tensors");
    const AttentionSizes s = check_slot_attention(name, t[0], t[1], t[2], t[3], t[4], std::nullopt);
    why = refusal(s, {&t[0], &t[1], &t[2], &t[3], &t[4]}, capability);
  } else {
    TORCH_CHECK(false, name, ": op must be memory_read, slot_attention or memory_norm, got ", op);
  }
  return why == nullptr ? std::string(fast) : std::string("scalar: ") + why;
}

// "" when a GPU of this compute capability can run the tensor-core kernels, else why not.
std::string tensor_core_arch_reason(int64_t cc_major, int64_t cc_minor) {
  const char* why =
      tensor_core_arch_refusal(static_cast<int>(cc_major), static_cast<int>(cc_minor));
  return why == nullptr ? std::string() : std::string(why);
}

void set_fast_paths(bool enabled) { fast_paths_flag().store(enabled); }

bool fast_paths_enabled() { return fast_paths_flag().load(); }

}  // namespace
}  // namespace memkernels

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.doc() =
      "memkernels CUDA kernels; importing this module registers the memkernels::*_cuda_* ops";
  module.def("kernel_path", &memkernels::kernel_path,
             "'tensor-core', 'vectorized' or 'scalar: <reason>' for an op's forward inputs; "
             "compute_capability (major, minor) stands in for the GPU's",
             pybind11::arg("op"), pybind11::arg("tensors"),
             pybind11::arg("compute_capability") = pybind11::none());
  module.def(
      "tensor_core_arch_reason", &memkernels::tensor_core_arch_reason,
      "'' if a GPU of this compute capability can run the tensor-core kernels, else why not");
  module.def("set_fast_paths", &memkernels::set_fast_paths,
             "turn the tensor-core and vectorized kernels on or off for later calls");
  module.def("fast_paths_enabled", &memkernels::fast_paths_enabled,
             "whether the tensor-core and vectorized kernels may run");
  module.def("tensor_core_head_dims", &memkernels::tensor_core_head_dims,
             "the tensor-core head-dim buckets compiled into this build, e.g. '64,128,256,'");
}
