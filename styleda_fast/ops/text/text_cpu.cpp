// Text-side operators (styleda_fast/ops/text/README.md): noisy projection of CLIP text targets, the fused CLIP cosine loss
// of style mining, and the noisy synthesized features of style mining. Schemas are declared here, once, in this
// family's TORCH_LIBRARY_FRAGMENT; the CPU kernels follow. Fake kernels, autograd and the CUDA (Triton) kernels are
// registered from styleda_fast/ops/text/_ops.py.
//
// Noise: counter-based Philox4x32-10 (the generator of tl.philox / tl.randn), keyed by the 64-bit seed, with a
// counter that names the element being drawn, so a value never depends on thread count or scheduling. Each counter
// gives four uniforms and, by Box-Muller on pairs, four normals, with the same integer-to-float and Box-Muller steps
// as triton.language.random. The layouts (which counter and which of its four outputs serves which element) are the
// same as in styleda_fast/ops/text/_triton.py:
//  * text noise eps[k, s, d]: Q = ceil(D/4), d = q*Q + j: output q of counter (j, offset + s, k, kTextTag);
//  * feature noise eps[e] (e: flat element index): chunks of 4*L elements, e = chunk*4L + q*L + j: output q of
//    counter (g_lo, g_hi, offset, kFeatureTag) with g = chunk*L + j (64-bit).
// The CPU computes log, sin and cos with its own float32 polynomials (and cos/sin of 2*pi*u by reduction in turns),
// the GPU with its math library, so the two agree only up to a few float32 ulps; the package documents them as
// different (equally distributed) draws.
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
#include "output_buffers.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

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

// The feature-noise operators share this file's Philox generator; their Python side is ops/feature_noise.
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

// ======================================= Philox4x32-10 and normals =======================================

constexpr uint32_t kRoundA = 0xD2511F53u, kRoundB = 0xCD9E8D57u;  // multipliers
constexpr uint32_t kKeyA = 0x9E3779B9u, kKeyB = 0xBB67AE85u;      // Weyl key increments
constexpr uint32_t kTextTag = 0x54455854u;                        // "TEXT": keeps text and feature streams apart
constexpr uint32_t kFeatureTag = 0x46454154u;                     // "FEAT"
constexpr int64_t kFeatureGroups = 256;                           // L: counters per chunk of 4*L feature elements

// The portable generator works on kLanes counters at a time: Philox rounds and Box-Muller as loops over lanes that
// the compiler vectorizes (float32 polynomials for log, sin and cos instead of scalar libm calls). The AVX2 and
// AVX-512 kernels (noise_lanes.inc) do the same steps on whole registers.
constexpr int64_t kLanes = 64;

inline float bits_to_float(uint32_t b) {
  float f;
  std::memcpy(&f, &b, sizeof(f));
  return f;
}

inline uint32_t float_to_bits(float f) {
  uint32_t b;
  std::memcpy(&b, &f, sizeof(b));
  return b;
}

// Natural log of a positive normal float (Cephes logf: frexp split, degree-9 polynomial; ~1 ulp).
inline float log_positive(float x) {
  const uint32_t bits = float_to_bits(x);
  float e = static_cast<float>(static_cast<int32_t>(bits >> 23) - 126);
  const uint32_t mbits = (bits & 0x007FFFFFu) | 0x3F000000u;
  float m = bits_to_float(mbits);  // x = m * 2^e, m in [0.5, 1)
  // 1 when m < sqrt(1/2), else 0, by a sign bit (mbits - threshold is small and signed): no compare, no branch
  const float small = static_cast<float>(static_cast<int32_t>((mbits - 0x3F3504F3u) >> 31));
  e -= small;
  m = m * (1.0f + small) - 1.0f;
  const float z = m * m;
  float y = 7.0376836292e-2f;
  y = y * m - 1.1514610310e-1f;
  y = y * m + 1.1676998740e-1f;
  y = y * m - 1.2420140846e-1f;
  y = y * m + 1.4249322787e-1f;
  y = y * m - 1.6668057665e-1f;
  y = y * m + 2.0000714765e-1f;
  y = y * m - 2.4999993993e-1f;
  y = y * m + 3.3333331174e-1f;
  y = y * m * z;
  y += -2.12194440e-4f * e;
  y += -0.5f * z;
  return m + y + 0.693359375f * e;
}

