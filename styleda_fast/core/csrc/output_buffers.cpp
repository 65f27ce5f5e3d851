// Large CPU output buffers: transparent huge pages, and a bounded cache of freed buffers.
//
// A training step allocates the same outputs every step (the augmented features, their gradient: 300 MB each at
// FAMix's crop 768, batch 8). glibc hands such blocks back to the OS when they are freed, so every step faults the
// memory in again page by page: with 4 KB pages that costs about three times the kernel itself (60 ms for 302 MB
// on 2 cores against 20 ms of work), and with huge pages the kernel may stall compacting memory for them
// (hundreds of ms when the page cache has fragmented free memory). So freed buffers go to a cache and the next
// output of the same size takes one, already faulted in: the CPU counterpart of PyTorch's CUDA caching allocator.
//
// Limit: STYLEDA_FAST_OUTPUT_CACHE_MB megabytes of buffers that no tensor uses: a plain decimal integer from 0 (off)
// to 1048576 (1 TiB), spaces or tabs around it allowed; unset or empty: 2048. Any other value (-1, 1e3, 0x10, abc,
// too large) warns once, naming the variable, and uses 2048. The cache also keeps at most a quarter of what the
// process may use: the smaller of its cgroup's memory limit (v2 memory.max, v1 memory.limit_in_bytes) and its
// address-space limit (RLIMIT_AS, read again whenever a buffer is freed).
//
// Allocation failures: when a new output buffer cannot be allocated, or any CPU tensor (the CPU allocator is wrapped
// while the extension is loaded), the idle cached buffers are freed and the allocation is tried once more, as
// PyTorch's CUDA caching allocator does. torch.ops.styleda_fast.release_output_cache() frees them on request
// (styleda_fast.memory.release_output_cache()). STYLEDA_FAST_HUGE_PAGES=0 turns the huge-page advice off.
#include "output_buffers.h"

#include "common.h"

#include <c10/core/CPUAllocator.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <limits>
#include <list>
#include <mutex>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#ifdef __linux__
#include <pthread.h>
#include <sys/mman.h>
#include <sys/resource.h>
#endif

