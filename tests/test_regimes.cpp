// The two regime graphs end to end on a small slice of Fashion-MNIST with a random-init
// base: the cache cut, fingerprints that miss on change, thread-count determinism, and the
// run directory. Opt-in (label regimes-full): both at their defaults against the README.
#include <catch2/catch.hpp>

#include <cstdlib>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>

#include <unistd.h>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "runner.h"
#include "spec.h"

using namespace pipeline;
namespace fs = std::filesystem;

namespace {

struct TempDir {
  fs::path path;
  explicit TempDir(const std::string& name) : path(fs::temp_directory_path() / fmt::format("pipe-{}-{}", name, ::getpid())) {
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() { fs::remove_all(path); }
};

const std::vector<std::string> kSmall = {"data.per_class=[60, 30, 30]", "nodes.features.weights=\"\"",
                                         "train.epochs=2"};

RunResult run(const std::string& graph, std::vector<std::string> sets, int threads, const std::string& out = "") {
  sets.insert(sets.begin(), kSmall.begin(), kSmall.end());
  Diagnostics diag(graph);
  GraphSpec g = load_graph(std::string(PIPE_SOURCE_DIR) + "/graphs/" + graph, sets, Registry::global(), diag);
  if (!diag.ok()) FAIL(diag.str());
  RunConfig cfg;
  cfg.threads = threads;
  cfg.quiet = true;
  cfg.write_outputs = !out.empty();
  cfg.out_dir = out;
  return run_graph(g, cfg);
}

int64_t items(const RunResult& r, const std::string& node) {
  for (const auto& n : r.profile)
    if (n.at("node") == node) return n.at("items").get<int64_t>();
  return 0;
}

std::string metrics(const RunResult& r) {
  std::string s;
  for (const EpochMetrics& e : r.epochs)
    s += fmt::format("{} {} {} {};", e.train.loss, e.train.accuracy, e.validation.loss, e.validation.accuracy);
  return s + fmt::format("{} {}", r.test.loss, r.test.accuracy);
}

}  // namespace

TEST_CASE("cached regime: the second run reads every split from the cache and runs no upstream node") {
  TempDir cache("cache-a");
  TempDir out("out-a");
  setenv("PIPE_CACHE_DIR", cache.path.c_str(), 1);
  const RunResult first = run("cached.yaml", {}, 2, (out.path / "run1").string());
  // Epoch 1 extracts train, validation and test once (120 + 60 + 60); epoch 2 reads them.
  CHECK(first.cache_misses == 240);
  CHECK(first.cache_hits == 180);
  CHECK(items(first, "decode") == 240);
  CHECK(items(first, "features") == 240);
  CHECK(first.extraction_seconds > 0);

  const RunResult second = run("cached.yaml", {}, 2);
  CHECK(second.cache_misses == 0);
  CHECK(second.cache_hits == 120 * 2 + 60 * 2 + 60);
  CHECK(items(second, "decode") == 0);
  CHECK(items(second, "features") == 0);
  CHECK(second.extraction_seconds == 0);
  // Same features, same seed: the head trains to the same numbers.
  CHECK(metrics(second) == metrics(first));

  SECTION("any upstream change misses") {
    const RunResult bigger = run("cached.yaml", {"nodes.decode.size=[48, 48]"}, 2);
    CHECK(bigger.cache_misses == 240);
    CHECK(items(bigger, "features") == 240);
    const RunResult reseeded = run("cached.yaml", {"nodes.features.init_seed=3"}, 2);
    CHECK(reseeded.cache_misses == 240);
    const RunResult other_split = run("cached.yaml", {"data.split_seed=2"}, 2);
    CHECK(other_split.cache_misses == 240);
    // The head is downstream of the cut: changing it still hits.
    const RunResult head = run("cached.yaml", {"nodes.head.hidden=32"}, 2);
    CHECK(head.cache_misses == 0);
  }
  SECTION("the run directory holds what users read") {
    const fs::path d = out.path / "run1";
    for (const char* f : {"graph.yaml", "metrics.jsonl", "summary.json", "profile.json", "head.pt"})
      CHECK(fs::exists(d / f));
    std::ifstream m(d / "metrics.jsonl");
    int lines = 0;
    for (std::string line; std::getline(m, line);) {
      const auto j = nlohmann::json::parse(line);
      for (const char* k : {"epoch", "train_loss", "train_acc", "val_loss", "val_acc", "seconds", "images_per_s"})
        CHECK(j.contains(k));
      ++lines;
    }
    CHECK(lines == 2);
    const auto s = nlohmann::json::parse(std::ifstream(d / "summary.json"));
    CHECK(s.at("graph") == "cached");
    CHECK(s.at("seed") == 1);
    CHECK(s.at("epochs") == 2);
    CHECK(s.at("cache").at("misses") == 240);
    CHECK(s.at("test_acc").get<double>() == Approx(first.test.accuracy));
    CHECK(s.at("best_val_acc").get<double>() >= s.at("val_acc").get<double>());
    CHECK(s.at("skipped").is_array());
    // KiB, of a process that has LibTorch loaded: tens of MiB at least (MiB or bytes would fail).
    CHECK(s.at("peak_rss_kib").get<long>() > 10 * 1024);
    CHECK(s.at("peak_rss_kib").get<long>() < 64L * 1024 * 1024);
    // The resolved graph validates again as it stands.
    Diagnostics diag("graph.yaml");
    load_graph((d / "graph.yaml").string(), {}, Registry::global(), diag);
    CHECK(diag.str() == "");
  }
}

TEST_CASE("augmented regime: identical metrics at 1 and 2 threads, evaluation features memoized") {
  TempDir cache("cache-b");
  setenv("PIPE_CACHE_DIR", cache.path.c_str(), 1);
  const RunResult one = run("augmented.yaml", {}, 1);
  const RunResult two = run("augmented.yaml", {}, 2);
  CHECK(metrics(one) == metrics(two));
  // Training images go through the base every epoch (2 x 120); validation and test only
  // once in the first run (60 + 60), never in the second.
  CHECK(items(one, "features") == 2 * 120 + 60 + 60);
  CHECK(items(two, "features") == 2 * 120);
  CHECK(items(one, "augment") == 2 * 120);
  // Augmentation changes what the head sees: a run without it trains differently.
  const RunResult plain = run("augmented.yaml", {"nodes.augment.rotation=0", "nodes.augment.width_shift=0",
                                                 "nodes.augment.height_shift=0", "nodes.augment.shear=0",
                                                 "nodes.augment.zoom=0", "nodes.augment.horizontal_flip=false"}, 2);
  CHECK(metrics(plain) != metrics(two));
}

namespace {

// The README's measured row for a graph: final and best validation accuracy, test accuracy
// (the first percentage of each column), in [0, 1].
struct Readme {
  double val = -1, best = -1, test = -1;
};

Readme readme_row(const std::string& graph) {
  std::ifstream in(std::string(PIPE_SOURCE_DIR) + "/README.md");
  const std::regex pct("([0-9]+\\.[0-9]+)%");
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("| `graphs/" + graph + "`", 0) != 0) continue;
    std::vector<double> cols;  // first percentage of each column that has one
    std::stringstream cells(line);
    for (std::string cell; std::getline(cells, cell, '|');) {
      std::smatch m;
      for (auto it = cell.cbegin(); std::regex_search(it, cell.cend(), m, pct); it = m[0].second)
        cols.push_back(std::stod(m[1]) / 100);
    }
    // "87.4% / 88.0% | 86.7% (86.9% ...)": final, best, test, and any note after it.
    if (cols.size() >= 3) return {cols[0], cols[1], cols[2]};
  }
  FAIL("README.md has no measured row for graphs/" << graph);
  return {};
}

}  // namespace

