// CPU kernels of the style-mix family: per-patch statistics (patch_mean_std) and patch-wise AdaIN with
// optional mixing (local_style_mix), forward and backward.
//
// The operator schemas are declared here (the family's TORCH_LIBRARY_FRAGMENT, at the end of the file).
//
// Memory traffic is the cost here, so each kernel reads x from memory once:
//  * NCHW: one task per (image, channel, row of patches). Its rows (192 rows of 64 floats = 48 KB at the FAMix
//    shape, grid 3) stay in L1/L2 between the statistics passes and the output pass.
//  * channels_last (NHWC): one task per (image, patch, block of channels: all of them where there are enough tasks),
//    whose data lives in L2/L3.
// Either layout may have any batch stride (each image's elements dense, images further apart): a ViT's patch
// tokens seen as a (B, C, h, w) grid are read and written in place, the prefix tokens between the images untouched.
// NCHW statistics are two-pass (mean, then centered squares) over the task in L2; channels_last ones one pass from
// memory, merging the (mean, M2) of chunks that fit in L1. Rows are summed in the accumulation type with SIMD lanes
// and added to doubles, so long patches lose no precision. Outputs of 32 MB and more are written with streaming
// stores (streaming_stores.h; float and double rows straight from vector registers, other dtypes through a cached
// row), and meanwhile an NCHW task requests the next task's input into L2.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "common.h"
#include "output_buffers.h"
#include "streaming_stores.h"

#if defined(__x86_64__) || defined(__SSE2__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>


namespace styleda_fast {
namespace {

// Patch (i, j) covers rows rows[i]..rows[i+1] and columns cols[j]..cols[j+1] (floor(k*size/parts)).
struct PatchGrid {
  int64_t batch, channels, height, width, grid_h, grid_w;
  std::vector<int64_t> rows, cols;

