// LibTorch runtime controls for code that must not include torch (the runner, the CLI).
// Implemented in torch_runtime.cpp.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

namespace pipeline {

// Intra-op threads for LibTorch (at::set_num_threads(n), n >= 1); the first call also pins
// inter-op threads to 1 (pipe's own parallelism is the TBB flow graph) and fixes glibc's
// mmap/trim thresholds so that per-batch activations are reused, not faulted in afresh.
void torch_set_threads(int n);

// The count the last torch_set_threads() set (LibTorch's own count before any call).
int torch_threads();

// The calling thread's intra-op threads (n >= 1). With LibTorch's OpenMP backend, LibTorch's
// loops, oneDNN and OpenBLAS follow the calling thread's OpenMP count, which this sets for
// this thread only, in nanoseconds; at::set_num_threads also rebuilds caffe2's thread pool
// and changes every thread that starts LibTorch work later (the fallback where counts are
// process-wide). Returns the count the thread had, to restore.
int torch_threads_here(int n);

// The calling thread runs LibTorch on one intra-op thread from now on, where counts are per
// thread (LibTorch's OpenMP backend, Debian's and pytorch.org's); elsewhere it does nothing.
void torch_single_thread_here();

// Runs fn(i) for every i in [0, n) on the calling thread's LibTorch team (at::parallel_for),
// each thread taking the next i as it finishes one: items of uneven cost still share the cores.
// Every item runs, also after one throws; then the exception of the lowest failing i is
// rethrown. Inside a parallel region it runs serially on the calling thread.
void torch_parallel_for_each(int64_t n, const std::function<void(int64_t)>& fn);

// The threads torch_parallel_for_each would use if called here now (1 under ThreadSanitizer,
// which cannot see libgomp's synchronization).
int torch_parallel_for_each_threads();

// One line: LibTorch version, intra-op threads, the BLAS/LAPACK/oneDNN libraries actually
// mapped into this process (read from /proc/self/maps, so the Debian alternatives symlink
// libblas.so.3 shows as its real target), and CUDA availability.
std::string torch_runtime_info();

bool torch_cuda_available();

// Seeds LibTorch's global generators (CPU and, when present, CUDA).
void torch_manual_seed(uint64_t seed);

}  // namespace pipeline
