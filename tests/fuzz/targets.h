// The two fuzz entry points, shared by the libFuzzer binaries (tests/fuzz/CMakeLists.txt,
// clang, no LibTorch) and by test_fuzz_regressions (the normal GCC build, also run under
// ASan+UBSan), so that every committed crash input is replayed by the same code.
#pragma once

#include <cstddef>
#include <cstdint>

#include "pipe/registry.h"

namespace pipeline::fuzz {

// YAML text -> parse_graph() against `registry`, all the way through validation. A first
// line "# set: KEY=VALUE" is passed as a --set override (as in tests/data/bad_graphs).
// Diagnostics are the expected outcome; anything else (a crash, an exception escaping
// parse_graph, UB, a leak) is a finding.
void graph_one(const Registry& registry, const uint8_t* data, size_t size);

// Bytes -> the decode stage's process() with default params except max_pixels = kMaxPixels.
// SampleError is the expected failure; on success the image must be size x size RGB.
// The pixel limit is what keeps a small file declaring huge dimensions from allocating
// gigabytes, so libFuzzer's -rss_limit_mb/-malloc_limit_mb catch a bypass of it.
constexpr int64_t kMaxPixels = 1 << 22;
void decode_one(const Registry& registry, const uint8_t* data, size_t size);

// The registry the fuzz binaries validate against: every built-in stage's real schema;
// the LibTorch stages' factories (never called by validation) throw. Defined in
// fuzz_stages.cpp.
void register_fuzz_stages(Registry& r);

}  // namespace pipeline::fuzz