// sqrt(x) for x > 0 by Newton on 1/sqrt(x) from the bit-trick guess (3 steps: float accuracy). std::sqrt would
// keep the loop scalar: without -fno-math-errno the compiler must branch to set errno for negative inputs.
inline float sqrt_positive(float x) {
  float y = bits_to_float(0x5F3759DFu - (float_to_bits(x) >> 1));
  y = y * (1.5f - 0.5f * x * y * y);
  y = y * (1.5f - 0.5f * x * y * y);
  y = y * (1.5f - 0.5f * x * y * y);
  return x * y;
}

// cos and sin of 2*pi*u for u in [0, 1): exact reduction in turns to [-1/8, 1/8], Cephes polynomials, then a
// rotation by whole quarter turns done with bit operations (no branches, so the calling loop vectorizes).
inline void cos_sin_turns(float u, float& c, float& s) {
  const float r = u - static_cast<float>(static_cast<int32_t>(u + 0.5f));                // [-0.5, 0.5)
  const int32_t k = static_cast<int32_t>(4.0f * r + 2.5f);                                 // round(4r) + 2
  const float a = (r - 0.25f * static_cast<float>(k - 2)) * 6.283185307f;                 // [-pi/4, pi/4]
  const float z = a * a;
  const float sa = ((-1.9515295891e-4f * z + 8.3321608736e-3f) * z - 1.6666654611e-1f) * z * a + a;
  const float ca = ((2.443315711809948e-5f * z - 1.388731625493765e-3f) * z + 4.166664568298827e-2f) * z * z -
                   0.5f * z + 1.0f;
  // quarter turns q = k - 2 (mod 4 = k + 2): q=0 (ca, sa), 1 (-sa, ca), 2 (-ca, -sa), 3 (sa, -ca)
  const uint32_t q = static_cast<uint32_t>(k + 2) & 3u;
  const uint32_t swap = 0u - (q & 1u);                        // all ones for odd q
  const uint32_t neg_c = ((q ^ (q >> 1)) & 1u) << 31;         // q = 1, 2
  const uint32_t neg_s = (q >> 1) << 31;                      // q = 2, 3
  const uint32_t cb = float_to_bits(ca), sb = float_to_bits(sa);
  c = bits_to_float(((cb & ~swap) | (sb & swap)) ^ neg_c);
  s = bits_to_float(((sb & ~swap) | (cb & swap)) ^ neg_s);
}

// Philox4x32-10 of kLanes counters (c0[j], c1[j], c2, c3) with key seed: the four output words of lane j in
// w[0..3][j]. Portable version: a loop over lanes per round, which the compiler vectorizes through memory.
void philox_words_generic(uint64_t seed, const uint32_t* c0_in, const uint32_t* c1_in, uint32_t c2, uint32_t c3,
                          uint32_t w[4][kLanes]) {
  uint32_t* x0 = w[0];
  uint32_t* x1 = w[1];
  uint32_t* x2 = w[2];
  uint32_t* x3 = w[3];
#pragma omp simd
  for (int64_t j = 0; j < kLanes; ++j) {
    x0[j] = c0_in[j];
    x1[j] = c1_in[j];
    x2[j] = c2;
    x3[j] = c3;
  }
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int round = 0; round < 10; ++round) {
#pragma omp simd
    for (int64_t j = 0; j < kLanes; ++j) {
      const uint64_t pb = uint64_t(kRoundB) * x2[j], pa = uint64_t(kRoundA) * x0[j];
      x0[j] = static_cast<uint32_t>(pb >> 32) ^ x1[j] ^ k0;
      x2[j] = static_cast<uint32_t>(pa >> 32) ^ x3[j] ^ k1;
      x1[j] = static_cast<uint32_t>(pb);
      x3[j] = static_cast<uint32_t>(pa);
    }
    k0 += kKeyA;
    k1 += kKeyB;
  }
}

