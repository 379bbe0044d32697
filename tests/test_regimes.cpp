// The two regime graphs end to end on a small slice of Fashion-MNIST with a random-init
// base: the cache cut, fingerprints that miss on change, thread-count determinism, and the
// run directory.
#include <catch2/catch.hpp>

#include <cstdlib>
#include <filesystem>
#include <fstream>

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
