// Replays the fuzzers' seed corpora and every committed finding (tests/fuzz/regressions/)
// through the same entry points as the libFuzzer binaries, here with the full registry and
// GCC; scripts/sanitize.sh asan runs this under ASan+UBSan too. A regression crashes or
// fails this test.
#include <catch2/catch.hpp>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <vector>

#include "../tests/fuzz/targets.h"
#include "stage_docs.h"
#include "pipe/rng.h"
#include "spec.h"

namespace fs = std::filesystem;
using namespace pipeline;

namespace {

std::vector<fs::path> inputs(const std::string& kind) {
  std::vector<fs::path> out;
  for (const char* set : {"corpus", "regressions"}) {
    const fs::path dir = fs::path(PIPE_SOURCE_DIR) / "tests" / "fuzz" / set / kind;
    for (const auto& e : fs::directory_iterator(dir))
      if (e.is_regular_file()) out.push_back(e.path());
  }
  std::sort(out.begin(), out.end());
  return out;
}

std::vector<uint8_t> read(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

}  // namespace

TEST_CASE("fuzz corpora and regression inputs: the graph loader, decode and the cache reader stay sound") {
  SECTION("graph") {
    const auto files = inputs("graph");
    REQUIRE(files.size() >= 20);
    for (const fs::path& f : files) {
      INFO(f.string());
      const std::vector<uint8_t> b = read(f);
      CHECK_NOTHROW(fuzz::graph_one(Registry::global(), b.data(), b.size()));
    }
  }
  SECTION("decode") {
    const auto files = inputs("decode");
    REQUIRE(files.size() >= 10);
    for (const fs::path& f : files) {
      INFO(f.string());
      const std::vector<uint8_t> b = read(f);
      CHECK_NOTHROW(fuzz::decode_one(Registry::global(), b.data(), b.size()));
    }
  }
  SECTION("cache") {
    // The valid-* seeds (written by the real cache writer, tests/fuzz/make_cache_seeds.cpp)
    // must open as entries: a seed the reader refuses (a new manifest format) would leave the
    // fuzzer outside the reader. Every other seed and regression input must be refused.
    const auto files = inputs("cache");
    REQUIRE(files.size() >= 10);
    int valid = 0;
    for (const fs::path& f : files) {
      INFO(f.string());
      const std::vector<uint8_t> b = read(f);
      bool opened = false;
      CHECK_NOTHROW(opened = fuzz::cache_one(b.data(), b.size()));
      const bool should_open = f.filename().string().rfind("valid-", 0) == 0;
      CHECK(opened == should_open);
      valid += should_open;
    }
    CHECK(valid >= 5);
  }
}

TEST_CASE("the fuzz build's registry has every built-in stage with its real schema") {
  // fuzz_graph validates against register_fuzz_stages (no LibTorch factories); the rendered
  // reference covers names, kinds, payloads, every parameter with type, range and default.
  Registry fuzz_registry;
  fuzz::register_fuzz_stages(fuzz_registry);
  CHECK(fuzz_registry.names() == Registry::global().names());
  CHECK(stages_markdown(fuzz_registry) == stages_markdown(Registry::global()));
}

namespace {

// The decode stage with max_pixels = 4 Mpx, fed one committed regression input.
void decode_regression(const std::string& name) {
  const StageEntry* e = Registry::global().find("decode");
  REQUIRE(e != nullptr);
  Diagnostics diag("test");
  const Params params = parse_params(e->schema, YAML::Load("{max_pixels: 4194304}"), "nodes.decode", diag);
  REQUIRE(diag.ok());
  StageContext ctx;
  ctx.node = "decode";
  std::unique_ptr<Stage> stage = e->make(params, ctx);
  Sample s;
  s.bytes = std::make_shared<const std::vector<uint8_t>>(
      read(fs::path(PIPE_SOURCE_DIR) / "tests" / "fuzz" / "regressions" / "decode" / name));
  Rng rng(0, 0, 0, 0, 0);
  dynamic_cast<MapStage&>(*stage).process(s, rng);
}

}  // namespace

TEST_CASE("a JPEG whose frame hides behind stray bytes is refused by the pixel limit") {
  // libjpeg skips the stray bytes and would allocate the 14368x22096 frame; the header walk
  // must see it too and refuse before decoding (found by fuzz_decode as an out-of-memory).
  CHECK_THROWS_WITH(decode_regression("jpeg-stray-bytes-hide-huge-frame.jpg"),
                    "image has 317475328 pixels, more than max_pixels = 4194304");
}

TEST_CASE("bytes that no allowed codec claims are refused before imdecode sees them") {
  // Both carry "DICM" at offset 128, which OpenCV's GDCM codec claims and then asserts on
  // (process abort). The first looks like no image; the second starts RIFF....WEBP but its
  // first chunk is not one libwebp accepts, so OpenCV's WebP codec passes it on to GDCM.
  for (const char* name : {"gdcm-assert-dicm-at-128.bin", "gdcm-assert-webp-header-libwebp-rejects.bin"}) {
    INFO(name);
    CHECK_THROWS_WITH(decode_regression(name), "cannot decode image (not a supported format or truncated)");
  }
}