// uint32 words -> four standard normals per lane: uint32 -> [0, 1) as tl.uint_to_uniform_float (read as int32,
// negatives folded with ~, times (2^23-1)/2^23 * 2^-31), then Box-Muller on (u0, u1) and (u2, u3) with u clamped
// at 1e-7, as tl.pair_uniform_to_normal. out[q][j].
inline void box_muller_words(uint32_t w[4][kLanes], float out[4][kLanes]) {
  for (int pair = 0; pair < 2; ++pair) {
    const uint32_t* wa = w[2 * pair];
    const uint32_t* wb = w[2 * pair + 1];
    float* na = out[2 * pair];
    float* nb = out[2 * pair + 1];
#pragma omp simd
    for (int64_t j = 0; j < kLanes; ++j) {
      const int32_t ia = static_cast<int32_t>(wa[j]), ib = static_cast<int32_t>(wb[j]);
      const float u = static_cast<float>(ia ^ (ia >> 31)) * 4.6566127342e-10f;  // ~ia for negative ia
      // u1 = max(u, 1e-7) on the bits (ordered like the values for floats >= 0): a compare would keep the loop scalar
      const uint32_t ub = float_to_bits(u), tb = float_to_bits(1.0e-7f), below = 0u - ((ub - tb) >> 31);
      const float u1 = bits_to_float((ub & ~below) | (tb & below));
      const float u2 = static_cast<float>(ib ^ (ib >> 31)) * 4.6566127342e-10f;
      const float r = sqrt_positive(-2.0f * log_positive(u1));  // u1 < 1, so the argument is > 0
      float c, s;
      cos_sin_turns(u2, c, s);
      na[j] = r * c;
      nb[j] = r * s;
    }
  }
}

void philox_normals_generic(uint64_t seed, const uint32_t* c0, const uint32_t* c1, uint32_t c2, uint32_t c3,
                            float out[4][kLanes]) {
  alignas(64) uint32_t w[4][kLanes];
  philox_words_generic(seed, c0, c1, c2, c3, w);
  box_muller_words(w, out);
}

// noise[q*Q + j] = output q of counter (j, stream, row, kTextTag), for j < Q: coordinates 0..4Q-1 of one sample.
void text_noise_generic(uint64_t seed, uint32_t stream, uint32_t row, int64_t Q, float* noise) {
  alignas(64) uint32_t c0[kLanes], c1[kLanes];
  alignas(64) float n[4][kLanes];
  for (int64_t j0 = 0; j0 < Q; j0 += kLanes) {
    for (int64_t j = 0; j < kLanes; ++j) c0[j] = static_cast<uint32_t>(j0 + j), c1[j] = stream;
    philox_normals_generic(seed, c0, c1, row, kTextTag, n);
    const int64_t count = std::min(kLanes, Q - j0);
    for (int q = 0; q < 4; ++q) std::memcpy(noise + q * Q + j0, n[q], count * sizeof(float));
  }
}

// noise[q*L + j] = output q of counter (g_lo, g_hi, offset, kFeatureTag), g = chunk*L + j: one chunk of 4L elements.
void feature_noise_generic(uint64_t seed, uint32_t offset, int64_t chunk, float* noise) {
  static_assert(kFeatureGroups % kLanes == 0, "a chunk is a whole number of lane blocks");
  alignas(64) uint32_t c0[kLanes], c1[kLanes];
  alignas(64) float n[4][kLanes];
  for (int64_t j0 = 0; j0 < kFeatureGroups; j0 += kLanes) {
    for (int64_t j = 0; j < kLanes; ++j) {
      const uint64_t g = static_cast<uint64_t>(chunk * kFeatureGroups + j0 + j);
      c0[j] = static_cast<uint32_t>(g);
      c1[j] = static_cast<uint32_t>(g >> 32);
    }
    philox_normals_generic(seed, c0, c1, offset, kFeatureTag, n);
    for (int q = 0; q < 4; ++q) std::memcpy(noise + q * kFeatureGroups + j0, n[q], kLanes * sizeof(float));
  }
}

