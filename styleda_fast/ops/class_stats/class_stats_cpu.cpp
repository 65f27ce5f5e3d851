// CPU kernels of the class-statistics family (FAMix's class-wise statistic mining):
//  * patch_dominant_class: the mode of the labels of each patch of a grid (FAMix's per-patch class; ties to the smallest value).
//  * class_mean_std: per image, the mean and std of each channel over the pixels of each class.
//
// Label maps are spatially coherent (long runs of one class along a row), so both kernels work on runs:
//  * dominant class: one task per (image, patch row); each row segment of a patch is scanned as runs and each run
//    adds its length to one histogram bin (one increment per run instead of one per pixel).
//  * class statistics: the runs of each image's label rows are listed once (shared by all channels). x is read in
//    place in either memory layout of memory_layout() (common.h), any batch stride: NCHW, channels_last, or a
//    ViT's patch tokens seen as a grid (styleda_fast.tokens_as_grid; the prefix tokens between images are never
//    read). Only other strides are copied to NCHW first.
//    - NCHW: one task per (image, channel) plane sums x over each run (a short vectorized loop) into per-class
//      double sums. Two passes (mean, then centered squares) over the plane while it is in L2 cache: one pass over
//      memory, and no E[x^2] - E[x]^2 cancellation.
//    - NHWC: one task per (image, block of up to 1 KB of channels per pixel) walks the same runs; each pixel of a
//      run adds its contiguous channel vector into its class's double accumulators (a vectorized loop over the
//      channels). The same two passes; the second reads the task's data (2.3 MB for a ViT-B/16 image at 768 px,
//      9.4 MB for a 256-channel 192x192 map) from L2 or L3.
//    No atomics: each task owns its outputs, so results are deterministic.
// Label values are never used as an address without a bounds check: a value outside [0, num_classes) that is not
// the ignore value (dominant class) is reported as an error; class_mean_std skips such pixels.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <vector>

#include "common.h"

