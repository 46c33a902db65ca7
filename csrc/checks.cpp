// Argument checks of the memkernels::*_cuda_* ops: see checks.h.
#include "checks.h"

#include <c10/util/Exception.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

namespace memkernels {
namespace {

// Rows of a (B, H, rows) statistic and the one-block-per-row grids of the
// fallback kernels are indexed with 32-bit block indices.
constexpr int64_t kMaxIndex = std::numeric_limits<int32_t>::max();

const char* dim_name(char letter) {
  switch (letter) {
    case 'B':
      return "batch size";
    case 'L':
      return "token count";
    case 'K':
      return "slot count";
    case 'H':
      return "head count";
    case 'D':
      return "head dim";
    default:
      return "memory width";  // 'W'
  }
}

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
                  ", expected float32, float16 or bfloat16 (the CUDA backend has no float64 "
                  "kernels; use backend='torch' for float64)");
  }
  return DType::Float32;  // unreachable: TORCH_CHECK(false) throws
}

void check_same_device(const char* op, const char* name, const Tensor& t, const char* ref_name,
                       const Tensor& ref) {
  TORCH_CHECK(t.device() == ref.device(), op, ": ", name, " is on ", t.device(), ", expected ",
              ref.device(), " (the device of ", ref_name, "); all inputs must share one device");
}

// Checks tensors against layouts such as "BLHD": the first tensor fixes the
// dtype, the device and each letter's size; every later one must agree.
class LayoutChecker {
 public:
  explicit LayoutChecker(const char* op) : op_(op) {}

  void check(const char* name, const Tensor& t, const char* layout) {
    const int64_t rank = static_cast<int64_t>(std::strlen(layout));
    TORCH_CHECK(t.dim() == rank, op_, ": ", name, " has shape ", t.sizes(), ", expected a ", rank,
                "-d tensor (", layout_string(layout), ")");
    dtype_of(op_, name, t);
    if (first_ == nullptr) {
      first_ = &t;
      first_name_ = name;
    } else {
      TORCH_CHECK(t.scalar_type() == first_->scalar_type(), op_, ": ", name, " has dtype ",
                  t.scalar_type(), ", expected ", first_->scalar_type(), " (the dtype of ",
                  first_name_, ")");
      check_same_device(op_, name, t, first_name_, *first_);
    }
    for (int64_t dim = 0; dim < rank; ++dim) {
      const char letter = layout[dim];
      const int64_t size = t.size(dim);
      TORCH_CHECK(size >= 1, op_, ": ", name, " has an empty ", dim_name(letter), " (", letter,
                  " = 0 in shape ", t.sizes(), "), expected at least 1");
      TORCH_CHECK(size <= kMaxIndex, op_, ": ", name, " has ", dim_name(letter), " ", letter, " = ",
                  size, ", expected at most ", kMaxIndex, " (32-bit grid indices)");
      const size_t slot = static_cast<size_t>(letter);
      if (sizes_[slot] == 0) {
        sizes_[slot] = size;
        sources_[slot] = name;
        continue;
      }
      TORCH_CHECK(size == sizes_[slot], op_, ": ", name, " has ", dim_name(letter), " ", letter,
                  " = ", size, " (dim ", dim, " of shape ", t.sizes(), "), expected ", sizes_[slot],
                  " to match ", sources_[slot]);
    }
  }

  int64_t size(char letter) const { return sizes_[static_cast<size_t>(letter)]; }

 private:
  static std::string layout_string(const char* layout) {
    std::string s;
    for (const char* c = layout; *c != '\0'; ++c) {
      if (!s.empty()) s += ", ";
      s += *c;
    }
    return s;
  }

  const char* op_;
  const Tensor* first_ = nullptr;
  const char* first_name_ = nullptr;
  int64_t sizes_[128] = {};
  const char* sources_[128] = {};
};

void check_head_dim(const char* op, const char* name, int64_t D) {
  TORCH_CHECK(D <= kMaxHeadDim, op, ": ", name, " has head dim D = ", D, ", expected at most ",
              kMaxHeadDim, " (the largest head dim of the CUDA attention kernels)");
}

void check_rows(const char* op, const char* what, int64_t B, int64_t H, int64_t rows) {
  TORCH_CHECK(B * H <= kMaxIndex / rows, op, ": B * H * ", what, " = ", B, " * ", H, " * ", rows,
              ", expected at most ", kMaxIndex, " (32-bit row indices of the statistics)");
}

}  // namespace

