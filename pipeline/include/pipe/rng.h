// Counter-based random streams (Philox4x32-10, Salmon et al. 2011).
//
// A random stage never owns a generator: the framework hands it a stream keyed on
// (run seed, node name, epoch, sample id, view). The n-th draw of that stream is a pure
// function of the key and n, so results do not depend on thread count or scheduling.
#pragma once

#include <array>
#include <cstdint>
#include <string_view>

namespace pipeline {

uint64_t hash64(std::string_view s);  // FNV-1a, stable across platforms and runs

class Rng {
 public:
  Rng(uint64_t seed, uint64_t stream, uint64_t epoch, uint64_t sample, uint64_t view);
  // Convenience for stages: stream = hash64(node name).
  static Rng for_sample(uint64_t seed, std::string_view node, int epoch, int64_t sample_id,
                        int view);

  uint32_t next_u32();
  double uniform();                       // [0, 1), 53 bits
  double uniform(double lo, double hi);   // [lo, hi)
  bool bernoulli(double p);
  int64_t below(int64_t n);               // [0, n)

 private:
  void refill();
  std::array<uint32_t, 2> key_;
  std::array<uint32_t, 4> ctr_;
  std::array<uint32_t, 4> out_{};
  int used_ = 4;
};

}  // namespace pipeline