namespace styleda_fast {
namespace {

void check_labels(const at::Tensor& labels, const char* name) {
  TORCH_CHECK_VALUE(labels.device().is_cpu(), "styleda_fast: ", name, " must be a CPU tensor for the CPU kernel");
  TORCH_CHECK_VALUE(labels.dim() == 3, "styleda_fast: ", name, " must be 3-D (B, H, W), got ", labels.dim(), " dims");
  TORCH_CHECK_TYPE(at::isIntegralType(labels.scalar_type(), /*includeBool=*/false), "styleda_fast: ", name,
              " must be an integer tensor, got ", labels.scalar_type());
}

// ===================================== patch_dominant_class =====================================

constexpr int64_t kPixelsPerThread = 1 << 16;

// Runs tasks [0, total) on the intra-op threads, handing out chunks of `chunk` tasks from a shared counter
// (dynamic scheduling). A static split makes the whole call wait for the slowest thread, which on a loaded
// machine is a thread that the OS has descheduled; here the other threads take its remaining chunks. Each task
// owns its outputs, so results do not depend on which thread ran it. `body(pull)` runs once per worker with its
// own scratch; `pull(begin, end)` gives the next chunk, false when none is left.
template <typename Body>
void parallel_dynamic(int64_t total, int64_t chunk, const Body& body) {
  if (total <= 0) return;
  std::atomic<int64_t> next{0};
  auto pull = [&](int64_t& begin, int64_t& end) {
    begin = next.fetch_add(chunk, std::memory_order_relaxed);
    if (begin >= total) return false;
    end = std::min(begin + chunk, total);
    return true;
  };
  const int64_t workers = std::min<int64_t>(at::get_num_threads(), (total + chunk - 1) / chunk);
  at::parallel_for(0, std::max<int64_t>(1, workers), 1, [&](int64_t, int64_t) { body(pull); });
}

std::vector<int64_t> bounds(int64_t size, int64_t parts) {
  std::vector<int64_t> b(parts + 1);
  for (int64_t k = 0; k <= parts; ++k) b[k] = k * size / parts;
  return b;
}

// Histogram slots: 0..K-1 the classes, K the ignore value. Returns the winning value: the largest count, ties to the
// smallest label value (the ignore value may be smaller than the classes, e.g. -1).
inline int64_t vote(const int64_t* hist, int64_t num_classes, int64_t ignore_index, bool count_ignore) {
  int64_t best = ignore_index, best_count = 0;
  for (int64_t k = 0; k <= num_classes; ++k) {
    if (k == num_classes && !count_ignore) break;
    const int64_t value = k == num_classes ? ignore_index : k, n = hist[k];
    if (n > best_count || (n == best_count && n > 0 && value < best)) best = value, best_count = n;
  }
  return best;
}

template <typename L>
void dominant_class_kernel(const L* labels, int64_t* out, int64_t batch, int64_t height, int64_t width, int64_t gh,
                           int64_t gw, int64_t num_classes, int64_t ignore_index, bool count_ignore,
                           std::atomic<int64_t>& first_bad) {
  const std::vector<int64_t> rows = bounds(height, gh), cols = bounds(width, gw);
  const int64_t slots = num_classes + 1;
  // Small maps run on one thread: waking the pool costs more than counting a few thousand labels.
  const int64_t grain = std::max<int64_t>(1, kPixelsPerThread / std::max<int64_t>(1, (height / gh) * width));
  parallel_dynamic(batch * gh, grain, [&](auto& pull) {
    std::vector<int64_t> hist(gw * slots);
    int64_t begin = 0, end = 0;
    while (pull(begin, end)) for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / gh, i = task % gh;
      std::fill(hist.begin(), hist.end(), 0);
      int64_t bad = std::numeric_limits<int64_t>::max();  // flat index of the task's first invalid label
      for (int64_t r = rows[i]; r < rows[i + 1]; ++r) {
        const L* row = labels + (b * height + r) * width;
        for (int64_t j = 0; j < gw; ++j) {
          int64_t* h = hist.data() + j * slots;
          int64_t w = cols[j];
          const int64_t w_end = cols[j + 1];
          while (w < w_end) {  // one run of equal labels per iteration
            const L v = row[w];
            const int64_t start = w;
            while (++w < w_end && row[w] == v) {
            }
            const int64_t value = static_cast<int64_t>(v);
            if (value >= 0 && value < num_classes) {
              h[value] += w - start;
            } else if (value == ignore_index) {
              h[num_classes] += w - start;
            } else {
              bad = std::min(bad, (b * height + r) * width + start);  // never used as an index
            }
          }
        }
      }
      for (int64_t seen = first_bad.load(); bad < seen && !first_bad.compare_exchange_weak(seen, bad);) {
      }
      for (int64_t j = 0; j < gw; ++j)
        out[(b * gh + i) * gw + j] = vote(hist.data() + j * slots, num_classes, ignore_index, count_ignore);
    }
  });
}

at::Tensor patch_dominant_class_cpu(const at::Tensor& labels_in, int64_t gh, int64_t gw, int64_t num_classes,
                                    int64_t ignore_index, bool count_ignore) {
  check_labels(labels_in, "labels");
  TORCH_CHECK_VALUE(num_classes >= 1 && num_classes <= (int64_t(1) << 20),
                    "styleda_fast: num_classes must be in [1, 1048576], got ", num_classes);
  TORCH_CHECK_VALUE(gh >= 1 && gw >= 1 && gh <= labels_in.size(1) && gw <= labels_in.size(2), "styleda_fast: grid (", gh,
              ", ", gw, ") must be >= 1 and <= the label size (", labels_in.size(1), ", ", labels_in.size(2), ")");
  const at::Tensor labels = labels_in.contiguous();
  const int64_t batch = labels.size(0), height = labels.size(1), width = labels.size(2);
  at::Tensor out = at::empty({batch, gh, gw}, labels.options().dtype(at::kLong));
  std::atomic<int64_t> first_bad{std::numeric_limits<int64_t>::max()};
  AT_DISPATCH_INTEGRAL_TYPES(labels.scalar_type(), "patch_dominant_class_cpu", [&] {
    dominant_class_kernel(labels.const_data_ptr<scalar_t>(), out.data_ptr<int64_t>(), batch, height, width, gh, gw,
                          num_classes, ignore_index, count_ignore, first_bad);
  });
  const int64_t bad = first_bad.load();
  TORCH_CHECK_VALUE(bad == std::numeric_limits<int64_t>::max(), "styleda_fast: labels must hold train ids in [0, ",
                    "num_classes = ", num_classes, ") or ignore_index = ", ignore_index, "; found ",
                    labels.flatten()[bad].item<int64_t>(), " at (", bad / (height * width), ", ",
                    bad / width % height, ", ", bad % width, ")");
  return out;
}

// ======================================== class_mean_std ========================================

// A run of pixels [start, start + length) of one class, as offsets into an image plane.
struct Run {
  int64_t start, length, label;
};

// The runs of one image's label map (row by row; runs never cross a row end). Pixels outside [0, K) are skipped.
template <typename L>
void image_runs(const L* labels, int64_t height, int64_t width, int64_t num_classes, std::vector<Run>& runs) {
  runs.clear();
  for (int64_t r = 0; r < height; ++r) {
    const L* row = labels + r * width;
    int64_t w = 0;
    while (w < width) {
      const L v = row[w];
      const int64_t start = w;
      while (++w < width && row[w] == v) {
      }
      const int64_t value = static_cast<int64_t>(v);
      if (value >= 0 && value < num_classes) runs.push_back({r * width + start, w - start, value});
    }
  }
}

template <typename T, typename A = acc_t<T>>
inline A run_sum(const T* x, int64_t n) {
  A s = A(0);
#pragma omp simd reduction(+ : s)
  for (int64_t k = 0; k < n; ++k) s += static_cast<A>(x[k]);
  return s;
}

template <typename T, typename A = acc_t<T>>
inline A run_centered_squares(const T* x, int64_t n, A mean) {
  A s = A(0);
#pragma omp simd reduction(+ : s)
  for (int64_t k = 0; k < n; ++k) {
    const A d = static_cast<A>(x[k]) - mean;
    s += d * d;
  }
  return s;
}

// NCHW images batch_stride elements apart: image b's plane c starts at x + b * batch_stride + c * plane.
template <typename T>
void class_mean_std_kernel(const T* x, int64_t batch_stride, const std::vector<std::vector<Run>>& runs,
                           const int64_t* count, acc_t<T>* mean_out, acc_t<T>* std_out, int64_t batch,
                           int64_t channels, int64_t plane, int64_t num_classes, double eps) {
  using A = acc_t<T>;
  const int64_t grain = std::max<int64_t>(1, kPixelsPerThread / std::max<int64_t>(1, plane));
  parallel_dynamic(batch * channels, std::max<int64_t>(grain, 4), [&](auto& pull) {
    std::vector<double> sum(num_classes), sq(num_classes);
    std::vector<A> mean(num_classes);
    int64_t begin = 0, end = 0;
    while (pull(begin, end)) for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / channels, c = task % channels;
      const T* xp = x + b * batch_stride + c * plane;
      const std::vector<Run>& rs = runs[b];
      const int64_t* n = count + b * num_classes;
      std::fill(sum.begin(), sum.end(), 0.0);
      std::fill(sq.begin(), sq.end(), 0.0);
      for (const Run& run : rs) sum[run.label] += run_sum(xp + run.start, run.length);
      for (int64_t k = 0; k < num_classes; ++k) mean[k] = n[k] > 0 ? A(sum[k] / double(n[k])) : A(0);
      for (const Run& run : rs) sq[run.label] += run_centered_squares(xp + run.start, run.length, mean[run.label]);
      for (int64_t k = 0; k < num_classes; ++k) {
        const int64_t o = (b * num_classes + k) * channels + c;
        mean_out[o] = mean[k];
        // Fewer than 2 pixels: variance 0 (std = sqrt(eps)) for 1 pixel, mean = std = 0 for an absent class.
        const double var = n[k] > 1 ? sq[k] / double(n[k] - 1) : 0.0;
        std_out[o] = n[k] > 0 ? A(std::sqrt(var + eps)) : A(0);
      }
    }
  });
}

