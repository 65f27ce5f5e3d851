// Large CPU output buffers: transparent huge pages, and a bounded cache of freed buffers.
//
// A training step allocates the same outputs every step (the augmented features, their gradient: 300 MB each at
// FAMix's crop 768, batch 8). glibc hands such blocks back to the OS when they are freed, so every step faults the
// memory in again page by page: with 4 KB pages that costs about three times the kernel itself (60 ms for 302 MB
// on 2 cores against 20 ms of work), and with huge pages the kernel may stall compacting memory for them
// (hundreds of ms when the page cache has fragmented free memory). So freed buffers go to a cache and the next
// output of the same size takes one, already faulted in: the CPU counterpart of PyTorch's CUDA caching allocator.
//
// The cache holds at most STYLEDA_FAST_OUTPUT_CACHE_MB megabytes (default 2048; 0 turns it off) of buffers that
// no tensor uses; torch.ops.styleda_fast.release_output_cache() frees them (styleda_fast.release_output_cache()).
// STYLEDA_FAST_HUGE_PAGES=0 turns the huge-page advice off.
#include "output_buffers.h"

#include "common.h"

#include <torch/library.h>

#include <cstdlib>
#include <limits>
#include <list>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#ifdef __linux__
#include <pthread.h>
#include <sys/mman.h>
#endif

namespace styleda_fast {
namespace {

constexpr size_t kHugePage = size_t(2) << 20;
constexpr size_t kCachedMinimum = 4 * kHugePage;  // smaller outputs: at::empty (glibc keeps those itself)

size_t env_megabytes(const char* name, size_t fallback) {
  const char* value = std::getenv(name);
  if (value == nullptr || *value == '\0') return fallback;
  char* end = nullptr;
  const unsigned long long mb = std::strtoull(value, &end, 10);
  return end != nullptr && *end == '\0' ? size_t(mb) : fallback;
}

bool huge_pages_enabled() {
  static const bool enabled = [] {
    const char* env = std::getenv("STYLEDA_FAST_HUGE_PAGES");
    return env == nullptr || std::string(env) != "0";
  }();
  return enabled;
}

// Freed buffers by size, the most recently freed first. Sizes are whole huge pages.
class BufferCache {
 public:
  void* take(size_t size) {
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto it = free_.begin(); it != free_.end(); ++it) {
      if (it->first == size) {
        void* data = it->second;
        free_.erase(it);
        cached_ -= size;
        return data;
      }
    }
    return nullptr;
  }

  // Keeps the buffer unless that would exceed the limit; the oldest buffers go first to make room.
  void give(void* data, size_t size) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (size > limit_) {
      std::free(data);
      return;
    }
    while (cached_ + size > limit_ && !free_.empty()) {
      std::free(free_.back().second);
      cached_ -= free_.back().first;
      free_.pop_back();
    }
    free_.emplace_front(size, data);
    cached_ += size;
  }

  int64_t release() {
    std::lock_guard<std::mutex> lock(mutex_);
    const size_t released = cached_;
    for (auto& entry : free_) std::free(entry.second);
    free_.clear();
    cached_ = 0;
    return int64_t(released);
  }

  void lock() { mutex_.lock(); }
  void unlock() { mutex_.unlock(); }

  int64_t cached_bytes() {
    std::lock_guard<std::mutex> lock(mutex_);
    return int64_t(cached_);
  }

 private:
  std::mutex mutex_;
  std::list<std::pair<size_t, void*>> free_;
  size_t cached_ = 0;
  const size_t limit_ = env_megabytes("STYLEDA_FAST_OUTPUT_CACHE_MB", 2048) << 20;
};

// Never destroyed: tensors may be freed during interpreter shutdown, after static destructors would have run.
BufferCache& cache() {
  static BufferCache* instance = [] {
    auto* created = new BufferCache();
#ifdef __linux__
    // fork() (DataLoader workers) while another thread holds the cache's lock would leave the child a lock that
    // nobody releases: hold it across the fork, then release it on both sides.
    pthread_atfork([] { cache().lock(); }, [] { cache().unlock(); }, [] { cache().unlock(); });
#endif
    return created;
  }();
  return *instance;
}

void* new_buffer(size_t size) {
  void* data = std::aligned_alloc(kHugePage, size);
#ifdef __linux__
  if (data != nullptr && huge_pages_enabled()) madvise(data, size, MADV_HUGEPAGE);  // advisory
#endif
  return data;
}

int64_t release_output_cache() { return cache().release(); }

// An uninitialised tensor with x's sizes, dtype and strides (x's if dense, else NCHW-contiguous) from the cache,
// for elementwise results written with out= (e.g. a backward's grad_y * scale).
at::Tensor empty_cached_like(const at::Tensor& x) {
  check_cpu_float(x, "x");
  std::vector<int64_t> strides(x.dim());
  int64_t elements = 1;
  for (int64_t d = x.dim() - 1; d >= 0; --d) {
    strides[d] = elements;
    elements *= x.size(d);
  }
  if (x.is_non_overlapping_and_dense()) strides = x.strides().vec();
  return empty_output(x.sizes(), strides, 0, elements, x.options());
}

int64_t output_cache_bytes() { return cache().cached_bytes(); }

}  // namespace

at::Tensor empty_output(at::IntArrayRef sizes, at::IntArrayRef strides, int64_t offset, int64_t elements,
                        const at::TensorOptions& options) {
  const size_t nbytes = size_t(elements) * options.dtype().itemsize();
  void* data = nullptr;
  size_t size = 0;
  if (nbytes >= kCachedMinimum) {
    size = (nbytes + kHugePage - 1) / kHugePage * kHugePage;
    data = cache().take(size);
    if (data == nullptr) data = new_buffer(size);
  }
  if (data == nullptr) {
    if (offset == 0 && at::detail::computeStorageNbytes(sizes, strides, 1) == size_t(elements))
      return at::empty_strided(sizes, strides, options);
    // set_, not as_strided: the output owns its storage alone, it is not a view of a temporary buffer
    return at::empty({0}, options).set_(at::empty({elements}, options).storage(), offset, sizes, strides);
  }
  at::Tensor out = at::for_blob(data, sizes)
                       .strides(strides)
                       .storage_offset(offset)
                       .deleter([size](void* p) { cache().give(p, size); })
                       .options(options)
                       .make_tensor();
  // What at::empty does under torch.use_deterministic_algorithms with fill_uninitialized_memory: NaN, so that an
  // element a kernel fails to write shows in tests, fresh buffer or reused.
  const auto& context = at::globalContext();
  if (context.deterministicAlgorithms() && context.deterministicFillUninitializedMemory() && out.is_floating_point())
    at::from_blob(data, {elements}, options).fill_(std::numeric_limits<double>::quiet_NaN());
  return out;
}

TORCH_LIBRARY_FRAGMENT(styleda_fast, m) {
  // Frees the cached output buffers that no tensor uses; returns how many bytes were released.
  m.def("release_output_cache() -> int");
  // Bytes held by the output cache in buffers that no tensor uses.
  m.def("output_cache_bytes() -> int");
  // Uninitialised, x's sizes and dtype and (if x is dense) strides, from the cache when large.
  m.def("empty_cached_like(Tensor x) -> Tensor");
  m.impl("empty_cached_like", c10::DispatchKey::CPU, &empty_cached_like);
  m.impl("release_output_cache", c10::DispatchKey::CompositeExplicitAutograd, &release_output_cache);
  m.impl("output_cache_bytes", c10::DispatchKey::CompositeExplicitAutograd, &output_cache_bytes);
}

}  // namespace styleda_fast