// Opt-in (ctest -L regimes-full; not in the default suite, see tests/CMakeLists.txt): both
// regimes at their defaults (2,000 training images, 30 epochs, the shipped base), on a cold
// cache, against the numbers the README states. Runs are deterministic on one machine; across
// machines BLAS kernels differ in the last bits, which moved the cached test accuracy by 0.2
// points between two machines (README), and the last epoch's validation accuracy moves most
// (regime B's final 84.5% on an earlier machine, 86.0% on the one the README now quotes).
// Tolerance: 2 points (20 of 1,000 images) on each accuracy, above that and well below what a
// broken regime loses (a head on random features is at ~50%; no augmentation, or augmented
// evaluation, moves regime B by several points).
TEST_CASE("both regimes at their defaults reproduce the README's accuracies", "[.][regimes-full]") {
  for (const std::string graph : {"cached.yaml", "augmented.yaml"}) {
    INFO(graph);
    TempDir cache("full-cache-" + graph);
    setenv("PIPE_CACHE_DIR", cache.path.c_str(), 1);
    Diagnostics diag(graph);
    const GraphSpec g = load_graph(std::string(PIPE_SOURCE_DIR) + "/graphs/" + graph, {}, Registry::global(), diag);
    REQUIRE(diag.str() == "");
    RunConfig cfg;
    cfg.threads = 2;
    cfg.quiet = true;
    cfg.write_outputs = false;
    const RunResult r = run_graph(g, cfg);
    REQUIRE(r.epochs.size() == 30);
    const Readme want = readme_row(graph);
    const double tol = 0.02 + 1e-9;
    WARN(graph << " measured: final val " << r.epochs.back().validation.accuracy << ", best val " << r.best_val_acc
               << ", test " << r.test.accuracy << " (README: " << want.val << ", " << want.best << ", " << want.test
               << ")");
    CHECK(std::abs(r.epochs.back().validation.accuracy - want.val) <= tol);
    CHECK(std::abs(r.best_val_acc - want.best) <= tol);
    CHECK(std::abs(r.test.accuracy - want.test) <= tol);
    CHECK(r.test.count == 1000);
  }
}