namespace styleda_fast {
namespace {

constexpr size_t kHugePage = size_t(2) << 20;
constexpr size_t kCachedMinimum = 4 * kHugePage;  // smaller outputs: at::empty (glibc keeps those itself)
constexpr size_t kUnlimited = std::numeric_limits<size_t>::max();
constexpr const char* kLimitVariable = "STYLEDA_FAST_OUTPUT_CACHE_MB";
constexpr uint64_t kDefaultMegabytes = 2048;
constexpr uint64_t kMaxMegabytes = uint64_t(1) << 20;

// The digits of `text` as a number if it is a plain decimal integer in [0, kMaxMegabytes] with only spaces or tabs
// around it; else kUnlimited.
size_t parse_megabytes(const std::string& text) {
  const size_t begin = text.find_first_not_of(" \t");
  if (begin == std::string::npos) return kUnlimited;
  const size_t end = text.find_last_not_of(" \t") + 1;
  uint64_t value = 0;
  for (size_t i = begin; i < end; ++i) {
    if (text[i] < '0' || text[i] > '9') return kUnlimited;
    value = value * 10 + uint64_t(text[i] - '0');
    if (value > kMaxMegabytes) return kUnlimited;
  }
  return size_t(value);
}

// STYLEDA_FAST_OUTPUT_CACHE_MB in bytes (the default when unset or empty), or nullopt when it is not a plain number.
c10::optional<size_t> requested_limit() {
  const char* value = std::getenv(kLimitVariable);
  if (value == nullptr || *value == '\0') return size_t(kDefaultMegabytes) << 20;
  const size_t megabytes = parse_megabytes(value);
  if (megabytes == kUnlimited) return c10::nullopt;
  return megabytes << 20;
}

// STYLEDA_FAST_OUTPUT_CACHE_MB in bytes, read once (see the top of this file); a bad value warns and gives the default.
size_t configured_limit() {
  static const size_t limit = [] {
    if (const c10::optional<size_t> requested = requested_limit()) return *requested;
    std::string shown(std::getenv(kLimitVariable));
    if (shown.size() > 40) shown = shown.substr(0, 40) + "...";
    TORCH_WARN(kLimitVariable, "='", shown, "' is not a whole number of megabytes from 0 to ", kMaxMegabytes,
               " (digits only); the output cache keeps the default ", kDefaultMegabytes, " MB");
    return size_t(kDefaultMegabytes) << 20;
  }();
  return limit;
}

#ifdef __linux__
// The first number (or "max") in a cgroup limit file; kUnlimited if it is missing or says "max".
size_t read_cgroup_file(const std::string& path) {
  std::ifstream file(path);
  std::string word;
  if (!(file >> word) || word == "max" || word.empty()) return kUnlimited;
  size_t value = 0;
  for (char c : word) {
    if (c < '0' || c > '9') return kUnlimited;
    if (value > (kUnlimited - 9) / 10) return kUnlimited;
    value = value * 10 + size_t(c - '0');
  }
  return value;
}

// The smallest memory limit of the process's cgroup and its ancestors (v2 and v1, at the usual mount points).
size_t cgroup_limit() {
  static const size_t limit = [] {
    size_t smallest = kUnlimited;
    std::ifstream cgroups("/proc/self/cgroup");
    std::string line;
    while (std::getline(cgroups, line)) {
      const size_t first = line.find(':'), second = line.find(':', first + 1);
      if (first == std::string::npos || second == std::string::npos) continue;
      const std::string hierarchy = line.substr(0, first), controllers = line.substr(first + 1, second - first - 1);
      std::string path = line.substr(second + 1);
      std::vector<std::string> files;
      if (hierarchy == "0" && controllers.empty()) {
        files = {"/sys/fs/cgroup", "/sys/fs/cgroup/unified"};
        for (auto& f : files) f += "%s/memory.max";
      } else if (("," + controllers + ",").find(",memory,") != std::string::npos) {
        files = {"/sys/fs/cgroup/memory%s/memory.limit_in_bytes"};
      } else {
        continue;
      }
      while (true) {  // the cgroup and each ancestor up to the root
        const std::string dir = path == "/" ? "" : path;
        for (const auto& pattern : files) {
          std::string file = pattern;
          file.replace(file.find("%s"), 2, dir);
          smallest = std::min(smallest, read_cgroup_file(file));
        }
        if (dir.empty()) break;
        const size_t slash = path.find_last_of('/');
        path = slash == 0 || slash == std::string::npos ? "/" : path.substr(0, slash);
      }
    }
    return smallest;
  }();
  return limit;
}

size_t address_space_limit() {
  struct rlimit limit;
  if (getrlimit(RLIMIT_AS, &limit) != 0 || limit.rlim_cur == RLIM_INFINITY) return kUnlimited;
  return size_t(limit.rlim_cur);
}
#endif

// The most idle buffer bytes the cache keeps: the configured limit, and a quarter of what the process may use.
size_t cache_limit() {
  size_t limit = configured_limit();
#ifdef __linux__
  const size_t process = std::min(cgroup_limit(), address_space_limit());
  if (process != kUnlimited) limit = std::min(limit, process / 4);
#endif
  return limit;
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
  BufferCache() { configured_limit(); }  // the limit's warning, if any, on first use (from Python, not a deleter)

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
    const size_t limit = cache_limit();
    std::lock_guard<std::mutex> lock(mutex_);
    if (size > limit) {
      std::free(data);
      return;
    }
    while (cached_ + size > limit && !free_.empty()) {
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

// The CPU allocator that at::empty and every CPU tensor use, wrapped: an allocation that fails while the cache holds
// idle buffers is tried once more after freeing them.
class ReleasingCPUAllocator final : public c10::Allocator {
 public:
  explicit ReleasingCPUAllocator(c10::Allocator* inner) : inner_(inner) {}

  c10::DataPtr allocate(size_t n) override {
    try {
      return inner_->allocate(n);
    } catch (const c10::Error&) {
      if (cache().release() == 0) throw;
    }
    return inner_->allocate(n);
  }

  c10::DeleterFnPtr raw_deleter() const override { return inner_->raw_deleter(); }
  bool is_simple_data_ptr(const c10::DataPtr& data_ptr) const override {
    return inner_->is_simple_data_ptr(data_ptr);
  }
  void copy_data(void* dest, const void* src, std::size_t count) const override {
    inner_->copy_data(dest, src, count);
  }

 private:
  c10::Allocator* inner_;
};

// Installed when the extension loads, unless STYLEDA_FAST_OUTPUT_CACHE_MB=0 turns the cache off (then it would never
// hold anything to release); never destroyed (storages keep a pointer to their allocator).
const bool releasing_allocator_installed = [] {
  if (requested_limit() == size_t(0)) return false;
  c10::SetCPUAllocator(new ReleasingCPUAllocator(c10::GetCPUAllocator()));
  return true;
}();

bool cpu_allocator_wrapped() { return releasing_allocator_installed; }

void* new_buffer(size_t size) {
  void* data = std::aligned_alloc(kHugePage, size);
  if (data == nullptr && cache().release() > 0) data = std::aligned_alloc(kHugePage, size);  // retry once
#ifdef __linux__
  if (data != nullptr && huge_pages_enabled()) madvise(data, size, MADV_HUGEPAGE);  // advisory
#endif
  return data;
}

int64_t release_output_cache() { return cache().release(); }

int64_t output_cache_limit() {
  cache();
  return int64_t(cache_limit());
}

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

// Zeroes the elements of a fresh buffer that the output does not address (the prefix rows of a token grid's output:
// before, between and after its images), so that no data of an earlier tensor shows through them (grid_as_tokens).
void zero_gaps(void* data, at::IntArrayRef sizes, at::IntArrayRef strides, int64_t offset, int64_t elements,
               size_t itemsize) {
  auto zero = [&](int64_t begin, int64_t end) {
    if (end > begin) std::memset(static_cast<char*>(data) + begin * itemsize, 0, size_t(end - begin) * itemsize);
  };
  const int64_t spanned = int64_t(at::detail::computeStorageNbytes(sizes, strides, 1));
  if (offset == 0 && spanned == elements) return;  // dense: no gaps
  if (sizes.empty() || spanned == 0) return zero(0, elements);
  const int64_t batch = sizes[0], batch_stride = strides[0];
  const int64_t image = sizes.size() == 1 ? 1 : int64_t(at::detail::computeStorageNbytes(sizes.slice(1), strides.slice(1), 1));
  if (batch > 1 && batch_stride < image) return zero(0, elements);  // images interleave: the kernel writes it all
  int64_t covered = 0;
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t begin = offset + b * batch_stride;
    zero(covered, begin);
    covered = begin + image;
  }
  zero(covered, elements);
}

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
  if (data == nullptr) {  // small, or no memory for a huge-page buffer: at::empty (which reports a failure)
    if (offset == 0 && at::detail::computeStorageNbytes(sizes, strides, 1) == size_t(elements))
      return at::empty_strided(sizes, strides, options);
    // set_, not as_strided: the output owns its storage alone, it is not a view of a temporary buffer
    at::Tensor buffer = at::empty({elements}, options);
    zero_gaps(buffer.data_ptr(), sizes, strides, offset, elements, options.dtype().itemsize());
    return at::empty({0}, options).set_(buffer.storage(), offset, sizes, strides);
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
  zero_gaps(data, sizes, strides, offset, elements, options.dtype().itemsize());
  return out;
}

TORCH_LIBRARY_FRAGMENT(styleda_fast, m) {
  // Frees the cached output buffers that no tensor uses; returns how many bytes were released.
  m.def("release_output_cache() -> int");
  // Bytes held by the output cache in buffers that no tensor uses.
  m.def("output_cache_bytes() -> int");
  // The most idle bytes the cache keeps now: STYLEDA_FAST_OUTPUT_CACHE_MB, bounded by the process's memory limits.
  m.def("output_cache_limit() -> int");
  // Whether loading the extension wrapped PyTorch's CPU allocator (see ReleasingCPUAllocator).
  m.def("cpu_allocator_wrapped() -> bool");
  // Uninitialised, x's sizes and dtype and (if x is dense) strides, from the cache when large.
  m.def("empty_cached_like(Tensor x) -> Tensor");
  m.impl("empty_cached_like", c10::DispatchKey::CPU, &empty_cached_like);
  m.impl("release_output_cache", c10::DispatchKey::CompositeExplicitAutograd, &release_output_cache);
  m.impl("output_cache_bytes", c10::DispatchKey::CompositeExplicitAutograd, &output_cache_bytes);
  m.impl("output_cache_limit", c10::DispatchKey::CompositeExplicitAutograd, &output_cache_limit);
  m.impl("cpu_allocator_wrapped", c10::DispatchKey::CompositeExplicitAutograd, &cpu_allocator_wrapped);
}

}  // namespace styleda_fast