// The vector kernels (noise_lanes.inc), compiled without FMA contraction so that their floats round as the
// portable code's.
#if defined(__x86_64__) && defined(__GNUC__)
#define STYLEDA_FAST_HAVE_NOISE_LANES 1
#pragma GCC push_options
#pragma GCC target("avx2")
#pragma GCC optimize("fp-contract=off")
namespace avx2 {
#define NOISE_LANES_WIDTH 8
#include "noise_lanes.inc"
#undef NOISE_LANES_WIDTH
}  // namespace avx2
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl")
#pragma GCC optimize("fp-contract=off")
namespace avx512 {
#define NOISE_LANES_WIDTH 16
#include "noise_lanes.inc"
#undef NOISE_LANES_WIDTH
}  // namespace avx512
#pragma GCC pop_options
#endif

enum class NoiseIsa { kGeneric, kAvx2, kAvx512 };

// AVX-512 -> AVX2 -> portable; all give the same bits.
NoiseIsa noise_isa() {
#ifdef STYLEDA_FAST_HAVE_NOISE_LANES
  if (use_avx512_kernels()) return NoiseIsa::kAvx512;
  if (use_avx2_kernels()) return NoiseIsa::kAvx2;
#endif
  return NoiseIsa::kGeneric;
}

// noise[d] = eps[d] of one text sample for d < D (see text_noise_generic); noise holds 4Q + kLanes floats.
void text_noise(uint64_t seed, uint32_t stream, uint32_t row, int64_t D, float* noise) {
  switch (noise_isa()) {
#ifdef STYLEDA_FAST_HAVE_NOISE_LANES
    case NoiseIsa::kAvx512:
      return avx512::text_noise_add(seed, stream, row, D, nullptr, 0.0f, noise);
    case NoiseIsa::kAvx2:
      return avx2::text_noise_add(seed, stream, row, D, nullptr, 0.0f, noise);
#endif
    default:
      return text_noise_generic(seed, stream, row, (D + 3) / 4, noise);
  }
}

void feature_noise(uint64_t seed, uint32_t offset, int64_t chunk, float* noise) {
  switch (noise_isa()) {
#ifdef STYLEDA_FAST_HAVE_NOISE_LANES
    case NoiseIsa::kAvx512:
      return avx512::feature_noise_chunk(seed, offset, chunk, noise);
    case NoiseIsa::kAvx2:
      return avx2::feature_noise_chunk(seed, offset, chunk, noise);
#endif
    default:
      return feature_noise_generic(seed, offset, chunk, noise);
  }
}

constexpr double kNormalizeEps = 1e-12;  // F.normalize's: x / max(|x|, eps)
constexpr double kCosineEps = 1e-8;      // F.cosine_similarity's: each norm clamped to >= eps

void check_rows(const at::Tensor& t, const char* name) {
  check_cpu_float(t, name);
  TORCH_CHECK_VALUE(t.dim() == 2, "styleda_fast: ", name, " must be 2-D (rows, D), got ", t.dim(), " dims");
}

// Rows per parallel task: about 16K elements of work each.
int64_t grain_rows(int64_t work_per_row) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(1, work_per_row)); }

// ======================================= noisy text projection =======================================

// Sum of v[d]^2, the accumulation order of the portable build's simd reduction (the pinned norms depend on it).
template <typename A>
A sum_squares(const A* v, int64_t D) {
  A vv = 0;
#pragma omp simd reduction(+ : vv)
  for (int64_t d = 0; d < D; ++d) vv += v[d] * v[d];
  return vv;
}

