// Noisy synthesized features of style mining (styleda_fast/ops/feature_noise): relu(std * xn + mean) plus
// feature-noise, with counter_noise.h's generator fused into the pass. The schemas are declared here; fake kernels and
// autograd are registered from styleda_fast/ops/feature_noise/_ops.py.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "common.h"
#include "counter_noise.h"
#include "output_buffers.h"
#include "streaming_stores.h"

TORCH_LIBRARY_FRAGMENT(styleda_fast, m) {
  m.set_python_module("styleda_fast.ops.feature_noise._ops");  // where the fake kernels live
  // relu(std * xn + mean) + feature_noise * eps; xn (B, C, ...) contiguous, mean/std (B, C) in the accumulation dtype.
  m.def(
      "noisy_style_features(Tensor xn, Tensor mean, Tensor std, float feature_noise, int seed, int offset)"
      " -> Tensor");
  // The backward needs no noise (it is added after the ReLU): grad_xn (empty unless compute_grad_xn), and the
  // per-(b, c) sums grad_mean, grad_std (B, C).
  m.def(
      "noisy_style_features_backward(Tensor grad_out, Tensor xn, Tensor mean, Tensor std, bool compute_grad_xn)"
      " -> (Tensor grad_xn, Tensor grad_mean, Tensor grad_std)");
}

