// Replays the fuzzers' seed corpora and every committed finding (tests/fuzz/regressions/)
// through the same entry points as the libFuzzer binaries, here with the full registry and
// GCC; scripts/sanitize.sh asan runs this under ASan+UBSan too. A regression crashes or
// fails this test. Each input is held to what it is: a valid seed must decode or validate
// cleanly to recorded pixels or a recorded resolved graph, a malformed one or a finding must
// be refused with a reason; the graph seeds are copies of graphs/ and tests/data/bad_graphs/,
// and graphs/ and examples/ themselves validate with no diagnostic.
#include <catch2/catch.hpp>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <set>
#include <vector>

#include <fmt/format.h>

#include "../tests/fuzz/targets.h"
#include "stage_docs.h"
#include "pipe/rng.h"
#include "spec.h"
#include "stderr_capture.h"

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

std::string hex(uint64_t h) { return fmt::format("{:016x}", h); }

std::vector<fs::path> files_in(const fs::path& dir, const std::string& ext) {
  std::vector<fs::path> out;
  for (const auto& e : fs::recursive_directory_iterator(dir))
    if (e.is_regular_file() && e.path().extension() == ext && e.path().string().find("/build") == std::string::npos)
      out.push_back(e.path());
  std::sort(out.begin(), out.end());
  return out;
}

// hash64 of YAML::Dump of each shipped graph's resolved document (every default filled in),
// parsed at its own path, the tree's location written ROOT. A change here is a change to what a shipped graph means: check the
// printed document, then update the value.
const std::map<std::string, std::string> kResolvedGraph = {
    {"augmented", "748708ecf189ce06"},
    {"cached", "16c340ba916adf94"},
    {"heads", "e06109f0c32fa17a"},
    {"multiscale", "4e3c42696f138093"},
    {"pretrain", "60a41872a3cfce21"},
    {"preview", "b2c56eb475fc3a85"},
    {"views", "4aea3b16826f37f3"},
};

// hash64 of the 32x32 RGB pixels each decode seed decodes to (max_pixels 4 Mpx, defaults
// otherwise). A change is a change to what users' images become: look before updating.
const std::map<std::string, std::string> kDecodedPixels = {
    {"exif-orientation-6.jpg", "969af3ca06f424a0"},
    {"gray.jpg", "cc40eada0a5135ed"},
    {"gray.png", "e337238c76591ce8"},
    {"lossless.webp", "2d05d02fe904faa0"},
    {"progressive.jpg", "dfdb5007b8212f6e"},
    {"rgb.bmp", "2d05d02fe904faa0"},
    {"rgb.jpg", "98845edc3b8ce16f"},
    {"rgb.png", "2d05d02fe904faa0"},
    {"rgb.webp", "3cc4f19fb4914a3e"},
    {"rgba.png", "79e9be9dbe3c7c21"},
    {"sixteen-bit.png", "45a9bc59e1c49c53"},
};

}  // namespace

TEST_CASE("graph seeds: shipped graphs validate cleanly and resolve as recorded, malformed ones are refused") {
  const fs::path root(PIPE_SOURCE_DIR);
  const fs::path bad_dir = root / "tests" / "data" / "bad_graphs";
  std::set<std::string> seeded;
  int valid = 0, malformed = 0;
  for (const fs::path& f : inputs("graph")) {
    const std::string name = f.filename().string();
    INFO(f.string());
    const std::vector<uint8_t> b = read(f);
    if (f.parent_path().parent_path().filename() == "regressions") {  // findings: refused, never thrown out
      fuzz::GraphOutcome o;
      CHECK_NOTHROW(o = fuzz::graph_one(Registry::global(), b.data(), b.size()));
      CHECK_FALSE(o.ok);
    } else if (name.rfind("graphs-", 0) == 0) {
      // A copy of graphs/<name>: the corpus cannot drift from the graphs users run.
      const fs::path shipped = root / "graphs" / name.substr(7);
      REQUIRE(fs::exists(shipped));
      CHECK(read(shipped) == b);
      fuzz::GraphOutcome o;
      CHECK_NOTHROW(o = fuzz::graph_one(Registry::global(), b.data(), b.size(), shipped.string()));
      CHECK(o.diagnostics == "");
      REQUIRE(o.ok);
      const std::string stem = shipped.stem().string();
      // Resolved paths are absolute: the tree's own location reads ROOT, wherever it is.
      std::string resolved = o.resolved;
      for (size_t at; (at = resolved.find(root.string())) != std::string::npos;)
        resolved.replace(at, root.string().size(), "ROOT");
      INFO("resolved:\n" << resolved);
      CHECK(hex(hash64(resolved)) == (kResolvedGraph.count(stem) ? kResolvedGraph.at(stem) : "(not recorded)"));
      seeded.insert(stem);
      ++valid;
    } else {
      // A copy of tests/data/bad_graphs/<name>, whose exact diagnostics test_bad_graphs checks.
      REQUIRE(fs::exists(bad_dir / name));
      CHECK(read(bad_dir / name) == b);
      fuzz::GraphOutcome o;
      CHECK_NOTHROW(o = fuzz::graph_one(Registry::global(), b.data(), b.size()));
      CHECK_FALSE(o.ok);
      CHECK(o.diagnostics != "");
      ++malformed;
    }
  }
  // Every shipped graph is a seed, and every malformed corpus graph too.
  std::set<std::string> shipped, bad;
  for (const fs::path& g : files_in(root / "graphs", ".yaml")) shipped.insert(g.stem().string());
  for (const fs::path& g : files_in(bad_dir, ".yaml")) bad.insert(g.filename().string());
  CHECK(seeded == shipped);
  CHECK(malformed == static_cast<int>(bad.size()));
  CHECK(valid >= 7);
}

