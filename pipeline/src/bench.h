// pipe bench: each figure measured against its bound in the same run (the machine is shared
// and noisy: absolute times drift, ratios hold). Writes bench.json.
#pragma once

#include <string>

namespace pipeline {

struct BenchOptions {
  bool smoke = false;          // a few batches per figure: proves the benchmarks still work
  std::string out = "bench.json";
  int threads = 0;             // 0: all cores
  std::string data_dir;        // where generated images go ("" : a temp dir, removed after)
  std::string only;            // run only figures whose name contains this (case-insensitive)
};

// Returns 0 when every figure was measured (met or not), 1 otherwise, 2 when --only
// matches no figure.
int run_bench(const BenchOptions& options);

}  // namespace pipeline