namespace styleda_fast {
namespace {

// ======================================= noisy style features =======================================

struct Planes {
  int64_t planes, size;  // B*C planes of `size` elements each
};

Planes check_style_features(const at::Tensor& xn, const at::Tensor& mean, const at::Tensor& std) {
  check_cpu_float(xn, "xn");
  TORCH_CHECK_VALUE(xn.dim() >= 2, "styleda_fast: xn must be (B, C, ...), got ", xn.dim(), " dims");
  const auto acc = acc_dtype(xn);
  for (const auto* p : {&mean, &std}) {
    TORCH_CHECK_VALUE(p->dim() == 2 && p->size(0) == xn.size(0) && p->size(1) == xn.size(1) && p->is_contiguous() &&
                    p->scalar_type() == acc && p->device().is_cpu(),
                "styleda_fast: mean and std must be contiguous (B, C) = (", xn.size(0), ", ", xn.size(1),
                ") CPU tensors of dtype ", acc, ", got ", p->sizes(), " ", p->scalar_type());
  }
  const int64_t planes = xn.size(0) * xn.size(1);
  return {planes, planes == 0 ? 0 : xn.numel() / planes};
}

// relu(z) that keeps NaN (as torch.relu) and gives +0 for -0, as one select on two compares: the nested form
// (z > 0 ? z : (z == z ? 0 : z)) kept the feature loops scalar, with a branch per element.
template <typename A>
inline A relu_keep_nan(A z) {
  return ((z > A(0)) | (z != z)) ? z : A(0);
}

// A fresh contiguous tensor like t: large ones from the output cache (already faulted in when reused: a fresh
// 67 MB at::empty costs page faults comparable to the kernel itself).
at::Tensor contiguous_output_like(const at::Tensor& t) {
  std::vector<int64_t> strides(t.dim(), 1);
  for (int64_t d = t.dim() - 2; d >= 0; --d) strides[d] = strides[d + 1] * std::max<int64_t>(1, t.size(d + 1));
  return empty_output(t.sizes(), strides, 0, t.numel(), t.options());
}

// y = relu_keep_nan(sp * x + mp) + fn * eps for one whole chunk with the vector kernels; false (nothing done) on the
// portable path and for dtypes other than float32.
template <typename T, typename A>
bool feature_chunk_lanes(NoiseIsa, uint64_t, uint32_t, int64_t, const T*, T*, A, A, A, bool) {
  return false;
}

inline bool feature_chunk_lanes(NoiseIsa isa, uint64_t seed, uint32_t offset, int64_t chunk, const float* x, float* y,
                                float sp, float mp, float fn, bool stream) {
#ifdef STYLEDA_FAST_HAVE_NOISE_LANES
  if (isa == NoiseIsa::kAvx512)
    return avx512::feature_chunk_fused(seed, offset, chunk, x, y, sp, mp, fn, stream), true;
  if (isa == NoiseIsa::kAvx2) return avx2::feature_chunk_fused(seed, offset, chunk, x, y, sp, mp, fn, stream), true;
#endif
  return false;
}

at::Tensor noisy_style_features_cpu(const at::Tensor& xn_in, const at::Tensor& mean, const at::Tensor& std,
                                   double noise_scale, int64_t seed, int64_t offset) {
  check_float_args({{xn_in, "xn"}, {mean, "mean"}, {std, "std"}});
  const Planes pl = check_style_features(xn_in, mean, std);
  TORCH_CHECK_VALUE(seed >= 0, "styleda_fast: seed must be in [0, 2^63), got ", seed);
  TORCH_CHECK_VALUE(offset >= 0 && offset < (int64_t(1) << 32), "styleda_fast: offset must be in [0, 2^32), got ", offset);
  check_scalar(noise_scale, "feature_noise");
  const at::Tensor xn = xn_in.contiguous();
  at::Tensor out = contiguous_output_like(xn);
  const int64_t N = xn.numel(), chunk_size = 4 * kFeatureGroups, chunks = (N + chunk_size - 1) / chunk_size;
  if (N == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, xn.scalar_type(), "noisy_style_features_cpu", [&] {
    using A = acc_t<scalar_t>;
    const scalar_t* x = xn.const_data_ptr<scalar_t>();
    scalar_t* y = out.data_ptr<scalar_t>();
    const A* m = mean.const_data_ptr<A>();
    const A* s = std.const_data_ptr<A>();
    const A fn = static_cast<A>(noise_scale);
    // Streaming stores for the fused whole chunks: 4 KB apart, so aligned for any register when y is to 64 bytes.
    const bool stream = use_streaming_stores(out.nbytes()) && reinterpret_cast<std::uintptr_t>(y) % 64 == 0;
    at::parallel_for(0, chunks, 16, [&](int64_t begin, int64_t end) {
      std::vector<float> noise(chunk_size);
      const NoiseIsa isa = noise_isa();
      for (int64_t chunk = begin; chunk < end; ++chunk) {
        const int64_t base = chunk * chunk_size, stop = std::min(base + chunk_size, N);
        // A whole chunk in one plane: the noise never leaves the registers.
        if (fn != A(0) && stop - base == chunk_size && base / pl.size == (stop - 1) / pl.size &&
            feature_chunk_lanes(isa, uint64_t(seed), static_cast<uint32_t>(offset), chunk, x + base, y + base,
                                s[base / pl.size], m[base / pl.size], fn, stream))
          continue;
        if (fn != A(0)) feature_noise(uint64_t(seed), static_cast<uint32_t>(offset), chunk, noise.data());
        for (int64_t e = base; e < stop;) {  // runs of one plane
          const int64_t p = e / pl.size, run_end = std::min(stop, (p + 1) * pl.size);
          const A mp = m[p], sp = s[p];
          const float* nz = noise.data() + (e - base);
          const int64_t n = run_end - e;
          if (fn != A(0)) {
            _Pragma("omp simd")
            for (int64_t i = 0; i < n; ++i) {
              const A z = sp * static_cast<A>(x[e + i]) + mp;
              y[e + i] = static_cast<scalar_t>(relu_keep_nan(z) + fn * static_cast<A>(nz[i]));
            }
          } else {
            _Pragma("omp simd")
            for (int64_t i = 0; i < n; ++i) {
              const A z = sp * static_cast<A>(x[e + i]) + mp;
              y[e + i] = static_cast<scalar_t>(relu_keep_nan(z));
            }
          }
          e = run_end;
        }
      }
      streaming_fence();
    });
  });
  return out;
}

// One plane of the backward of noisy_style_features, in one pass: the sums of the ReLU-masked grad g and of g * x
// (in double), and dx = masked g * std where dx != nullptr.
template <typename T, typename A>
void style_backward_plane(NoiseIsa, const T* x, const T* g, T* dx, int64_t n, A mp, A sp, double& sum_g,
                          double& sum_gx) {
  double sg = 0, sgx = 0;
  if (dx != nullptr) {
#pragma omp simd reduction(+ : sg, sgx)
    for (int64_t i = 0; i < n; ++i) {
      const A xi = static_cast<A>(x[i]), gx = static_cast<A>(g[i]);
      const bool on = sp * xi + mp > A(0);  // the ReLU mask of the forward
      const A gi = on ? gx : A(0);
      sg += double(gi);
      sgx += double(gi) * double(xi);
      dx[i] = static_cast<T>(on ? gx * sp : A(0));
    }
  } else {
#pragma omp simd reduction(+ : sg, sgx)
    for (int64_t i = 0; i < n; ++i) {
      const A xi = static_cast<A>(x[i]);
      const A gi = sp * xi + mp > A(0) ? static_cast<A>(g[i]) : A(0);
      sg += double(gi);
      sgx += double(gi) * double(xi);
    }
  }
  sum_g = sg;
  sum_gx = sgx;
}

// float32: four double partial sums, lane l taking the elements i = l (mod 4) in order, combined as
// (l0 + l2) + (l1 + l3): the order of the vector version (noise_lanes.inc), so every ISA path gives the same bits.
void style_backward_plane(NoiseIsa isa, const float* x, const float* g, float* dx, int64_t n, float mp, float sp,
                          double& sum_g, double& sum_gx) {
#ifdef STYLEDA_FAST_HAVE_NOISE_LANES
  if (isa == NoiseIsa::kAvx512) return avx512::style_backward_plane(x, g, dx, n, sp, mp, sum_g, sum_gx);
  if (isa == NoiseIsa::kAvx2) return avx2::style_backward_plane(x, g, dx, n, sp, mp, sum_g, sum_gx);
#endif
  double lg[4] = {0, 0, 0, 0}, lgx[4] = {0, 0, 0, 0};
  auto step = [&](int64_t i, int l) {
    const float xi = x[i], gx = g[i];
    const bool on = sp * xi + mp > 0.0f;
    const float gi = on ? gx : 0.0f;
    lg[l] += double(gi);
    lgx[l] += double(gi) * double(xi);
    if (dx != nullptr) dx[i] = on ? gx * sp : 0.0f;
  };
  int64_t i = 0;
  for (; i + 4 <= n; i += 4)
    for (int l = 0; l < 4; ++l) step(i + l, l);
  for (; i < n; ++i) step(i, static_cast<int>(i & 3));
  sum_g = (lg[0] + lg[2]) + (lg[1] + lg[3]);
  sum_gx = (lgx[0] + lgx[2]) + (lgx[1] + lgx[3]);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> noisy_style_features_backward_cpu(const at::Tensor& grad_out_in,
                                                                                 const at::Tensor& xn_in,
                                                                                 const at::Tensor& mean,
                                                                                 const at::Tensor& std,
                                                                                 bool compute_grad_xn) {
  check_float_args({{grad_out_in, "grad_out"}, {xn_in, "xn"}, {mean, "mean"}, {std, "std"}});
  const Planes pl = check_style_features(xn_in, mean, std);
  TORCH_CHECK_VALUE(grad_out_in.sizes() == xn_in.sizes() && grad_out_in.scalar_type() == xn_in.scalar_type(),
              "styleda_fast: grad_out must have xn's shape and dtype");
  const at::Tensor xn = xn_in.contiguous(), grad_out = grad_out_in.contiguous();
  at::Tensor grad_mean = at::empty_like(mean), grad_std = at::empty_like(std);
  at::Tensor grad_xn = compute_grad_xn ? contiguous_output_like(xn) : at::empty({0}, xn.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, xn.scalar_type(), "noisy_style_features_backward", [&] {
    using A = acc_t<scalar_t>;
    const scalar_t* x_data = xn.const_data_ptr<scalar_t>();
    const scalar_t* g_data = grad_out.const_data_ptr<scalar_t>();
    scalar_t* dx_data = compute_grad_xn ? grad_xn.data_ptr<scalar_t>() : nullptr;
    const A* m = mean.const_data_ptr<A>();
    const A* s = std.const_data_ptr<A>();
    A* gm = grad_mean.data_ptr<A>();
    A* gs = grad_std.data_ptr<A>();
    const NoiseIsa isa = noise_isa();
    at::parallel_for(0, pl.planes, grain_rows(pl.size), [&](int64_t begin, int64_t end) {
      for (int64_t p = begin; p < end; ++p) {
        const scalar_t* x = x_data + p * pl.size;
        const scalar_t* g = g_data + p * pl.size;
        const A mp = m[p], sp = s[p];
        double sum_g = 0, sum_gx = 0;
        style_backward_plane(isa, x, g, dx_data != nullptr ? dx_data + p * pl.size : nullptr, pl.size, mp, sp,
                             sum_g, sum_gx);
        gm[p] = static_cast<A>(sum_g);
        gs[p] = static_cast<A>(sum_gx);
      }
    });
  });
  return {grad_xn, grad_mean, grad_std};
}


}  // namespace

TORCH_LIBRARY_IMPL(styleda_fast, CPU, m) {
  m.impl("noisy_style_features", &noisy_style_features_cpu);
  m.impl("noisy_style_features_backward", &noisy_style_features_backward_cpu);
}

}  // namespace styleda_fast