// Channels of one task in the NHWC kernel. Each task reads block * element_size contiguous bytes of every pixel of
// its image: short blocks read a few lines 1 KB apart or more, which the prefetchers follow poorly (a 64-byte block
// of 8x256x192x192 channels_last ran 2.4x slower than a 1 KB one), so blocks are up to 1 KB, halved (down to 64
// bytes) while there are fewer than 4 tasks per thread, and smaller when many classes would make the per-class
// accumulators (num_classes x block doubles, twice) large.
constexpr int64_t kMaxBlockBytes = 1024, kMinBlockBytes = 64, kAccumulatorBudget = 1 << 15;

int64_t nhwc_channel_block(int64_t batch, int64_t channels, int64_t num_classes, int64_t element_size) {
  int64_t block = std::min(channels, std::max<int64_t>(1, kMaxBlockBytes / element_size));
  const int64_t tasks_wanted = 4 * static_cast<int64_t>(at::get_num_threads());
  while (block * element_size > kMinBlockBytes && batch * ((channels + block - 1) / block) < tasks_wanted)
    block = (block + 1) / 2;
  return std::max<int64_t>(1, std::min(block, kAccumulatorBudget / num_classes));
}

// NHWC images batch_stride elements apart: pixel p of image b has its channels at x + b * batch_stride + p * channels.
template <typename T>
void class_mean_std_nhwc_kernel(const T* x, int64_t batch_stride, const std::vector<std::vector<Run>>& runs,
                                const int64_t* count, acc_t<T>* mean_out, acc_t<T>* std_out, int64_t batch,
                                int64_t channels, int64_t plane, int64_t num_classes, double eps) {
  using A = acc_t<T>;
  const int64_t block = nhwc_channel_block(batch, channels, num_classes, sizeof(T));
  const int64_t blocks = (channels + block - 1) / block;
  const int64_t grain = std::max<int64_t>(1, kPixelsPerThread / std::max<int64_t>(1, plane * block));
  parallel_dynamic(batch * blocks, grain, [&](auto& pull) {
    // class k's accumulators for the block's channels: [k * block, k * block + cb)
    std::vector<double> sum(num_classes * block), sq(num_classes * block);
    std::vector<A> mean(num_classes * block);
    int64_t begin = 0, end = 0;
    while (pull(begin, end)) for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / blocks, c0 = task % blocks * block, cb = std::min(block, channels - c0);
      const T* xb = x + b * batch_stride + c0;
      const std::vector<Run>& rs = runs[b];
      const int64_t* n = count + b * num_classes;
      std::fill(sum.begin(), sum.end(), 0.0);
      std::fill(sq.begin(), sq.end(), 0.0);
      for (const Run& run : rs) {
        double* s = sum.data() + run.label * block;
        for (int64_t p = run.start; p < run.start + run.length; ++p) {
          const T* xp = xb + p * channels;
#pragma omp simd
          for (int64_t c = 0; c < cb; ++c) s[c] += static_cast<double>(static_cast<A>(xp[c]));
        }
      }
      for (int64_t k = 0; k < num_classes; ++k)
        for (int64_t c = 0; c < cb; ++c)
          mean[k * block + c] = n[k] > 0 ? A(sum[k * block + c] / double(n[k])) : A(0);
      for (const Run& run : rs) {
        double* q = sq.data() + run.label * block;
        const A* m = mean.data() + run.label * block;
        for (int64_t p = run.start; p < run.start + run.length; ++p) {
          const T* xp = xb + p * channels;
#pragma omp simd
          for (int64_t c = 0; c < cb; ++c) {
            const A d = static_cast<A>(xp[c]) - m[c];
            q[c] += static_cast<double>(d) * static_cast<double>(d);
          }
        }
      }
      for (int64_t k = 0; k < num_classes; ++k) {
        const int64_t o = (b * num_classes + k) * channels + c0;
        // Fewer than 2 pixels: variance 0 (std = sqrt(eps)) for 1 pixel, mean = std = 0 for an absent class.
        for (int64_t c = 0; c < cb; ++c) {
          const double var = n[k] > 1 ? sq[k * block + c] / double(n[k] - 1) : 0.0;
          mean_out[o + c] = mean[k * block + c];
          std_out[o + c] = n[k] > 0 ? A(std::sqrt(var + eps)) : A(0);
        }
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> class_mean_std_cpu(const at::Tensor& x_in, const at::Tensor& labels_in,
                                                                  int64_t num_classes, double eps) {
  check_cpu_float(x_in, "x");
  TORCH_CHECK_VALUE(x_in.dim() == 4, "styleda_fast: x must be 4-D (B, C, H, W), got ", x_in.dim(), " dims");
  check_labels(labels_in, "labels");
  TORCH_CHECK_VALUE(labels_in.size(0) == x_in.size(0) && labels_in.size(1) == x_in.size(2) &&
                  labels_in.size(2) == x_in.size(3),
              "styleda_fast: labels must be (B, H, W) = (", x_in.size(0), ", ", x_in.size(2), ", ", x_in.size(3),
              ") to match x, got ", labels_in.sizes());
  TORCH_CHECK_VALUE(num_classes >= 1 && num_classes <= (int64_t(1) << 20),
                    "styleda_fast: num_classes must be in [1, 1048576], got ", num_classes);
  check_scalar(eps, "eps");
  // x in place when its images are NCHW or NHWC with any batch stride (a token grid), else an NCHW copy
  const at::Tensor x = kernel_input(x_in), labels = labels_in.contiguous();
  const MemoryLayout layout = *memory_layout(x);
  const int64_t batch = x.size(0), channels = x.size(1), height = x.size(2), width = x.size(3);
  const auto acc = acc_dtype(x);
  at::Tensor mean = at::empty({batch, num_classes, channels}, x.options().dtype(acc));
  at::Tensor std = at::empty_like(mean);
  at::Tensor count = at::zeros({batch, num_classes}, x.options().dtype(at::kLong));
  std::vector<std::vector<Run>> runs(batch);
  AT_DISPATCH_INTEGRAL_TYPES(labels.scalar_type(), "class_runs_cpu", [&] {
    const scalar_t* lp = labels.const_data_ptr<scalar_t>();
    at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) image_runs(lp + b * height * width, height, width, num_classes, runs[b]);
    });
  });
  int64_t* n = count.data_ptr<int64_t>();
  for (int64_t b = 0; b < batch; ++b)
    for (const Run& run : runs[b]) n[b * num_classes + run.label] += run.length;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "class_mean_std_cpu", [&] {
    using A = acc_t<scalar_t>;
    const auto kernel = layout.inner == Layout::kNHWC ? class_mean_std_nhwc_kernel<scalar_t>
                                                      : class_mean_std_kernel<scalar_t>;
    kernel(x.const_data_ptr<scalar_t>(), layout.batch_stride, runs, n, mean.data_ptr<A>(), std.data_ptr<A>(), batch,
           channels, height * width, num_classes, eps);
  });
  return {mean, std, count};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(styleda_fast, m) {
  m.set_python_module("styleda_fast.ops.class_stats._ops");  // where the fake kernels live
  // Mode of the labels (B, H, W) in each patch of a grid_h x grid_w grid -> (B, gh, gw) int64. Labels must be in
  // [0, num_classes) or equal ignore_index; with count_ignore the ignore value votes like a class. Ties go to the
  // smallest value; a patch without votes gets ignore_index.
  m.def(
      "patch_dominant_class(Tensor labels, int grid_h, int grid_w, int num_classes, int ignore_index,"
      " bool count_ignore) -> Tensor");
  // Per image and class, mean and std (B, K, C) of x (B, C, H, W) over the pixels with that label (B, H, W), and
  // the pixel count (B, K) int64. Pixels whose label is outside [0, K) are skipped. float32 stats (float64 for
  // float64 x). Fewer than 2 pixels: variance 0 for one pixel; mean = std = 0 for none.
  m.def("class_mean_std(Tensor x, Tensor labels, int num_classes, float eps) -> (Tensor mean, Tensor std, Tensor count)");
}

TORCH_LIBRARY_IMPL(styleda_fast, CPU, m) {
  m.impl("patch_dominant_class", &patch_dominant_class_cpu);
  m.impl("class_mean_std", &class_mean_std_cpu);
}

}  // namespace styleda_fast
