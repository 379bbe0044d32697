// LibTorch runtime controls (torch_runtime.h) for the core: threads, seeding, what the
// process runs on. Only ATen/torch headers this needs, not <torch/torch.h>: the core stays
// quick to compile, and the stage library owns the torch-heavy code (stages/torch_util.*).
#include "torch_runtime.h"

#include <ATen/Context.h>
#include <ATen/Parallel.h>
#include <torch/cuda.h>
#include <torch/utils.h>
#include <torch/version.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <set>
#include <vector>

#include <fmt/format.h>

namespace pipeline {

void torch_set_threads(int n) {
  static std::once_flag interop_once;
  std::call_once(interop_once, [] {
    // Throws when inter-op work already ran (set_num_interop_threads may be called once,
    // before any inter-op parallel work): then the process keeps LibTorch's own setting.
    try {
      at::set_num_interop_threads(1);
    } catch (const std::exception&) {
    }
  });
  at::set_num_threads(std::max(1, n));
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
      TORCH_VERSION, at::get_num_threads(), at::get_num_interop_threads(),
      blas.empty() ? std::string("none mapped") : fmt::format("{}", fmt::join(blas, ", ")),
      at::hasMKLDNN() ? "yes" : "no",
      torch::cuda::is_available()
          ? fmt::format("{} device(s)", torch::cuda::device_count())
          : std::string("not available"));
}

bool torch_cuda_available() { return torch::cuda::is_available(); }

void torch_manual_seed(uint64_t seed) { torch::manual_seed(seed); }

}  // namespace pipeline
