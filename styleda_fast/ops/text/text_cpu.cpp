// Text-side operators (styleda_fast/ops/text/README.md): noisy projection of CLIP text targets and the fused CLIP
// cosine loss of style mining. Schemas are declared here, once, in this family's TORCH_LIBRARY_FRAGMENT; the CPU
// kernels follow. Fake kernels, autograd and the CUDA (Triton) kernels are registered from
// styleda_fast/ops/text/_ops.py. The noise is counter_noise.h's (layouts shared with _triton.py).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "common.h"
#include "counter_noise.h"
#include "output_buffers.h"
#include "streaming_stores.h"


TORCH_LIBRARY_FRAGMENT(styleda_fast, m) {
  m.set_python_module("styleda_fast.ops.text._ops");  // where the fake kernels live
  // text (K, D) -> out (K, samples, D): normalize(normalize(text[k]) + sigma * eps[k, s]); norm (K, samples) is
  // |normalize(text[k]) + sigma * eps[k, s]| in the accumulation dtype (the backward needs it). The noise of sample s
  // is stream offset + s, so samples drawn in pieces with matching offsets equal one draw.
  m.def("noisy_text_projection(Tensor text, float sigma, int samples, int seed, int offset) -> (Tensor out, Tensor norm)");
  m.def("noisy_text_projection_backward(Tensor grad_out, Tensor text, Tensor out, Tensor norm) -> Tensor grad_text");
  // mean over rows of 1 - cos(image[b], text[b]); image and text (B, D). A 0-dim tensor in the accumulation dtype.
  m.def("clip_cosine_loss(Tensor image, Tensor text) -> Tensor loss");
  m.def(
      "clip_cosine_loss_backward(Tensor grad_loss, Tensor image, Tensor text, bool compute_grad_text)"
      " -> (Tensor grad_image, Tensor grad_text)");
}