TEST_CASE("every graph under graphs/ and examples/ validates through the fuzz target with no diagnostic") {
  const fs::path root(PIPE_SOURCE_DIR);
  int n = 0;
  for (const char* dir : {"graphs", "examples"})
    for (const fs::path& g : files_in(root / dir, ".yaml")) {
      INFO(g.string());
      // A graph that loads a plugin (examples/custom_stage) validates where the plugin is
      // built: sdk_install_build_run_plugin validates and runs it.
      if (YAML::LoadFile(g.string())["plugins"]) continue;
      const std::vector<uint8_t> b = read(g);
      fuzz::GraphOutcome o;
      CHECK_NOTHROW(o = fuzz::graph_one(Registry::global(), b.data(), b.size(), g.string()));
      CHECK(o.diagnostics == "");
      CHECK(o.ok);
      ++n;
    }
  CHECK(n >= 9);  // graphs/ (7) and examples/cats_vs_dogs (2)
}

TEST_CASE("decode seeds decode to their recorded pixels, regression inputs are refused") {
  std::set<std::string> seen;
  for (const fs::path& f : inputs("decode")) {
    const std::string name = f.filename().string();
    INFO(f.string());
    const std::vector<uint8_t> b = read(f);
    fuzz::DecodeOutcome o;
    REQUIRE_NOTHROW(o = fuzz::decode_one(Registry::global(), b.data(), b.size()));
    if (f.parent_path().parent_path().filename() == "regressions") {
      CHECK(o.refusal != "");
      CHECK(o.pixels.empty());
      continue;
    }
    // Every corpus seed is a valid image (tests/fuzz/make_decode_seeds.cpp): a refusal would
    // leave the fuzzer outside the decoders.
    CHECK(o.refusal == "");
    REQUIRE(o.pixels.size() == 32u * 32u * 3u);
    const std::string h = hex(hash64(std::string_view(reinterpret_cast<const char*>(o.pixels.data()), o.pixels.size())));
    CHECK(h == (kDecodedPixels.count(name) ? kDecodedPixels.at(name) : "(not recorded)"));
    seen.insert(name);
  }
  CHECK(seen.size() == kDecodedPixels.size());
}

TEST_CASE("cache seeds open as entries, every other cache input is refused") {
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

TEST_CASE("torch_pickle seeds valid-* read as state dicts, every other input is refused") {
  // valid-*: files Python's torch.save wrote (tests/data/make_state_dicts.py), legacy and a zip
  // archive's data.pkl; a seed the reader refused would leave the fuzzer outside it.
  const auto files = inputs("torch_pickle");
  REQUIRE(files.size() >= 5);
  int valid = 0;
  for (const fs::path& f : files) {
    INFO(f.string());
    const std::vector<uint8_t> b = read(f);
    bool read_ok = false;
    CHECK_NOTHROW(read_ok = fuzz::torch_pickle_one(b.data(), b.size()));
    const bool should_read = f.filename().string().rfind("valid-", 0) == 0;
    CHECK(read_ok == should_read);
    valid += should_read;
  }
  CHECK(valid == 3);
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

TEST_CASE("a JPEG whose frame hides behind stray bytes or stuffing is refused by the pixel limit") {
  // libjpeg skips the stray bytes and would allocate the 14368x22096 frame; the header walk
  // must see it too and refuse before decoding (found by fuzz_decode as an out-of-memory).
  // Refused from the header, nothing is decoded: libjpeg, which warns about the bytes it
  // skips ("Corrupt JPEG data: ..."), prints nothing. (Decoded, the size check after decoding
  // would refuse it too, with the same message, after allocating the frame.)
  const auto refused_unread = [](const std::string& name, const std::string& message) {
    const std::string printed =
        pipeline::test::capture_stderr([&] { CHECK_THROWS_WITH(decode_regression(name), message); });
    CHECK(printed == "");
  };
  refused_unread("jpeg-stray-bytes-hide-huge-frame.jpg", "image has 317475328 pixels, more than max_pixels = 4194304");
  // Behind FF 00, which libjpeg discards as stuffing while it looks for a marker: the walk read
  // a segment length after it and jumped past the 61192x15664 frame (fuzz_decode again).
  refused_unread("jpeg-stuffed-zero-hides-huge-frame.jpg", "image has 958511488 pixels, more than max_pixels = 4194304");
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