AttentionSizes check_memory_read(const char* op, const Tensor& q, const Tensor& k,
                                 const Tensor& v) {
  LayoutChecker layout(op);
  layout.check("q", q, "BLHD");
  layout.check("k", k, "BKHD");
  layout.check("v", v, "BKHD");
  const AttentionSizes s{layout.size('B'), layout.size('L'), layout.size('K'),
                         layout.size('H'), layout.size('D'), dtype_of(op, "q", q)};
  check_head_dim(op, "q", s.D);
  check_rows(op, "L", s.B, s.H, s.rows);
  check_rows(op, "K", s.B, s.H, s.keys);
  return s;
}

AttentionSizes check_slot_attention(const char* op, const Tensor& q, const Tensor& k,
                                    const Tensor& v, const Tensor& k_tok, const Tensor& v_tok,
                                    const std::optional<Tensor>& key_padding_mask) {
  LayoutChecker layout(op);
  layout.check("q", q, "BKHD");
  layout.check("k", k, "BKHD");
  layout.check("v", v, "BKHD");
  layout.check("k_tok", k_tok, "BLHD");
  layout.check("v_tok", v_tok, "BLHD");
  const AttentionSizes s{layout.size('B'), layout.size('K'), layout.size('L'),
                         layout.size('H'), layout.size('D'), dtype_of(op, "q", q)};
  if (key_padding_mask.has_value()) {
    const Tensor& mask = *key_padding_mask;
    TORCH_CHECK(mask.scalar_type() == at::kBool, op, ": key_padding_mask has dtype ",
                mask.scalar_type(), ", expected bool (True = real token)");
    TORCH_CHECK(mask.dim() == 2 && mask.size(0) == s.B && mask.size(1) == s.keys, op,
                ": key_padding_mask has shape ", mask.sizes(), ", expected (B, L) = (", s.B, ", ",
                s.keys, ")");
    check_same_device(op, "key_padding_mask", mask, "q", q);
  }
  check_head_dim(op, "q", s.D);
  check_rows(op, "K", s.B, s.H, s.rows);
  check_rows(op, "L", s.B, s.H, s.keys);
  return s;
}

NormSizes check_memory_norm(const char* op, const Tensor& m, const Tensor& bias) {
  LayoutChecker layout(op);
  layout.check("m", m, "BKW");
  layout.check("bias", bias, "KW");
  const NormSizes s{layout.size('B'), layout.size('K'), layout.size('W'), dtype_of(op, "m", m)};
  check_rows(op, "K (rows)", s.B, 1, s.K);
  return s;
}

NormSizes check_memory_norm_output(const char* op, const Tensor& out) {
  LayoutChecker layout(op);
  layout.check("out", out, "BKW");
  const NormSizes s{layout.size('B'), layout.size('K'), layout.size('W'), dtype_of(op, "out", out)};
  check_rows(op, "K (rows)", s.B, 1, s.K);
  return s;
}

void check_like(const char* op, const char* name, const Tensor& t, const char* ref_name,
                const Tensor& ref) {
  TORCH_CHECK(t.sizes() == ref.sizes(), op, ": ", name, " has shape ", t.sizes(),
              ", expected the shape of ", ref_name, " ", ref.sizes());
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), op, ": ", name, " has dtype ", t.scalar_type(),
              ", expected ", ref.scalar_type(), " (the dtype of ", ref_name, ")");
  check_same_device(op, name, t, ref_name, ref);
}

void check_statistic(const char* op, const char* name, const Tensor& t,
                     std::initializer_list<int64_t> shape, const char* shape_names,
                     const Tensor& ref) {
  const std::vector<int64_t> expected(shape);
  TORCH_CHECK(t.sizes() == at::IntArrayRef(expected), op, ": ", name, " has shape ", t.sizes(),
              ", expected ", shape_names, " = ", at::IntArrayRef(expected));
  TORCH_CHECK(t.scalar_type() == at::kFloat, op, ": ", name, " has dtype ", t.scalar_type(),
              ", expected float32 (the statistic the forward saves)");
  check_same_device(op, name, t, "the inputs", ref);
}

void check_finite(const char* op, const char* name, double value) {
  TORCH_CHECK(std::isfinite(value), op, ": ", name, " = ", value, ", expected a finite number");
}

void check_positive(const char* op, const char* name, double value) {
  TORCH_CHECK(std::isfinite(value) && value > 0, op, ": ", name, " = ", value,
              ", expected a finite number > 0");
}

void require_cuda(const char* op, std::initializer_list<Named> tensors) {
  for (const Named& t : tensors) {
    TORCH_CHECK(t.tensor->is_cuda(), op, ": ", t.name, " must be a CUDA tensor, got device ",
                t.tensor->device());
  }
}

}  // namespace memkernels
