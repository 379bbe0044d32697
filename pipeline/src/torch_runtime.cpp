// LibTorch runtime controls (torch_runtime.h) for the core: threads, seeding, what the
// process runs on. Only ATen/torch headers this needs, not <torch/torch.h>: the core stays
// quick to compile, and the stage library owns the torch-heavy code (stages/torch_util.*).
#include "torch_runtime.h"

#include <ATen/Config.h>
#include <ATen/Context.h>
#include <ATen/Parallel.h>
#include <torch/cuda.h>
#include <torch/utils.h>
#include <torch/version.h>

#include <algorithm>
#include <atomic>
#include <exception>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <set>
#include <vector>

#include <fmt/format.h>
#include <malloc.h>

#if AT_PARALLEL_OPENMP && !AT_MKL_ENABLED()
// Declared weak: pipe does not link OpenMP itself, LibTorch loads libgomp.
extern "C" void omp_set_num_threads(int) __attribute__((weak));
#endif

namespace pipeline {

namespace {
// glibc serves blocks above its mmap threshold (dynamic, up to 32 MiB) with mmap and returns
// freed heap tops above its trim threshold to the kernel. A conv base allocates and frees
// activations of several MiB every batch, so both made every batch fault its activations in
// afresh (vgg16 at 64 px: 4-8% of the extraction's CPU time in the kernel, `pipe bench`
// "system time share"); with fixed thresholds of 256 MiB / 1 GiB the freed blocks are reused
// (1%). The price: a process keeps up to 1 GiB of freed heap instead of returning it early.
// MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_ in the environment still win.
void tune_allocator() {
  if (!std::getenv("MALLOC_MMAP_THRESHOLD_")) ::mallopt(M_MMAP_THRESHOLD, 256 << 20);
  if (!std::getenv("MALLOC_TRIM_THRESHOLD_")) ::mallopt(M_TRIM_THRESHOLD, 1 << 30);
}
}  // namespace

namespace {
std::atomic<int> g_threads{0};  // 0: never set
}  // namespace

void torch_set_threads(int n) {
  static std::once_flag interop_once;
  std::call_once(interop_once, [] {
    tune_allocator();
    // Throws when inter-op work already ran (set_num_interop_threads may be called once,
    // before any inter-op parallel work): then the process keeps LibTorch's own setting.
    try {
      at::set_num_interop_threads(1);
    } catch (const std::exception&) {
    }
  });
  g_threads = std::max(1, n);
  at::set_num_threads(g_threads);
}

int torch_threads() {
  const int n = g_threads;
  return n > 0 ? n : at::get_num_threads();
}

namespace {
// Whether LibTorch's intra-op count is per thread: its OpenMP backend without MKL (which keeps
// a count of its own), with libgomp loaded.
bool per_thread_counts() {
#if AT_PARALLEL_OPENMP && !AT_MKL_ENABLED()
  return omp_set_num_threads != nullptr;
#else
  return false;
#endif
}
}  // namespace

int torch_threads_here(int n) {
  // First: a thread's first ATen call applies the process-wide count, which would undo ours.
  const int prev = at::get_num_threads();
  if (n == prev) return prev;
#if AT_PARALLEL_OPENMP && !AT_MKL_ENABLED()
  if (per_thread_counts()) {
    omp_set_num_threads(std::max(1, n));
    return prev;
  }
#endif
  at::set_num_threads(std::max(1, n));  // one process-wide count: no other way
  return prev;
}

void torch_single_thread_here() {
  if (per_thread_counts()) torch_threads_here(1);
}

int torch_parallel_for_each_threads() {
#if defined(__SANITIZE_THREAD__)
  return 1;
#else
  return at::in_parallel_region() ? 1 : at::get_num_threads();
#endif
}

void torch_parallel_for_each(int64_t n, const std::function<void(int64_t)>& fn) {
  if (n <= 0) return;
  std::vector<std::exception_ptr> errors(static_cast<size_t>(n));
  std::atomic<int64_t> next{0};
  const auto drain = [&](int64_t, int64_t) {
    for (int64_t i = next++; i < n; i = next++) {
      try {
        fn(i);
      } catch (...) {
        errors[static_cast<size_t>(i)] = std::current_exception();
      }
    }
  };
#if defined(__SANITIZE_THREAD__)
  // ThreadSanitizer cannot see libgomp's own synchronization (a libgomp built without it):
  // every hand-over inside a parallel region would read as a race, so under it the items run
  // here, in order (torch_parallel_for_each_threads() says 1).
  drain(0, 1);
#else
  // One chunk per thread (grain 1 over the thread count); each drains the shared counter.
  at::parallel_for(0, std::min<int64_t>(n, torch_parallel_for_each_threads()), 1, drain);
#endif
  for (const std::exception_ptr& e : errors)
    if (e) std::rethrow_exception(e);
}

namespace {
// Shared objects mapped into this process whose file name mentions a BLAS/LAPACK provider.
std::vector<std::string> mapped_blas_libraries() {
  std::ifstream maps("/proc/self/maps");
  std::set<std::string> seen;
  std::vector<std::string> out;
  std::string line;
  while (std::getline(maps, line)) {
    const auto slash = line.find('/');
    if (slash == std::string::npos) continue;
    const std::string path = line.substr(slash);
    const std::string file = std::filesystem::path(path).filename().string();
    const bool blas = file.find("blas") != std::string::npos ||
                      file.find("lapack") != std::string::npos ||
                      file.rfind("libmkl", 0) == 0 || file.find("blis") != std::string::npos;
    if (blas && seen.insert(path).second) out.push_back(path);
  }
  return out;
}
}  // namespace

std::string torch_runtime_info() {
  std::vector<std::string> blas = mapped_blas_libraries();
  return fmt::format(
      "LibTorch {}, {} intra-op thread(s), {} inter-op, BLAS: {}, oneDNN: {}, CUDA: {}",
      TORCH_VERSION, torch_threads(), at::get_num_interop_threads(),
      blas.empty() ? std::string("none mapped") : fmt::format("{}", fmt::join(blas, ", ")),
      at::hasMKLDNN() ? "yes" : "no",
      torch::cuda::is_available()
          ? fmt::format("{} device(s)", torch::cuda::device_count())
          : std::string("not available"));
}

bool torch_cuda_available() { return torch::cuda::is_available(); }

void torch_manual_seed(uint64_t seed) { torch::manual_seed(seed); }

}  // namespace pipeline