// One text row k, all its samples: u = t / |t|, v = u + sigma * eps, out = v / |v|, norm = |v|. In the
// accumulation type, SIMD lanes (loops outside AT_DISPATCH so that the simd pragmas apply). For float32 on the
// vector paths, v goes straight into the output row with the noise (no noise buffer), then the norm and the
// scaling passes read it back from L1.
template <typename T>
void noisy_text_row(const T* t, T* out, acc_t<T>* norm, int64_t S, int64_t D, double sigma, uint64_t seed,
                    int64_t offset, int64_t k, float* noise, acc_t<T>* u) {
  using A = acc_t<T>;
  const A sg = static_cast<A>(sigma);
  A tt = 0;
#pragma omp simd reduction(+ : tt)
  for (int64_t d = 0; d < D; ++d) tt += static_cast<A>(t[d]) * static_cast<A>(t[d]);
  const A inv_t = A(1) / std::max(std::sqrt(tt), A(kNormalizeEps));
#pragma omp simd
  for (int64_t d = 0; d < D; ++d) u[d] = static_cast<A>(t[d]) * inv_t;
  const NoiseIsa isa = noise_isa();
  for (int64_t s = 0; s < S; ++s) {
    const uint32_t stream = static_cast<uint32_t>(offset + s), row = static_cast<uint32_t>(k);
    T* o = out + s * D;
    if constexpr (std::is_same_v<T, float>) {
      if (isa != NoiseIsa::kGeneric) {
#ifdef STYLEDA_FAST_HAVE_NOISE_LANES
        if (isa == NoiseIsa::kAvx512)
          avx512::text_noise_add(seed, stream, row, D, u, sg, o);
        else
          avx2::text_noise_add(seed, stream, row, D, u, sg, o);
#endif
        const A vn = std::sqrt(sum_squares(o, D)), inv_v = A(1) / std::max(vn, A(kNormalizeEps));
        norm[s] = vn;
#pragma omp simd
        for (int64_t d = 0; d < D; ++d) o[d] *= inv_v;
        continue;
      }
    }
    text_noise(seed, stream, row, D, noise);
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
bool feature_chunk_lanes(NoiseIsa, uint64_t, uint32_t, int64_t, const T*, T*, A, A, A) {
  return false;
}

inline bool feature_chunk_lanes(NoiseIsa isa, uint64_t seed, uint32_t offset, int64_t chunk, const float* x, float* y,
                                float sp, float mp, float fn) {
#ifdef STYLEDA_FAST_HAVE_NOISE_LANES
  if (isa == NoiseIsa::kAvx512) return avx512::feature_chunk_fused(seed, offset, chunk, x, y, sp, mp, fn), true;
  if (isa == NoiseIsa::kAvx2) return avx2::feature_chunk_fused(seed, offset, chunk, x, y, sp, mp, fn), true;
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
    at::parallel_for(0, chunks, 16, [&](int64_t begin, int64_t end) {
      std::vector<float> noise(chunk_size);
      const NoiseIsa isa = noise_isa();
      for (int64_t chunk = begin; chunk < end; ++chunk) {
        const int64_t base = chunk * chunk_size, stop = std::min(base + chunk_size, N);
        // A whole chunk in one plane: the noise never leaves the registers.
        if (fn != A(0) && stop - base == chunk_size && base / pl.size == (stop - 1) / pl.size &&
            feature_chunk_lanes(isa, uint64_t(seed), static_cast<uint32_t>(offset), chunk, x + base, y + base,
                                s[base / pl.size], m[base / pl.size], fn))
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
  m.impl("noisy_text_projection", &noisy_text_projection_cpu);
  m.impl("noisy_text_projection_backward", &noisy_text_projection_backward_cpu);
  m.impl("clip_cosine_loss", &clip_cosine_loss_cpu);
  m.impl("clip_cosine_loss_backward", &clip_cosine_loss_backward_cpu);
  m.impl("noisy_style_features", &noisy_style_features_cpu);
  m.impl("noisy_style_features_backward", &noisy_style_features_backward_cpu);
}

}  // namespace styleda_fast
