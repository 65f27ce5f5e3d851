// Rules shared by the CPU kernels of every family: the accumulation dtype and argument checks whose errors
// reach Python as the right exception type (TORCH_CHECK_VALUE -> ValueError, TORCH_CHECK_TYPE -> TypeError).
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>

namespace styleda_fast {

// Statistics and reductions accumulate in float64 for float64 inputs, else float32 (at::opmath_type gives
// exactly that for the dtypes the operators take: half, bfloat16, float, double).
template <typename T>
using acc_t = at::opmath_type<T>;

inline at::ScalarType acc_dtype(const at::Tensor& x) {
  return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// A CPU tensor of a floating dtype.
inline void check_cpu_float(const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.device().is_cpu(), "styleda_fast: ", name, " must be a CPU tensor for the CPU kernel");
  TORCH_CHECK_TYPE(at::isFloatingType(t.scalar_type()), "styleda_fast: ", name, " must be floating point, got ",
                   t.scalar_type());
}

}  // namespace styleda_fast