namespace styleda_fast {
namespace {

constexpr double kNormalizeEps = 1e-12;  // F.normalize's: x / max(|x|, eps)
constexpr double kCosineEps = 1e-8;      // F.cosine_similarity's: each norm clamped to >= eps

void check_rows(const at::Tensor& t, const char* name) {
  check_cpu_float(t, name);
  TORCH_CHECK_VALUE(t.dim() == 2, "styleda_fast: ", name, " must be 2-D (rows, D), got ", t.dim(), " dims");
}

// ======================================= noisy text projection =======================================

// sums[r] = sum over d < D of rows[r][d]^2 in the accumulation type, for R rows at once, in one fixed order (the
// pinned norms depend on it): that of a 16-byte SIMD register of L = 16 / sizeof(A) lanes, lane l summing the
// squares of elements d = l (mod L) of the whole registers in order, the leftover elements added to lane 0, then the
// lanes summed from lane 0 up. The R rows' addition chains are independent, so their latencies overlap.
template <int R, typename T>
void sums_of_squares(const T* const (&rows)[R], int64_t D, acc_t<T> (&sums)[R]) {
  using A = acc_t<T>;
  constexpr int L = 16 / sizeof(A);
  A acc[R][L] = {};
  const int64_t whole = D / L * L;
#if defined(__GNUC__)
  typedef A Lanes __attribute__((vector_size(16)));  // one register per row (plain loops were vectorized across rows)
  Lanes lanes[R] = {};
  for (int64_t d = 0; d < whole; d += L)
    for (int r = 0; r < R; ++r) {
      Lanes v;
      for (int l = 0; l < L; ++l) v[l] = static_cast<A>(rows[r][d + l]);
      lanes[r] += v * v;
    }
  for (int r = 0; r < R; ++r)
    for (int l = 0; l < L; ++l) acc[r][l] = lanes[r][l];
#else
  for (int64_t d = 0; d < whole; d += L)
    for (int r = 0; r < R; ++r)
      for (int l = 0; l < L; ++l) {
        const A v = static_cast<A>(rows[r][d + l]);
        acc[r][l] += v * v;
      }
#endif
  for (int r = 0; r < R; ++r) {
    for (int64_t d = whole; d < D; ++d) {
      const A v = static_cast<A>(rows[r][d]);
      acc[r][0] += v * v;
    }
    A sum = acc[r][0];
    for (int l = 1; l < L; ++l) sum += acc[r][l];
    sums[r] = sum;
  }
}

template <typename T>
acc_t<T> sum_of_squares(const T* row, int64_t D) {
  const T* const rows[1] = {row};
  acc_t<T> sums[1];
  sums_of_squares<1>(rows, D, sums);
  return sums[0];
}

// sums_of_squares for n <= kRowGroup rows.
constexpr int kRowGroup = 4;

template <typename T>
void sums_of_squares_of(int n, const T* const (&rows)[kRowGroup], int64_t D, acc_t<T> (&sums)[kRowGroup]) {
  if (n == kRowGroup) return sums_of_squares<kRowGroup>(rows, D, sums);
  for (int r = 0; r < n; ++r) sums[r] = sum_of_squares(rows[r], D);
}

// One text row k, all its samples: u = t / |t|, v = u + sigma * eps, out = v / |v|, norm = |v|. In the
// accumulation type, SIMD lanes (loops outside AT_DISPATCH so that the simd pragmas apply): the portable path.
template <typename T>
void noisy_text_row(const T* t, T* out, acc_t<T>* norm, int64_t S, int64_t D, double sigma, uint64_t seed,
                    int64_t offset, int64_t k, float* noise, acc_t<T>* u) {
  using A = acc_t<T>;
  const A sg = static_cast<A>(sigma);
  const A inv_t = A(1) / std::max(std::sqrt(sum_of_squares(t, D)), A(kNormalizeEps));
#pragma omp simd
  for (int64_t d = 0; d < D; ++d) u[d] = static_cast<A>(t[d]) * inv_t;
  for (int64_t s = 0; s < S; ++s) {
    T* o = out + s * D;
    text_noise(seed, static_cast<uint32_t>(offset + s), static_cast<uint32_t>(k), D, noise);
    A vv = 0;
#pragma omp simd reduction(+ : vv)
    for (int64_t d = 0; d < D; ++d) {
      const A v = u[d] + sg * static_cast<A>(noise[d]);
      vv += v * v;
    }
    const A vn = std::sqrt(vv), inv_v = A(1) / std::max(vn, A(kNormalizeEps));
    norm[s] = vn;
#pragma omp simd
    for (int64_t d = 0; d < D; ++d) o[d] = static_cast<T>((u[d] + sg * static_cast<A>(noise[d])) * inv_v);
  }
}

// The same for float32 on the vector noise paths, kRowGroup text rows (n <= kRowGroup from row k0) at a time, with
// the same numbers: their norms are summed together (independent addition chains, whose latency dominated one row
// at a time), u and v live in u_rows and v_rows (kRowGroup rows of D floats each, in L1), v gets the noise written
// straight into it, and each output row is copied out, with streaming stores when `stream`.
void noisy_text_rows_lanes(NoiseIsa isa, const float* t, float* out, float* norm, int n, int64_t S, int64_t D,
                           float sg, uint64_t seed, int64_t offset, int64_t k0, bool stream, float* u_rows,
                           float* v_rows) {
  const float* t_rows[kRowGroup];
  float sums[kRowGroup];
  for (int r = 0; r < n; ++r) t_rows[r] = t + r * D;
  sums_of_squares_of(n, t_rows, D, sums);
  for (int r = 0; r < n; ++r) {
    const float inv_t = 1.0f / std::max(std::sqrt(sums[r]), float(kNormalizeEps));
    float* u = u_rows + r * D;
#pragma omp simd
    for (int64_t d = 0; d < D; ++d) u[d] = t_rows[r][d] * inv_t;
  }
  const int64_t outputs = n * S;  // output j: row j / S, sample j % S
  for (int64_t j0 = 0; j0 < outputs; j0 += kRowGroup) {
    const int m = static_cast<int>(std::min<int64_t>(kRowGroup, outputs - j0));
    const float* v_of[kRowGroup];
    for (int i = 0; i < m; ++i) {
      const int64_t r = (j0 + i) / S, s = (j0 + i) % S;
      float* v = v_rows + i * D;
      const auto stream_id = static_cast<uint32_t>(offset + s), row = static_cast<uint32_t>(k0 + r);
#ifdef STYLEDA_FAST_HAVE_NOISE_LANES
      if (isa == NoiseIsa::kAvx512)
        avx512::text_noise_add(seed, stream_id, row, D, u_rows + r * D, sg, v);
      else
        avx2::text_noise_add(seed, stream_id, row, D, u_rows + r * D, sg, v);
#endif
      v_of[i] = v;
    }
    sums_of_squares_of(m, v_of, D, sums);
    for (int i = 0; i < m; ++i) {
      const float vn = std::sqrt(sums[i]), inv_v = 1.0f / std::max(vn, float(kNormalizeEps));
      const float* v = v_rows + i * D;
      float* o = out + (j0 + i) * D;
      norm[j0 + i] = vn;
      if (stream) {
#ifdef STYLEDA_FAST_HAVE_NOISE_LANES
        if (isa == NoiseIsa::kAvx512)
          avx512::stream_scaled(o, v, inv_v, D);
        else
          avx2::stream_scaled(o, v, inv_v, D);
#endif
      } else {
#pragma omp simd
        for (int64_t d = 0; d < D; ++d) o[d] = v[d] * inv_v;
      }
    }
  }
}

// noisy_text_projection on the float32 vector path, when it applies (else false).
template <typename T, typename A>
bool noisy_text_projection_lanes(const T* t, T* out, A* norm, int64_t K, int64_t S, int64_t D, double sigma,
                                 int64_t seed, int64_t offset) {
  const NoiseIsa isa = noise_isa();
  if constexpr (!std::is_same_v<T, float>) {
    return false;
  } else {
    if (isa == NoiseIsa::kGeneric) return false;
    const bool stream = use_streaming_stores(K * S * D * int64_t(sizeof(float)));
    at::parallel_for(0, K, std::max<int64_t>(kRowGroup, grain_rows(S * D)), [&](int64_t begin, int64_t end) {
      std::vector<float> u_rows(kRowGroup * D), v_rows(kRowGroup * D);
      for (int64_t k = begin; k < end; k += kRowGroup) {
        const int n = static_cast<int>(std::min<int64_t>(kRowGroup, end - k));
        noisy_text_rows_lanes(isa, t + k * D, out + k * S * D, norm + k * S, n, S, D, float(sigma), uint64_t(seed),
                              offset, k, stream, u_rows.data(), v_rows.data());
      }
      streaming_fence();
    });
    return true;
  }
}

std::tuple<at::Tensor, at::Tensor> noisy_text_projection_cpu(const at::Tensor& text_in, double sigma, int64_t samples,
                                                             int64_t seed, int64_t offset) {
  check_rows(text_in, "text");
  TORCH_CHECK_VALUE(samples >= 1, "styleda_fast: samples must be >= 1, got ", samples);
  TORCH_CHECK_VALUE(seed >= 0, "styleda_fast: seed must be in [0, 2^63), got ", seed);
  TORCH_CHECK_VALUE(offset >= 0 && offset + samples <= (int64_t(1) << 32),
              "styleda_fast: offset + samples must be in [0, 2^32], got offset ", offset);
  TORCH_CHECK_VALUE(text_in.size(0) < (int64_t(1) << 32), "styleda_fast: at most 2^32 text rows");
  check_scalar(sigma, "sigma");
  check_fits(double(text_in.size(0)) * double(samples) * double(text_in.size(1)), text_in.element_size(), "samples");
  const at::Tensor text = text_in.contiguous();
  const int64_t K = text.size(0), D = text.size(1), S = samples, Q = (D + 3) / 4;
  at::Tensor out = empty_output({K, S, D}, {S * D, D, 1}, 0, K * S * D, text.options());
  at::Tensor norm = at::empty({K, S}, text.options().dtype(acc_dtype(text)));
  if (out.numel() == 0) return {out, norm.zero_()};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, text.scalar_type(), "noisy_text_projection_cpu", [&] {
    using A = acc_t<scalar_t>;
    const scalar_t* t_data = text.const_data_ptr<scalar_t>();
    scalar_t* o_data = out.data_ptr<scalar_t>();
    A* n_data = norm.data_ptr<A>();
    if (noisy_text_projection_lanes(t_data, o_data, n_data, K, S, D, sigma, seed, offset)) return;
    at::parallel_for(0, K, grain_rows(S * D), [&](int64_t begin, int64_t end) {
      std::vector<A> u(D);
      std::vector<float> noise(4 * Q + kLanes);
      for (int64_t k = begin; k < end; ++k)
        noisy_text_row(t_data + k * D, o_data + k * S * D, n_data + k * S, S, D, sigma, uint64_t(seed), offset, k,
                       noise.data(), u.data());
    });
  });
  return {out, norm};
}

// Backward of one text row: grad_v_s = (g_s - out_s (g_s . out_s)) / |v_s|, grad_u = sum_s grad_v_s,
// grad_t = (grad_u - u (grad_u . u)) / |t| (with F.normalize's clamp: a norm below 1e-12 divides by 1e-12 and has
// no projection term). No noise is needed.
template <typename T>
void noisy_text_row_backward(const T* g_rows, const T* o_rows, const acc_t<T>* norm, const T* t, T* gt, int64_t S,
                             int64_t D, acc_t<T>* gu) {
  using A = acc_t<T>;
  std::fill(gu, gu + D, A(0));
  for (int64_t s = 0; s < S; ++s) {
    const T* g = g_rows + s * D;
    const T* o = o_rows + s * D;
    const A vn = norm[s];
    A go = 0;
#pragma omp simd reduction(+ : go)
    for (int64_t d = 0; d < D; ++d) go += static_cast<A>(g[d]) * static_cast<A>(o[d]);
    const bool clamped = !(vn > A(kNormalizeEps));
    const A inv = A(1) / (clamped ? A(kNormalizeEps) : vn), proj = clamped ? A(0) : go;
#pragma omp simd
    for (int64_t d = 0; d < D; ++d) gu[d] += (static_cast<A>(g[d]) - static_cast<A>(o[d]) * proj) * inv;
  }
  A tt = 0, gut = 0;
#pragma omp simd reduction(+ : tt, gut)
  for (int64_t d = 0; d < D; ++d) {
    const A td = static_cast<A>(t[d]);
    tt += td * td;
    gut += gu[d] * td;  // grad_u . t; (grad_u . u) u / |t| = (grad_u . t) t / |t|^3
  }
  const A tn = std::sqrt(tt);
  const bool clamped = !(tn > A(kNormalizeEps));
  const A inv = A(1) / (clamped ? A(kNormalizeEps) : tn), proj = clamped ? A(0) : gut / tt;
#pragma omp simd
  for (int64_t d = 0; d < D; ++d) gt[d] = static_cast<T>((gu[d] - static_cast<A>(t[d]) * proj) * inv);
}

at::Tensor noisy_text_projection_backward_cpu(const at::Tensor& grad_out_in, const at::Tensor& text_in,
                                              const at::Tensor& out_in, const at::Tensor& norm_in) {
  check_float_args({{grad_out_in, "grad_out"}, {text_in, "text"}, {out_in, "out"}, {norm_in, "norm"}});
  check_rows(text_in, "text");
  const at::Tensor text = text_in.contiguous();
  const int64_t K = text.size(0), D = text.size(1);
  TORCH_CHECK_VALUE(out_in.dim() == 3 && out_in.size(0) == K && out_in.size(2) == D,
              "styleda_fast: out must be (K, samples, D)");
  const int64_t S = out_in.size(1);
  TORCH_CHECK_VALUE(grad_out_in.sizes() == out_in.sizes(), "styleda_fast: grad_out must have out's shape");
  TORCH_CHECK_VALUE(norm_in.dim() == 2 && norm_in.size(0) == K && norm_in.size(1) == S,
              "styleda_fast: norm must be (K, samples)");
  TORCH_CHECK_VALUE(grad_out_in.scalar_type() == text.scalar_type() && out_in.scalar_type() == text.scalar_type() &&
                  norm_in.scalar_type() == acc_dtype(text),
              "styleda_fast: grad_out and out must have text's dtype, norm its accumulation dtype");
  const at::Tensor grad_out = grad_out_in.contiguous(), out = out_in.contiguous(), norm = norm_in.contiguous();
  at::Tensor grad_text = at::empty_like(text);
  if (grad_text.numel() == 0) return grad_text;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, text.scalar_type(), "noisy_text_projection_backward", [&] {
    using A = acc_t<scalar_t>;
    const scalar_t* t_data = text.const_data_ptr<scalar_t>();
    const scalar_t* g_data = grad_out.const_data_ptr<scalar_t>();
    const scalar_t* o_data = out.const_data_ptr<scalar_t>();
    const A* n_data = norm.const_data_ptr<A>();
    scalar_t* gt_data = grad_text.data_ptr<scalar_t>();
    at::parallel_for(0, K, grain_rows(S * D), [&](int64_t begin, int64_t end) {
      std::vector<A> gu(D);
      for (int64_t k = begin; k < end; ++k)
        noisy_text_row_backward(g_data + k * S * D, o_data + k * S * D, n_data + k * S, t_data + k * D,
                                gt_data + k * D, S, D, gu.data());
    });
  });
  return grad_text;
}