  PatchGrid(const at::Tensor& x, int64_t gh, int64_t gw)
      : batch(x.size(0)), channels(x.size(1)), height(x.size(2)), width(x.size(3)), grid_h(gh), grid_w(gw) {
    for (int64_t k = 0; k <= gh; ++k) rows.push_back(k * height / gh);
    for (int64_t k = 0; k <= gw; ++k) cols.push_back(k * width / gw);
  }
  int64_t patches() const { return grid_h * grid_w; }
  int64_t count(int64_t i, int64_t j) const { return (rows[i + 1] - rows[i]) * (cols[j + 1] - cols[j]); }
};

MemoryLayout layout_of(const at::Tensor& x) {
  const auto layout = memory_layout(x);
  TORCH_CHECK_VALUE(layout.has_value(),
                    "styleda_fast: x must hold each image's (C, H, W) elements densely, in NCHW or channels_last "
                    "order (any batch stride >= C*H*W), got strides ",
                    x.strides());
  return *layout;
}

void check_grid(const at::Tensor& x, int64_t gh, int64_t gw) {
  TORCH_CHECK_VALUE(x.dim() == 4, "styleda_fast: x must be 4-D (B, C, H, W), got ", x.dim(), " dims");
  TORCH_CHECK_VALUE(gh >= 1 && gw >= 1 && gh <= x.size(2) && gw <= x.size(3),
              "styleda_fast: grid (", gh, ", ", gw, ") must be >= 1 and <= (H, W) = (", x.size(2), ", ",
              x.size(3), ")");
}

// A per-patch parameter tensor must be (B, C, gh, gw) in the accumulation dtype; any strides (torch.compile may hand
// a backward its saved statistics channels_last): the kernels read the contiguous tensor this returns.
at::Tensor patch_param(const at::Tensor& p, const char* name, const PatchGrid& g, at::ScalarType acc) {
  TORCH_CHECK_VALUE(p.dim() == 4 && p.size(0) == g.batch && p.size(1) == g.channels && p.size(2) == g.grid_h &&
                  p.size(3) == g.grid_w,
              "styleda_fast: ", name, " must have shape (B, C, gh, gw) = (", g.batch, ", ", g.channels, ", ",
              g.grid_h, ", ", g.grid_w, "), got ", p.sizes());
  TORCH_CHECK_VALUE(p.scalar_type() == acc && p.device().is_cpu(), "styleda_fast: ", name,
                    " must be a CPU tensor of dtype ", acc);
  return p.contiguous();
}

// Everything one kernel call needs about the per-patch parameters, as raw pointers into (B, C, gh, gw) tensors.
template <typename A>
struct PatchParams {
  A* mean = nullptr;
  A* std = nullptr;
  const A* target_mean = nullptr;  // null for patch_mean_std
  const A* target_std = nullptr;
  const A* mix = nullptr;
  A* grad_mixed_mean = nullptr;  // backward outputs; patch_mean_std_backward: the incoming gradients
  A* grad_mixed_std = nullptr;
  // local_style_mix_grad_x: the per-patch sums of g and g*xn (from an earlier local_style_mix_backward) and the
  // whole gradients reaching the patch's own mean and std, given instead of summed and derived from mix.
  const A* given_sum_grad = nullptr;
  const A* given_sum_grad_xn = nullptr;
  const A* own_grad_mean = nullptr;
  const A* own_grad_std = nullptr;
};

// Scratch for one task, reused across the tasks of a thread: per-lane arrays, and per-patch values (the
// patch's mean, transfer scale and shift, gradient coefficients) and double sums.
template <typename A>
struct Scratch {
  std::vector<A> acc1, acc2, mean, scale, shift, a, b, c;
  std::vector<A> patch_mean, patch_scale, patch_shift, patch_a, patch_b, patch_c;
  std::vector<double> sum1, sum2;
  std::vector<char> out_row;  // one output row, computed here and streamed to memory (streaming_stores.h)
  template <typename T>
  T* out_row_of(int64_t lanes) {
    out_row.resize(lanes * sizeof(T));
    return reinterpret_cast<T*>(out_row.data());
  }
  // Sizes the arrays for a task and zeroes the sums. The lane accumulators are zero between tasks (every pass
  // ends by flushing them, which zeroes them), so a task of the same size as the last one rewrites only its sums.
  void resize(int64_t lanes, int64_t patches) {
    if (int64_t(acc1.size()) != lanes || int64_t(patch_mean.size()) != patches) {
      for (auto* v : {&acc1, &acc2, &mean, &scale, &shift, &a, &b, &c}) v->assign(lanes, A(0));
      for (auto* v : {&patch_mean, &patch_scale, &patch_shift, &patch_a, &patch_b, &patch_c})
        v->assign(patches, A(0));
    }
    sum1.assign(patches, 0.0);
    sum2.assign(patches, 0.0);
  }
};

// Rows accumulated lane-wise in the accumulation type before they are flushed into double sums.
constexpr int64_t kRowsPerFlush = 64;

// Bytes of the chunks of rows that the one-pass statistics re-read from L1.
constexpr int64_t kChunkBytes = 16 * 1024;

// How far ahead of its loads an NHWC reading pass requests its rows (prefetch_row_for_read). Measured on a 2-core
// Xeon (Sapphire Rapids), (8, 256, 192, 192) channels_last float32, against none: statistics 0.94x the time, forward
// into out= 0.95x, forward+backward 0.97x (AVX2 kernels 0.94x, 0.94x, 0.96x); 4 and 16 KB ahead gained less.
constexpr int64_t kReadAheadBytes = 8 * 1024;

// Elements of work below which a parallel region is not worth opening (ATen's own grain): small tensors run on the
// calling thread instead of waiting for every intra-op thread, which costs most when another process keeps a core busy.
constexpr int64_t kGrainElements = 32768;

// ============================== the two layouts ==============================
//
// A task walks `rows` rows of `lanes` contiguous elements each (NCHW: the rows of patch-row i of one plane,
// lanes = W columns, patch of a lane = its column's patch; NHWC: the pixels of one patch for a block of
// channels, lanes = channels, each lane its own patch). `row_offset(r)` gives the offset of row r. Local patch q
// owns lanes runs[q]..runs[q+1] (NCHW), or lane q alone when runs is null (NHWC). Sums of lanes are flushed into
// per-patch doubles.

template <typename RowOffset>
struct Task {
  int64_t rows, lanes, patches;
  RowOffset row_offset;
  const int64_t* runs;
};

// A writing pass stores to output lines that are not in cache. A task whose output has at most kPrefetchOutputBytes
// (its input and output stay in L2 together) requests them all during the pass before; a larger one requests them
// kPrefetchAheadBytes ahead of its stores in the writing pass.
constexpr int64_t kPrefetchOutputBytes = 256 * 1024;
constexpr int64_t kPrefetchAheadBytes = 16 * 1024;

// The distance in rows at which a writing pass requests its output lines, 0 where the pass before requested them.
inline int64_t rows_ahead(int64_t rows, int64_t row_bytes) {
  if (rows * row_bytes <= kPrefetchOutputBytes) return 0;
  return std::max<int64_t>(1, kPrefetchAheadBytes / row_bytes);
}

// Requests the cache lines of p[0..n) for writing into L2 (only lines that hold some of these elements).
template <typename T>
STYLEDA_FAST_PREFETCH_HELPER void prefetch_for_write(T* p, int64_t n) {
  const auto begin = reinterpret_cast<std::uintptr_t>(p), end = reinterpret_cast<std::uintptr_t>(p + n);
  if (n > 0) __builtin_prefetch(p, 1, 2);
  for (std::uintptr_t line = (begin | 63) + 1; line < end; line += 64)
    __builtin_prefetch(reinterpret_cast<const void*>(line), 1, 2);
}

namespace generic {
#if defined(__SSE2__) && defined(__GNUC__)
constexpr int kVectorBytes = 16;  // rows streamed from registers of this many bytes (0: through a buffer)
#else
constexpr int kVectorBytes = 0;
#endif
#include "style_mix_kernels.inc"
}  // namespace generic

#if defined(__x86_64__) && defined(__GNUC__)
#define STYLEDA_FAST_HAVE_VECTOR_KERNELS 1
#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace avx2 {
constexpr int kVectorBytes = 32;
#include "style_mix_kernels.inc"
}  // namespace avx2
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx2,fma,avx512f,avx512vl,avx512bw,avx512dq")
namespace avx512 {
constexpr int kVectorBytes = 64;
#include "style_mix_kernels.inc"
}  // namespace avx512
#pragma GCC pop_options
#endif

// Index of parameter (b, c, i, j) in a (B, C, gh, gw) tensor.
inline int64_t param_index(const PatchGrid& g, int64_t b, int64_t c, int64_t i, int64_t j) {
  return ((b * g.channels + c) * g.grid_h + i) * g.grid_w + j;
}

// Channels per NHWC task: all of them where that still gives every thread several tasks, so that a task walks
// whole pixels, one contiguous stretch of memory (the hardware prefetchers follow it; blocks of a pixel's channels
// leave gaps between their stretches). Measured on 2 cores, forward into out= against blocks of 256 channels:
// (8, 512, 96, 96) 28.8 -> 13.3 ms, ViT-B/16 tokens (8, 1 + 48*48, 768) 6.4 -> 3.8 ms, (8, 2048, 24, 24) 2.9 ->
// 2.1 ms. Otherwise blocks halve (multiples of 16 channels, at least 64) until there are enough tasks.
int64_t channel_block(const PatchGrid& g) {
  int64_t block = g.channels;
  const int64_t wanted_tasks = 4 * at::get_num_threads();
  while (block > 64 && g.batch * g.patches() * ((g.channels + block - 1) / block) < wanted_tasks)
    block = ((block + 1) / 2 + 15) / 16 * 16;
  return block;
}

// With one patch per row of the grid (grid_w == 1), an NCHW patch row is one contiguous stretch of `elements`
// elements, so the task may walk it in longer "rows" than the image's: the longest length up to 1024 that divides
// it (a 56x56 plane: 4 rows of 784 instead of 56 rows of 56, whose short vector loops cost more in overhead than in
// arithmetic). Falls back to the image's width.
int64_t contiguous_row_length(int64_t elements, int64_t width) {
  for (int64_t length = std::min<int64_t>(elements / 16, 1024); length > width; --length)
    if (elements % length == 0) return length;
  return width;
}

// The row length of the NCHW tasks of patch row i: the image's width, or a longer contiguous stretch where one
// patch spans the width (contiguous_row_length).
int64_t nchw_row_length(const PatchGrid& g, int64_t i) {
  return g.grid_w == 1 ? contiguous_row_length((g.rows[i + 1] - g.rows[i]) * g.width, g.width) : g.width;
}

// The lanes of a task's rows (those of the first patch row for NCHW): what the vector loops walk.
int64_t task_row_lanes(Layout layout, const PatchGrid& g) {
  return layout == Layout::kNCHW ? nchw_row_length(g, 0) : channel_block(g);
}

// Calls run(task, image, param, count, scratch) for every task of x's layout, in parallel. The task's row
// offsets are relative to the first element of its image, so each tensor of a call (x, out, grad_out, grad_x)
// can have its own batch stride: the caller adds image * batch_stride of that tensor.
// NCHW task: (b, c, patch-row i); NHWC task: (b, patch (i, j), block of channels).
template <typename T, typename Run>
void for_each_task(Layout layout, const PatchGrid& g, Run&& run) {
  if (layout == Layout::kNCHW) {
    std::vector<int64_t> row_length(g.grid_h);
    for (int64_t i = 0; i < g.grid_h; ++i) row_length[i] = nchw_row_length(g, i);
    const int64_t grain = std::max<int64_t>(1, kGrainElements / std::max<int64_t>(1, g.height / g.grid_h * g.width));
    at::parallel_for(0, g.batch * g.channels * g.grid_h, grain, [&](int64_t begin, int64_t end) {
      Scratch<acc_t<T>> scratch;
      std::vector<int64_t> param(g.grid_w), count(g.grid_w);
      for (int64_t task = begin; task < end; ++task) {
        const int64_t i = task % g.grid_h, bc = task / g.grid_h, b = bc / g.channels, c = bc % g.channels;
        for (int64_t j = 0; j < g.grid_w; ++j) param[j] = (bc * g.grid_h + i) * g.grid_w + j, count[j] = g.count(i, j);
        const int64_t base = c * g.height * g.width + g.rows[i] * g.width, width = row_length[i];
        auto row_offset = [base, width](int64_t r) { return base + r * width; };
        const int64_t rows = (g.rows[i + 1] - g.rows[i]) * g.width / width;
        const int64_t whole_row[2] = {0, width};  // grid_w == 1: the one patch owns every lane
        Task<decltype(row_offset)> t{rows, width, g.grid_w, row_offset, g.grid_w == 1 ? whole_row : g.cols.data()};
        run(t, b, param, count, scratch);
      }
      streaming_fence();
    });
  } else {
    const int64_t block = channel_block(g), cblocks = (g.channels + block - 1) / block;
    const int64_t np = g.patches();
    const int64_t task_elements = std::max<int64_t>(1, g.height / g.grid_h * (g.width / g.grid_w) * block);
    const int64_t grain = std::max<int64_t>(1, kGrainElements / task_elements);
    at::parallel_for(0, g.batch * np * cblocks, grain, [&](int64_t begin, int64_t end) {
      Scratch<acc_t<T>> scratch;
      std::vector<int64_t> param, count, offsets;
      for (int64_t task = begin; task < end; ++task) {
        const int64_t cb = task % cblocks, q = (task / cblocks) % np, b = task / (cblocks * np);
        const int64_t i = q / g.grid_w, j = q % g.grid_w, c0 = cb * block, nc = std::min(block, g.channels - c0);
        param.resize(nc);
        count.assign(nc, g.count(i, j));
        for (int64_t k = 0; k < nc; ++k) param[k] = param_index(g, b, c0 + k, i, j);
        offsets.clear();  // offset of each pixel of the patch in its image, computed once for the task's passes
        for (int64_t h = g.rows[i]; h < g.rows[i + 1]; ++h)
          for (int64_t w = g.cols[j]; w < g.cols[j + 1]; ++w) offsets.push_back((h * g.width + w) * g.channels + c0);
        const int64_t* pixel_offset = offsets.data();
        auto row_offset = [pixel_offset](int64_t r) { return pixel_offset[r]; };
        Task<decltype(row_offset)> t{g.count(i, j), nc, nc, row_offset, nullptr};
        run(t, b, param, count, scratch);
      }
      streaming_fence();
    });
  }
}

// Calls body(kernels) with the task kernels of the widest ISA the CPU has that suits the tasks' rows: AVX-512 for
// rows of kAvx512MinRowLanes and more, else AVX2 + FMA, else the portable ones (the build targets plain x86-64,
// SSE2). STYLEDA_FAST_CPU_ISA=avx2 or generic forces the narrower ones. Measured on a 2-core Xeon (Sapphire
// Rapids), float32, AVX-512 against AVX2: (8, 256, 192, 192) NCHW statistics 0.92x the time, forward 0.95x,
// grad_x and forward+backward 0.94x, channels_last 0.96-0.98x; one thread, NCHW rows of 16 lanes 1.2x, of 64
// 1.0x, of 96 and 128 0.96x; NHWC rows of 64 channels 1.04x, of 128 0.97x, 256 0.95x; (8, 256, 7, 7) grid 1 1.4x.
constexpr int64_t kAvx512MinRowLanes = 96;

template <typename Body>
void with_isa_kernels(Layout layout, const PatchGrid& g, Body&& body) {
#ifdef STYLEDA_FAST_HAVE_VECTOR_KERNELS
  if (use_avx512_kernels() && task_row_lanes(layout, g) >= kAvx512MinRowLanes) return body(avx512::Kernels{});
  if (use_avx2_kernels()) return body(avx2::Kernels{});
#endif
  body(generic::Kernels{});
}

// ===================================== operator entry points =====================================

// A fresh output with x's sizes and exact strides. When x's images are further apart than C*H*W elements (a
// token grid), the buffer holds B * batch_stride elements and the output starts batch_stride - C*H*W elements
// into it, so its gaps sit where x's are (a token grid's output holds room for the prefix tokens before each
// image, which styleda_fast.grid_as_tokens can fill; the kernels leave the gaps unwritten). Large buffers come from
// the output cache (output_buffers.cpp): huge pages, reused across steps without page faults.
at::Tensor empty_output_like(const at::Tensor& x) {
  const MemoryLayout layout = layout_of(x);
  const int64_t image = x.size(1) * x.size(2) * x.size(3);
  const int64_t elements = x.size(0) * layout.batch_stride, offset = layout.batch_stride - image;
  return empty_output(x.sizes(), x.strides(), offset, elements, x.options());
}

void check_input(const at::Tensor& x) { check_cpu_float(x, "x"); }

// Raw pointers to the per-patch tensors of one call (target_* and mix absent for patch_mean_std).
template <typename A>
PatchParams<A> patch_params(const at::Tensor& mean, const at::Tensor& std, const at::Tensor* target_mean,
                            const at::Tensor* target_std, const c10::optional<at::Tensor>& mix) {
  PatchParams<A> prm;
  prm.mean = mean.data_ptr<A>();
  prm.std = std.data_ptr<A>();
  if (target_mean) {
    prm.target_mean = target_mean->const_data_ptr<A>();
    prm.target_std = target_std->const_data_ptr<A>();
    prm.mix = mix.has_value() ? mix->const_data_ptr<A>() : nullptr;
  }
  return prm;
}

// A tensor's first element and batch stride; elements of image b start at data + b * batch_stride.
template <typename T>
struct Images {
  T* data = nullptr;
  int64_t batch_stride = 0;
  T* image(int64_t b) const { return data == nullptr ? nullptr : data + b * batch_stride; }
};

template <typename T>
Images<T> images_of(const at::Tensor* t) {
  if (t == nullptr) return {};
  return {static_cast<T*>(t->data_ptr()), layout_of(*t).batch_stride};
}

// Runs the forward (statistics always; output when out is given) into mean/std. out has x's inner layout.
void run_forward(const at::Tensor& x_in, at::Tensor* out, const PatchGrid& g, double eps, bool relu,
                 const at::Tensor& mean, const at::Tensor& std, const at::Tensor* target_mean,
                 const at::Tensor* target_std, const c10::optional<at::Tensor>& mix) {
  const Layout layout = layout_of(x_in).inner;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x_in.scalar_type(), "styleda_fast_forward", [&] {
    using A = acc_t<scalar_t>;
    const PatchParams<A> prm = patch_params<A>(mean, std, target_mean, target_std, mix);
    const Images<scalar_t> x = images_of<scalar_t>(&x_in), y = images_of<scalar_t>(out);
    // Not in place: there the output's lines are the input's, cached by the statistics passes.
    const bool stream = out != nullptr && !out->is_alias_of(x_in) && use_streaming_stores(out->nbytes());
    with_isa_kernels(layout, g, [&](auto kernels) {
      using Kernels = decltype(kernels);
      for_each_task<scalar_t>(layout, g, [&](const auto& t, int64_t b, const auto& param, const auto& count,
                                             Scratch<A>& scratch) {
        Kernels::template forward<scalar_t>(x.image(b), y.image(b), t, param, count, eps, relu, stream, prm, scratch);
      });
    });
  });
}

