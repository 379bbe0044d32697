// The fuzz entry points, shared by the libFuzzer binaries (tests/fuzz/CMakeLists.txt,
// clang, no LibTorch) and by test_fuzz_regressions (the normal GCC build, also run under
// ASan+UBSan), so that every committed crash input is replayed by the same code.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "pipe/registry.h"

namespace pipeline::fuzz {

// YAML text -> parse_graph() against `registry`, all the way through validation. A first
// line "# set: KEY=VALUE" is passed as a --set override (as in tests/data/bad_graphs).
// Diagnostics are the expected outcome; anything else (a crash, an exception escaping
// parse_graph, UB, a leak) is a finding. `file` is the name the graph is parsed as (its
// directory is where relative paths resolve). The outcome is for test_fuzz_regressions,
// which holds each seed to what it is: a valid graph validates with no diagnostic at all
// and resolves to the same document; a malformed one is refused.
struct GraphOutcome {
  std::string diagnostics;  // every diagnostic, rendered; "" when there were none
  bool ok = false;          // no error (warnings allowed)
  std::string resolved;     // YAML::Dump of the resolved document when ok
};
GraphOutcome graph_one(const Registry& registry, const uint8_t* data, size_t size,
                       const std::string& file = "fuzz.yaml");

// Bytes -> the decode stage's process() with default params except max_pixels = kMaxPixels.
// SampleError is the expected failure; on success the image must be size x size RGB.
// The pixel limit is what keeps a small file declaring huge dimensions from allocating
// gigabytes, so libFuzzer's -rss_limit_mb/-malloc_limit_mb catch a bypass of it.
// The outcome (for test_fuzz_regressions): the SampleError's message, or the decoded pixels
// (32 x 32 x 3, row-major RGB) when there was none.
constexpr int64_t kMaxPixels = 1 << 22;
struct DecodeOutcome {
  std::string refusal;
  std::vector<uint8_t> pixels;
};
DecodeOutcome decode_one(const Registry& registry, const uint8_t* data, size_t size);

// A hostile cache directory -> FeatureCache::open() -> everything the entry claims to hold.
// The input is a manifest followed by a .npy file, split at the first "\x93NUMPY" (the npy
// magic, which starts the .npy part; without one there is no .npy file). Both are written
// as <temp cache dir>/<kCacheFingerprint>/<kCacheSplit>.{json,npy}. In the manifest, every
// kCacheChecksumSlot is first replaced by the checksum of the .npy bytes and every
// kCacheBytesSlot by their count, so that mutated files can pass those checks and reach the
// shape and row handling behind them.
// open() must either return nullptr after exactly one warning line naming a file of the
// entry (the files then removed), or return an entry and print nothing; then every label,
// skip and row it claims is read, and each row must be the bytes at its place in the file.
// Documented refusals (std::out_of_range, std::logic_error for a skipped id) are probed;
// anything else (a crash, an escaping exception, UB, a leak, a huge allocation) is a
// finding. Returns whether open() returned an entry.
constexpr const char* kCacheFingerprint = "fuzz0123456789abcdef0123456789ab";
constexpr const char* kCacheSplit = "train";
constexpr const char* kCacheChecksumSlot = "@checksum@";
constexpr const char* kCacheBytesSlot = "@bytes@";
bool cache_one(const uint8_t* data, size_t size);

// Bytes -> the state-dict reader (stages/torch_pickle.h): parse_legacy() when they start
// as a legacy torch.save file, else parse_state_dict() as a zip archive's data.pkl. A
// std::runtime_error is the expected refusal; on success every tensor's view must lie in its
// storage and every legacy storage in the input (else abort()). No Python global is ever
// called: the reader has no means to. Returns whether the bytes were read as a state dict.
bool torch_pickle_one(const uint8_t* data, size_t size);

// The registry the fuzz binaries validate against: every built-in stage's real schema;
// the LibTorch stages' factories (never called by validation) throw. Defined in
// fuzz_stages.cpp.
void register_fuzz_stages(Registry& r);

}  // namespace pipeline::fuzz