// ======================================= CLIP cosine loss =======================================

struct RowDots {
  double zt, zz, tt;
};

// Dot products of one row pair, in the accumulation type with SIMD lanes (D is at most a few thousand).
template <typename T>
RowDots row_dots(const T* z, const T* t, int64_t D) {
  using A = acc_t<T>;
  A zt = 0, zz = 0, tt = 0;
#pragma omp simd reduction(+ : zt, zz, tt)
  for (int64_t d = 0; d < D; ++d) {
    const A a = static_cast<A>(z[d]), b = static_cast<A>(t[d]);
    zt += a * b;
    zz += a * a;
    tt += b * b;
  }
  return {double(zt), double(zz), double(tt)};
}

void check_pair(const at::Tensor& image, const at::Tensor& text) {
  check_rows(image, "image");
  check_rows(text, "text");
  TORCH_CHECK_VALUE(image.sizes() == text.sizes() && image.scalar_type() == text.scalar_type(),
              "styleda_fast: image and text must have the same shape and dtype, got ", image.sizes(), " ",
              image.scalar_type(), " and ", text.sizes(), " ", text.scalar_type());
}

at::Tensor clip_cosine_loss_cpu(const at::Tensor& image_in, const at::Tensor& text_in) {
  check_float_args({{image_in, "image"}, {text_in, "text"}});
  check_pair(image_in, text_in);
  const at::Tensor image = image_in.contiguous(), text = text_in.contiguous();
  const int64_t B = image.size(0), D = image.size(1);
  TORCH_CHECK_VALUE(B >= 1, "styleda_fast: clip_cosine_loss needs at least one row");
  std::vector<double> cos(B);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, image.scalar_type(), "clip_cosine_loss_cpu", [&] {
    const scalar_t* z = image.const_data_ptr<scalar_t>();
    const scalar_t* t = text.const_data_ptr<scalar_t>();
    at::parallel_for(0, B, grain_rows(D), [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        const RowDots r = row_dots(z + b * D, t + b * D, D);
        cos[b] = r.zt / (std::max(std::sqrt(r.zz), kCosineEps) * std::max(std::sqrt(r.tt), kCosineEps));
      }
    });
  });
  double sum = 0;  // fixed order: deterministic
  for (int64_t b = 0; b < B; ++b) sum += 1.0 - cos[b];
  return at::full({}, sum / double(B), image.options().dtype(acc_dtype(image)));
}

