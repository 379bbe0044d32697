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

TEST_CASE("fuzz corpora and regression inputs: the graph loader and decode stay sound") {
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
}

TEST_CASE("the fuzz build's registry has every built-in stage with its real schema") {
  // fuzz_graph validates against register_fuzz_stages (no LibTorch factories); the rendered
  // reference covers names, kinds, payloads, every parameter with type, range and default.
  Registry fuzz_registry;
  fuzz::register_fuzz_stages(fuzz_registry);
  CHECK(fuzz_registry.names() == Registry::global().names());
  CHECK(stages_markdown(fuzz_registry) == stages_markdown(Registry::global()));
}
