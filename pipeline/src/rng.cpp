#include "pipe/rng.h"

#include <limits>

namespace pipeline {

uint64_t hash64(std::string_view s) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : s) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return h;
}

namespace {
// splitmix64 finaliser: spreads structured keys (small integers) over all bits.
uint64_t mix(uint64_t z) {
  z += 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}
}  // namespace

Rng::Rng(uint64_t seed, uint64_t stream, uint64_t epoch, uint64_t sample, uint64_t view) {
  const uint64_t k = mix(seed ^ mix(stream));
  key_ = {static_cast<uint32_t>(k), static_cast<uint32_t>(k >> 32)};
  // Counter words 0-1 index draws within the stream; words 2-3 carry the sample key.
  const uint64_t s = mix(mix(epoch) ^ mix(sample + 0x1234567ull) ^ mix(view + 0x7654321ull * 3));
  ctr_ = {0u, 0u, static_cast<uint32_t>(s), static_cast<uint32_t>(s >> 32)};
}

Rng Rng::for_sample(uint64_t seed, std::string_view node, int epoch, int64_t sample_id,
                    int view) {
  return Rng(seed, hash64(node), static_cast<uint64_t>(epoch), static_cast<uint64_t>(sample_id),
             static_cast<uint64_t>(view));
}

void Rng::refill() {
  constexpr uint32_t M0 = 0xD2511F53u, M1 = 0xCD9E8D57u, W0 = 0x9E3779B9u, W1 = 0xBB67AE85u;
  std::array<uint32_t, 4> c = ctr_;
  std::array<uint32_t, 2> k = key_;
  for (int round = 0; round < 10; ++round) {
    const uint64_t p0 = static_cast<uint64_t>(M0) * c[0];
    const uint64_t p1 = static_cast<uint64_t>(M1) * c[2];
    c = {static_cast<uint32_t>(p1 >> 32) ^ c[1] ^ k[0], static_cast<uint32_t>(p1),
         static_cast<uint32_t>(p0 >> 32) ^ c[3] ^ k[1], static_cast<uint32_t>(p0)};
    k[0] += W0;
    k[1] += W1;
  }
  out_ = c;
  used_ = 0;
  if (++ctr_[0] == 0) ++ctr_[1];
}

uint32_t Rng::next_u32() {
  if (used_ == 4) refill();
  return out_[used_++];
}

double Rng::uniform() {
  const uint64_t hi = next_u32() >> 5, lo = next_u32() >> 6;  // 27 + 26 bits
  return (static_cast<double>(hi) * 67108864.0 + static_cast<double>(lo)) / 9007199254740992.0;
}

double Rng::uniform(double lo, double hi) { return lo + (hi - lo) * uniform(); }

bool Rng::bernoulli(double p) { return uniform() < p; }

int64_t Rng::below(int64_t n) {
  if (n <= 1) return 0;
  return static_cast<int64_t>(uniform() * static_cast<double>(n)) % n;
}

}  // namespace pipeline
