// LibTorch runtime controls for code that must not include torch (the runner, the CLI).
// Implemented in torch_runtime.cpp.
#pragma once

#include <cstdint>
#include <string>

namespace pipeline {

// Intra-op threads for LibTorch (at::set_num_threads(n), n >= 1); the first call also pins
// inter-op threads to 1 (pipe's own parallelism is the TBB flow graph) and fixes glibc's
// mmap/trim thresholds so that per-batch activations are reused, not faulted in afresh.
void torch_set_threads(int n);

// One line: LibTorch version, intra-op threads, the BLAS/LAPACK/oneDNN libraries actually
// mapped into this process (read from /proc/self/maps, so the Debian alternatives symlink
// libblas.so.3 shows as its real target), and CUDA availability.
std::string torch_runtime_info();

bool torch_cuda_available();

// Seeds LibTorch's global generators (CPU and, when present, CUDA).
void torch_manual_seed(uint64_t seed);

}  // namespace pipeline