// cos = z.t / (nz nt) with nz = max(|z|, 1e-8), nt likewise; loss = mean(1 - cos). With coef = -grad_loss / B:
//   grad_z = coef (t / (nz nt) - cos z / nz^2),  grad_t = coef (z / (nz nt) - cos t / nt^2)
// (the second term vanishes where the norm is clamped).
// Writes grad = cross * other - self * own for one row, in the accumulation type.
template <typename T>
void cosine_row_grad(T* grad, const T* own, const T* other, double cross, double self, int64_t D) {
  using A = acc_t<T>;
  const A cr = static_cast<A>(cross), sf = static_cast<A>(self);
#pragma omp simd
  for (int64_t d = 0; d < D; ++d) grad[d] = static_cast<T>(cr * static_cast<A>(other[d]) - sf * static_cast<A>(own[d]));
}

std::tuple<at::Tensor, at::Tensor> clip_cosine_loss_backward_cpu(const at::Tensor& grad_loss, const at::Tensor& image_in,
                                                                 const at::Tensor& text_in, bool compute_grad_text) {
  check_float_args({{grad_loss, "grad_loss"}, {image_in, "image"}, {text_in, "text"}});
  check_pair(image_in, text_in);
  TORCH_CHECK_VALUE(grad_loss.numel() == 1, "styleda_fast: grad_loss must have one element");
  const at::Tensor image = image_in.contiguous(), text = text_in.contiguous();
  const int64_t B = image.size(0), D = image.size(1);
  at::Tensor grad_image = at::empty_like(image);
  at::Tensor grad_text = compute_grad_text ? at::empty_like(text) : at::empty({0}, text.options());
  const double coef = -grad_loss.item<double>() / double(B);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, image.scalar_type(), "clip_cosine_loss_backward", [&] {
    const scalar_t* z_data = image.const_data_ptr<scalar_t>();
    const scalar_t* t_data = text.const_data_ptr<scalar_t>();
    scalar_t* gz_data = grad_image.data_ptr<scalar_t>();
    scalar_t* gt_data = compute_grad_text ? grad_text.data_ptr<scalar_t>() : nullptr;
    at::parallel_for(0, B, grain_rows(D), [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        const scalar_t* z = z_data + b * D;
        const scalar_t* t = t_data + b * D;
        const RowDots r = row_dots(z, t, D);
        const double zn = std::sqrt(r.zz), tn = std::sqrt(r.tt);
        const double nz = std::max(zn, kCosineEps), nt = std::max(tn, kCosineEps), c = r.zt / (nz * nt);
        const double cross = coef / (nz * nt);
        const double self_z = zn > kCosineEps ? coef * c / (nz * nz) : 0.0;
        const double self_t = tn > kCosineEps ? coef * c / (nt * nt) : 0.0;
        cosine_row_grad(gz_data + b * D, z, t, cross, self_z, D);
        if (gt_data != nullptr) cosine_row_grad(gt_data + b * D, t, z, cross, self_t, D);
      }
    });
  });
  return {grad_image, grad_text};
}


}  // namespace

TORCH_LIBRARY_IMPL(styleda_fast, CPU, m) {
  m.impl("noisy_text_projection", &noisy_text_projection_cpu);
  m.impl("noisy_text_projection_backward", &noisy_text_projection_backward_cpu);
  m.impl("clip_cosine_loss", &clip_cosine_loss_cpu);
  m.impl("clip_cosine_loss_backward", &clip_cosine_loss_backward_cpu);
}

}  // namespace styleda_fast
