// Rules shared by the CPU kernels of every family: the accumulation dtype, the memory layouts the kernels address
// in place, and argument checks whose errors reach Python as the right exception type (TORCH_CHECK_VALUE ->
// ValueError, TORCH_CHECK_TYPE -> TypeError).
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <c10/util/Optional.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <initializer_list>

#include <cstdlib>
#include <cstring>

// Marks a helper that only issues prefetches. GCC finds such a function free of side effects and deletes the calls
// to it (so the prefetches vanish) unless it is inlined into its caller first.
#if defined(__GNUC__)
#define STYLEDA_FAST_PREFETCH_HELPER inline __attribute__((always_inline))
#else
#define STYLEDA_FAST_PREFETCH_HELPER inline
#endif

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

// STYLEDA_FAST_CPU_ISA: "generic" forces the portable kernels, "avx2" what an AVX2-only CPU runs (the AVX2 kernels,
// none of the AVX-512 ones); unset or anything else, the best the CPU has.
inline const char* cpu_isa_override() {
  const char* env = std::getenv("STYLEDA_FAST_CPU_ISA");
  return env == nullptr ? "" : env;
}

// Whether the kernels built for AVX2 (+ FMA where a family uses it) run: where the CPU has AVX2 and FMA, unless
// STYLEDA_FAST_CPU_ISA=generic forces the portable ones (to test them, or to compare). Read once per process.
inline bool use_avx2_kernels() {
#if defined(__x86_64__) && defined(__GNUC__)
  static const bool enabled = [] {
    if (std::strcmp(cpu_isa_override(), "generic") == 0) return false;
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }();
  return enabled;
#else
  return false;
#endif
}

// Whether the kernels built for AVX-512 (F, BW, DQ, VL) run: where the CPU has them, unless STYLEDA_FAST_CPU_ISA is
// generic or avx2. Read once per process.
inline bool use_avx512_kernels() {
#if defined(__x86_64__) && defined(__GNUC__)
  static const bool enabled = [] {
    const char* isa = cpu_isa_override();
    if (std::strcmp(isa, "generic") == 0 || std::strcmp(isa, "avx2") == 0) return false;
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
  }();
  return enabled;
#else
  return false;
#endif
}

// Every tensor argument of an operator of a floating dtype, checked before anything else so that a wrong dtype is a
// TypeError whichever argument has it (as the Python rule styleda_fast.core.checks.require_float).
struct NamedTensor {
  const at::Tensor& tensor;
  const char* name;
};

inline void check_float_args(std::initializer_list<NamedTensor> args) {
  for (const NamedTensor& a : args)
    TORCH_CHECK_TYPE(at::isFloatingType(a.tensor.scalar_type()), "styleda_fast: ", a.name,
                     " must be floating point, got ", a.tensor.scalar_type());
}

inline void check_float_arg(const c10::optional<at::Tensor>& t, const char* name) {
  if (t.has_value()) check_float_args({{*t, name}});
}

// An operator's float argument (eps, sigma, feature noise): finite and in [0, float32 max], as the Python rule
// styleda_fast.core.checks.require_scalar (the GPU kernels take it as float32).
inline void check_scalar(double value, const char* name) {
  TORCH_CHECK_VALUE(std::isfinite(value) && value >= 0 && value <= 3.4028234663852886e38, "styleda_fast: ", name,
                    " must be a finite number in [0, 3.403e+38], got ", value);
}

// An output of `elements` elements of `element_size` bytes must fit in the machine's physical memory (a ValueError
// naming the argument that sized it, before allocating), as styleda_fast.core.checks.require_fits.
inline void check_fits(double elements, int64_t element_size, const char* name) {
  const long pages = sysconf(_SC_PHYS_PAGES), page_size = sysconf(_SC_PAGE_SIZE);
  if (pages <= 0 || page_size <= 0) return;
  const double limit = double(pages) * double(page_size), bytes = elements * double(element_size);
  TORCH_CHECK_VALUE(bytes <= limit, "styleda_fast: ", name, ": the output would need ", bytes / 1073741824.0,
                    " GiB, more than the ", limit / 1073741824.0, " GiB of memory of cpu");
}

// Memory layouts the kernels address directly (style_mix_cpu.cpp, class_stats_cpu.cpp; the Python rule is
// styleda_fast.core.checks.batch_strided_layout).

enum class Layout { kNCHW, kNHWC };

// Where each image's elements are: its (C, H, W) elements dense in NCHW or NHWC order, images batch_stride
// elements apart (batch_stride >= C*H*W). Dense NCHW / channels_last tensors have batch_stride = C*H*W; the
// patch tokens of a ViT seen as a (B, C, h, w) grid (styleda_fast.tokens_as_grid) are NHWC with a batch stride
// of (prefix + h*w) * C: the prefix tokens (class token, registers) lie between the images and are never touched.
struct MemoryLayout {
  Layout inner;
  int64_t batch_stride;
};

// Whether t's strides fit (C, H, W) elements dense in the given order; strides of size-1 dims do not matter.
inline bool inner_dense(const at::Tensor& t, Layout layout) {
  const int64_t C = t.size(1), H = t.size(2), W = t.size(3);
  auto fits = [&](int64_t dim, int64_t stride) { return t.size(dim) == 1 || t.stride(dim) == stride; };
  if (layout == Layout::kNCHW) return fits(3, 1) && fits(2, W) && fits(1, H * W);
  return fits(1, 1) && fits(3, C) && fits(2, W * C);
}

// t's layout, or nullopt when the kernels cannot address it directly (then they copy it to NCHW). NCHW wins when
// t is both (C == 1, or H == W == 1): the two address the same elements alike.
inline c10::optional<MemoryLayout> memory_layout(const at::Tensor& t) {
  if (t.dim() != 4) return c10::nullopt;
  const int64_t image = t.size(1) * t.size(2) * t.size(3);
  // A single image may have any batch stride (it means nothing); several must not overlap or run backwards.
  const int64_t batch_stride = t.stride(0) >= image ? t.stride(0) : t.size(0) == 1 ? image : -1;
  if (batch_stride < 0) return c10::nullopt;
  for (Layout layout : {Layout::kNCHW, Layout::kNHWC})
    if (inner_dense(t, layout)) return MemoryLayout{layout, batch_stride};
  return c10::nullopt;
}

// Rows per parallel task of row-wise kernels: about 16K elements of work each.
inline int64_t grain_rows(int64_t work_per_row) {
  return std::max<int64_t>(1, 16384 / std::max<int64_t>(1, work_per_row));
}

// x itself when the kernels address it directly, else an NCHW-contiguous copy.
inline at::Tensor kernel_input(const at::Tensor& x) { return memory_layout(x).has_value() ? x : x.contiguous(); }

}  // namespace styleda_fast