at::Tensor patch_stats_like(const PatchGrid& g, const at::Tensor& x) {
  return at::empty({g.batch, g.channels, g.grid_h, g.grid_w}, x.options().dtype(acc_dtype(x)));
}

std::tuple<at::Tensor, at::Tensor> patch_mean_std_cpu(const at::Tensor& x_in, int64_t gh, int64_t gw, double eps) {
  check_input(x_in);
  check_grid(x_in, gh, gw);
  check_scalar(eps, "eps");
  const at::Tensor x = kernel_input(x_in);
  const PatchGrid g(x, gh, gw);
  at::Tensor mean = patch_stats_like(g, x), std = at::empty_like(mean);
  run_forward(x, nullptr, g, eps, false, mean, std, nullptr, nullptr, c10::nullopt);
  return {mean, std};
}

// The target statistics and mixing weights of a call, checked and contiguous.
struct StyleArgs {
  at::Tensor target_mean, target_std;
  c10::optional<at::Tensor> mix;
};

StyleArgs style_args(const PatchGrid& g, at::ScalarType acc, const at::Tensor& target_mean,
                     const at::Tensor& target_std, const c10::optional<at::Tensor>& mix) {
  StyleArgs s{patch_param(target_mean, "target_mean", g, acc), patch_param(target_std, "target_std", g, acc),
              c10::nullopt};
  if (mix.has_value()) s.mix = patch_param(*mix, "mix", g, acc);
  return s;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> local_style_mix_cpu(const at::Tensor& x_in,
                                                                   const at::Tensor& target_mean,
                                                                   const at::Tensor& target_std,
                                                                   const c10::optional<at::Tensor>& mix, int64_t gh,
                                                                   int64_t gw, bool relu, double eps) {
  check_float_args({{x_in, "x"}, {target_mean, "target_mean"}, {target_std, "target_std"}});
  check_float_arg(mix, "mix");
  check_input(x_in);
  check_grid(x_in, gh, gw);
  check_scalar(eps, "eps");
  const at::Tensor x = kernel_input(x_in);
  const PatchGrid g(x, gh, gw);
  const StyleArgs s = style_args(g, acc_dtype(x), target_mean, target_std, mix);
  at::Tensor out = empty_output_like(x);
  at::Tensor mean = patch_stats_like(g, x), std = at::empty_like(mean);
  run_forward(x, &out, g, eps, relu, mean, std, &s.target_mean, &s.target_std, s.mix);
  return {out, mean, std};
}

// Whether t can be read or written with x's layout: the same inner order, any batch stride.
bool same_inner_layout(const at::Tensor& t, const at::Tensor& x) {
  const auto lt = memory_layout(t), lx = memory_layout(x);
  return lt.has_value() && lx.has_value() && lt->inner == lx->inner;
}

void local_style_mix_into_cpu(const at::Tensor& x, const at::Tensor& target_mean, const at::Tensor& target_std,
                              const c10::optional<at::Tensor>& mix, int64_t gh, int64_t gw, bool relu, double eps,
                              at::Tensor out) {
  check_float_args({{x, "x"}, {target_mean, "target_mean"}, {target_std, "target_std"}, {out, "out"}});
  check_float_arg(mix, "mix");
  check_input(x);
  check_grid(x, gh, gw);
  check_scalar(eps, "eps");
  layout_of(x);
  TORCH_CHECK_VALUE(out.sizes() == x.sizes() && out.scalar_type() == x.scalar_type() && out.device() == x.device(),
                    "styleda_fast: out must have x's shape, dtype and device");
  TORCH_CHECK_VALUE(same_inner_layout(out, x),
                    "styleda_fast: out must hold each image densely in x's order (NCHW or channels_last; any batch "
                    "stride), got strides ",
                    out.strides(), " for x's ", x.strides());
  const PatchGrid g(x, gh, gw);
  const StyleArgs s = style_args(g, acc_dtype(x), target_mean, target_std, mix);
  at::Tensor mean = patch_stats_like(g, x), std = at::empty_like(mean);
  run_forward(x, &out, g, eps, relu, mean, std, &s.target_mean, &s.target_std, s.mix);
}

// grad_out is given: local_style_mix backward. grad_out absent: patch_mean_std backward, with the incoming
// gradients of mean and std passed in grad_mixed_mean / grad_mixed_std. grad_out and grad_x have x's inner layout.
// With `given` (sum_grad, sum_grad_xn, own_grad_mean, own_grad_std): local_style_mix_grad_x, which reads those
// instead of summing g and writes only grad_x.
void run_backward(const at::Tensor* grad_out, const at::Tensor& x_in, at::Tensor* grad_x, const PatchGrid& g,
                  bool relu, const at::Tensor& mean, const at::Tensor& std, const at::Tensor* target_mean,
                  const at::Tensor* target_std, const c10::optional<at::Tensor>& mix, const at::Tensor& grad_mixed_mean,
                  const at::Tensor& grad_mixed_std, const std::array<at::Tensor, 4>* given = nullptr) {
  const Layout layout = layout_of(x_in).inner;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x_in.scalar_type(), "styleda_fast_backward", [&] {
    using A = acc_t<scalar_t>;
    PatchParams<A> prm = patch_params<A>(mean, std, target_mean, target_std, mix);
    prm.grad_mixed_mean = grad_mixed_mean.data_ptr<A>();
    prm.grad_mixed_std = grad_mixed_std.data_ptr<A>();
    if (given != nullptr) {
      prm.given_sum_grad = (*given)[0].const_data_ptr<A>();
      prm.given_sum_grad_xn = (*given)[1].const_data_ptr<A>();
      prm.own_grad_mean = (*given)[2].const_data_ptr<A>();
      prm.own_grad_std = (*given)[3].const_data_ptr<A>();
    }
    const Images<scalar_t> x = images_of<scalar_t>(&x_in), dy = images_of<scalar_t>(grad_out),
                           dx = images_of<scalar_t>(grad_x);
    const bool stream = grad_x != nullptr && use_streaming_stores(grad_x->nbytes());
    with_isa_kernels(layout, g, [&](auto kernels) {
      using Kernels = decltype(kernels);
      for_each_task<scalar_t>(layout, g, [&](const auto& t, int64_t b, const auto& param, const auto& count,
                                             Scratch<A>& scratch) {
        Kernels::template backward<scalar_t>(x.image(b), dy.image(b), dx.image(b), t, param, count, relu, stream,
                                             prm, scratch);
      });
    });
  });
}

