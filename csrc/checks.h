// Argument checks of the registered ops memkernels::*_cuda_*.
//
// Every check here runs on any device: the ops validate rank, sizes, dtypes,
// statistics, masks, scalars and index limits first, and only then ask for
// CUDA tensors (require_cuda). The CPU registration of the same ops therefore
// exercises every check on a machine without a GPU, and no malformed input can
// reach a pointer. Each failure is a c10::Error (RuntimeError in Python) that
// names the op, the argument, the expected and the actual value.
#pragma once

#include <ATen/core/Tensor.h>

#include <initializer_list>
#include <optional>
#include <utility>

#include "memkernels.h"

namespace memkernels {

using at::Tensor;

// A tensor with the name its argument has in the op schema.
struct Named {
  const char* name;
  const Tensor* tensor;
};

// The validated sizes of an attention op. `rows` are the queries (tokens for
// memory_read, slots for slot_attention), `keys` the keys streamed per row
// besides a slot's own (slots for memory_read, tokens for slot_attention).
struct AttentionSizes {
  int64_t B, rows, keys, H, D;
  DType dtype;
};

struct NormSizes {
  int64_t B, K, W;
  DType dtype;
};

// q (B, L, H, D), k and v (B, K, H, D).
AttentionSizes check_memory_read(const char* op, const Tensor& q, const Tensor& k, const Tensor& v);

// q, k, v (B, K, H, D), k_tok and v_tok (B, L, H, D), mask (B, L) bool or none.
AttentionSizes check_slot_attention(const char* op, const Tensor& q, const Tensor& k,
                                    const Tensor& v, const Tensor& k_tok, const Tensor& v_tok,
                                    const std::optional<Tensor>& key_padding_mask);

// m (B, K, W), bias (K, W).
NormSizes check_memory_norm(const char* op, const Tensor& m, const Tensor& bias);

// out (B, K, W), the backward's reference layout.
NormSizes check_memory_norm_output(const char* op, const Tensor& out);

// `t` has the shape, dtype and device of `ref` (a gradient or a saved output).
void check_like(const char* op, const char* name, const Tensor& t, const char* ref_name,
                const Tensor& ref);

// A saved float32 statistic (lse, norm) of the given shape, on ref's device.
void check_statistic(const char* op, const char* name, const Tensor& t,
                     std::initializer_list<int64_t> shape, const char* shape_names,
                     const Tensor& ref);

void check_finite(const char* op, const char* name, double value);
void check_positive(const char* op, const char* name, double value);

// The last check of every op: all tensors are CUDA tensors (one device was
// checked before). CPU tensors end here with "<op>: q must be a CUDA tensor".
void require_cuda(const char* op, std::initializer_list<Named> tensors);

}  // namespace memkernels
