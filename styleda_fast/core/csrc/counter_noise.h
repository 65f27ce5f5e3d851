// Counter-based noise for the text and feature-noise operators (text_cpu.cpp, feature_noise_cpu.cpp).
//
// Counter-based Philox4x32-10 (the generator of tl.philox / tl.randn), keyed by the 64-bit seed, with a
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
//
// Everything here has internal linkage (an anonymous namespace): each kernel file that includes it gets its own
// copy, with the AVX2 and AVX-512 lanes of noise_lanes.inc compiled under their target pragmas.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "common.h"
#include "streaming_stores.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

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
[[maybe_unused]]
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

[[maybe_unused]]
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

}  // namespace
}  // namespace styleda_fast