// t itself when the kernels can read it with x's layout (same inner order; its own batch stride), else a copy
// with x's exact strides.
at::Tensor like_layout(const at::Tensor& t, const at::Tensor& x) {
  if (same_inner_layout(t, x)) return t;
  return empty_output_like(x).copy_(t);
}

at::Tensor patch_mean_std_backward_cpu(const at::Tensor& grad_mean_in, const at::Tensor& grad_std_in,
                                       const at::Tensor& x_in, const at::Tensor& mean_in, const at::Tensor& std_in) {
  check_float_args(
      {{grad_mean_in, "grad_mean"}, {grad_std_in, "grad_std"}, {x_in, "x"}, {mean_in, "mean"}, {std_in, "std"}});
  check_input(x_in);
  check_grid(x_in, mean_in.size(2), mean_in.size(3));
  const at::Tensor x = kernel_input(x_in);
  const PatchGrid g(x, mean_in.size(2), mean_in.size(3));
  const auto acc = acc_dtype(x);
  const at::Tensor mean = patch_param(mean_in, "mean", g, acc), std = patch_param(std_in, "std", g, acc);
  const at::Tensor grad_mean = patch_param(grad_mean_in, "grad_mean", g, acc);
  const at::Tensor grad_std = patch_param(grad_std_in, "grad_std", g, acc);
  at::Tensor grad_x = empty_output_like(x);
  run_backward(nullptr, x, &grad_x, g, false, mean, std, nullptr, nullptr, c10::nullopt, grad_mean, grad_std);
  return grad_x;
}

// The checked inputs of a local_style_mix backward: x as the kernels address it, grad_out in x's inner layout,
// the patch grid of mean's shape, the per-patch tensors contiguous.
struct TransferBackwardInputs {
  at::Tensor x, grad_out;
  PatchGrid g;
  at::Tensor mean, std;
  StyleArgs style;
};

TransferBackwardInputs transfer_backward_inputs(const at::Tensor& grad_out_in, const at::Tensor& x_in,
                                                const at::Tensor& mean, const at::Tensor& std,
                                                const at::Tensor& target_mean, const at::Tensor& target_std,
                                                const c10::optional<at::Tensor>& mix) {
  check_input(x_in);
  check_grid(x_in, mean.size(2), mean.size(3));
  TORCH_CHECK_VALUE(grad_out_in.sizes() == x_in.sizes() && grad_out_in.scalar_type() == x_in.scalar_type(),
                    "styleda_fast: grad_out must have x's shape and dtype");
  const at::Tensor x = kernel_input(x_in);
  const PatchGrid g(x, mean.size(2), mean.size(3));
  const auto acc = acc_dtype(x);
  return {x,
          like_layout(grad_out_in, x),
          g,
          patch_param(mean, "mean", g, acc),
          patch_param(std, "std", g, acc),
          style_args(g, acc, target_mean, target_std, mix)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> local_style_mix_backward_cpu(
    const at::Tensor& grad_out_in, const at::Tensor& x_in, const at::Tensor& mean, const at::Tensor& std,
    const at::Tensor& target_mean, const at::Tensor& target_std, const c10::optional<at::Tensor>& mix, bool relu,
    bool compute_grad_x) {
  check_float_args({{grad_out_in, "grad_out"}, {x_in, "x"}, {mean, "mean"}, {std, "std"}, {target_mean, "target_mean"},
                    {target_std, "target_std"}});
  check_float_arg(mix, "mix");
  const TransferBackwardInputs in =
      transfer_backward_inputs(grad_out_in, x_in, mean, std, target_mean, target_std, mix);
  at::Tensor grad_mixed_mean = at::empty_like(in.mean), grad_mixed_std = at::empty_like(in.mean);
  at::Tensor grad_x = compute_grad_x ? empty_output_like(in.x) : at::empty({0}, in.x.options());
  run_backward(&in.grad_out, in.x, compute_grad_x ? &grad_x : nullptr, in.g, relu, in.mean, in.std,
               &in.style.target_mean, &in.style.target_std, in.style.mix, grad_mixed_mean, grad_mixed_std);
  return {grad_x, grad_mixed_mean, grad_mixed_std};
}

at::Tensor local_style_mix_grad_x_cpu(const at::Tensor& grad_out_in, const at::Tensor& x_in, const at::Tensor& mean,
                                      const at::Tensor& std, const at::Tensor& target_mean,
                                      const at::Tensor& target_std, const c10::optional<at::Tensor>& mix,
                                      const at::Tensor& sum_grad, const at::Tensor& sum_grad_xn,
                                      const at::Tensor& grad_mean, const at::Tensor& grad_std, bool relu) {
  check_float_args({{grad_out_in, "grad_out"}, {x_in, "x"}, {mean, "mean"}, {std, "std"}, {target_mean, "target_mean"},
                    {target_std, "target_std"}, {sum_grad, "sum_grad"}, {sum_grad_xn, "sum_grad_xn"},
                    {grad_mean, "grad_mean"}, {grad_std, "grad_std"}});
  check_float_arg(mix, "mix");
  const TransferBackwardInputs in =
      transfer_backward_inputs(grad_out_in, x_in, mean, std, target_mean, target_std, mix);
  const auto acc = acc_dtype(in.x);
  const std::array<at::Tensor, 4> given{
      patch_param(sum_grad, "sum_grad", in.g, acc), patch_param(sum_grad_xn, "sum_grad_xn", in.g, acc),
      patch_param(grad_mean, "grad_mean", in.g, acc), patch_param(grad_std, "grad_std", in.g, acc)};
  at::Tensor grad_x = empty_output_like(in.x), unused = at::empty_like(in.mean);
  run_backward(&in.grad_out, in.x, &grad_x, in.g, relu, in.mean, in.std, &in.style.target_mean,
               &in.style.target_std, in.style.mix, unused, unused, &given);
  return grad_x;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(styleda_fast, m) {
  m.set_python_module("styleda_fast.ops.style_mix._ops");  // where the fake kernels live
  // Per-patch statistics of x (B, C, H, W) over a grid_h x grid_w grid: mean and std (B, C, gh, gw),
  // in float32 for half inputs (float64 for double).
  m.def("patch_mean_std(Tensor x, int grid_h, int grid_w, float eps) -> (Tensor mean, Tensor std)");
  m.def(
      "patch_mean_std_backward(Tensor grad_mean, Tensor grad_std, Tensor x, Tensor mean, Tensor std)"
      " -> Tensor grad_x");
  // Patch-wise AdaIN with optional mixing; target_mean/target_std/mix are (B, C, gh, gw) in the
  // accumulation dtype. Also returns the patch statistics, which the backward reuses.
  m.def(
      "local_style_mix(Tensor x, Tensor target_mean, Tensor target_std, Tensor? mix, int grid_h, int grid_w,"
      " bool relu, float eps) -> (Tensor out, Tensor mean, Tensor std)");
  // Same, written into a preallocated `out` (which may be x itself); no autograd.
  m.def(
      "local_style_mix_into(Tensor x, Tensor target_mean, Tensor target_std, Tensor? mix, int grid_h,"
      " int grid_w, bool relu, float eps, Tensor(a!) out) -> ()");
  // Gradient of local_style_mix. grad_mixed_mean / grad_mixed_std are the per-patch sums of the gradient
  // with respect to the mixed target statistics (B, C, gh, gw); grad_x is empty unless compute_grad_x.
  m.def(
      "local_style_mix_backward(Tensor grad_out, Tensor x, Tensor mean, Tensor std, Tensor target_mean,"
      " Tensor target_std, Tensor? mix, bool relu, bool compute_grad_x)"
      " -> (Tensor grad_x, Tensor grad_mixed_mean, Tensor grad_mixed_std)");
  // grad_x of local_style_mix when the gradients reaching the patch statistics come from elsewhere too (DSU: its
  // targets are functions of the statistics of the whole batch): grad_x = a*g + b + c*(x - mean) per patch with
  // a = the transfer's scale, b = (grad_mean - a*sum_grad)/n, c = (grad_std - a*sum_grad_xn)/((n-1)*std) (a 1-pixel
  // patch: grad_mean), g = grad_out masked by the ReLU. sum_grad / sum_grad_xn: local_style_mix_backward's
  // grad_mixed_mean / grad_mixed_std; grad_mean / grad_std: the whole gradients of the patch's own mean and std.
  m.def(
      "local_style_mix_grad_x(Tensor grad_out, Tensor x, Tensor mean, Tensor std, Tensor target_mean,"
      " Tensor target_std, Tensor? mix, Tensor sum_grad, Tensor sum_grad_xn, Tensor grad_mean, Tensor grad_std,"
      " bool relu) -> Tensor grad_x");
}

TORCH_LIBRARY_IMPL(styleda_fast, CPU, m) {
  m.impl("patch_mean_std", &patch_mean_std_cpu);
  m.impl("patch_mean_std_backward", &patch_mean_std_backward_cpu);
  m.impl("local_style_mix", &local_style_mix_cpu);
  m.impl("local_style_mix_into", &local_style_mix_into_cpu);
  m.impl("local_style_mix_backward", &local_style_mix_backward_cpu);
  m.impl("local_style_mix_grad_x", &local_style_mix_grad_x_cpu);
}

}  // namespace styleda_fast
