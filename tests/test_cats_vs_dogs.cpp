// examples/cats_vs_dogs: the book's VGG16 cats-vs-dogs graphs, checked as committed (the
// book's settings) and run end to end, in-process, on a small image tree generated here
// (JPEG and PNG of assorted sizes, "cats" bright / "dogs" dark) with a random-init
// builtin:vgg16 base at 32 px instead of the exported TorchScript model at 150 px.
#include <catch2/catch.hpp>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>

#include <unistd.h>

#include <fmt/format.h>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#include <nlohmann/json.hpp>

#include "cache_store.h"
#include "runner.h"
#include "spec.h"

using namespace pipeline;
namespace fs = std::filesystem;

namespace {

const std::string kExample = std::string(PIPE_SOURCE_DIR) + "/examples/cats_vs_dogs/";

struct TempDir {
  fs::path path;
  explicit TempDir(const std::string& name)
      : path(fs::temp_directory_path() / fmt::format("pipe-cvd-{}-{}", name, ::getpid())) {
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() { fs::remove_all(path); }
};

constexpr int kTrain = 6, kValidation = 4, kTest = 4;  // per class

// ROOT/{train,validation,test}/{cats,dogs}/*: a bright blob on a mid-gray noisy background
// for cats, a dark one for dogs; alternating JPEG / PNG, sizes cycling through landscape,
// portrait and square. Plus files the folder source must skip.
void make_tree(const fs::path& root) {
  const std::pair<const char*, int> splits[] = {{"train", kTrain}, {"validation", kValidation}, {"test", kTest}};
  const cv::Size sizes[] = {{64, 48}, {48, 64}, {50, 50}, {97, 61}, {40, 72}};
  cv::RNG rng(7);
  int n = 0;
  for (const auto& [split, count] : splits)
    for (const char* cls : {"cats", "dogs"}) {
      const fs::path dir = root / split / cls;
      fs::create_directories(dir);
      const bool cat = std::string(cls) == "cats";
      for (int i = 0; i < count; ++i, ++n) {
        const cv::Size sz = sizes[n % 5];
        cv::Mat img(sz, CV_8UC3);
        rng.fill(img, cv::RNG::UNIFORM, cv::Scalar::all(90), cv::Scalar::all(160));
        const cv::Point centre(sz.width / 3 + i % 3 * sz.width / 6, sz.height / 2);
        cv::circle(img, centre, std::min(sz.width, sz.height) / 3,
                   cat ? cv::Scalar(250, 240, 230) : cv::Scalar(15, 20, 25), cv::FILLED);
        const fs::path file = dir / fmt::format("{}.{}.{}", cls, i, n % 2 ? "png" : "jpg");
        REQUIRE(cv::imwrite(file.string(), img));
      }
      std::ofstream(dir / ".DS_Store") << "not an image";
      std::ofstream(dir / "labels.txt") << "not an image either";
    }
}

RunResult run(const std::string& graph, const fs::path& data, std::vector<std::string> sets = {}) {
  sets.insert(sets.begin(), {fmt::format("data.path=\"{}\"", data.string()),
                             "nodes.features.model=\"builtin:vgg16\"", "nodes.decode.size=[32, 32]",
                             "train.epochs=2"});
  Diagnostics diag(graph);
  GraphSpec g = load_graph(kExample + graph, sets, Registry::global(), diag);
  if (!diag.ok()) FAIL(diag.str());
  RunConfig cfg;
  cfg.threads = 2;
  cfg.quiet = true;
  cfg.write_outputs = false;
  return run_graph(g, cfg);
}

int64_t items(const RunResult& r, const std::string& node) {
  for (const auto& n : r.profile)
    if (n.at("node") == node) return n.at("items").get<int64_t>();
  return 0;  // a node that did not run is absent from the profile
}

std::string metrics(const RunResult& r) {
  std::string s;
  for (const EpochMetrics& e : r.epochs)
    s += fmt::format("{} {} {} {};", e.train.loss, e.train.accuracy, e.validation.loss, e.validation.accuracy);
  return s + fmt::format("{} {}", r.test.loss, r.test.accuracy);
}

// The cache's entries by split: count, and every label's frequency checked by the caller.
std::map<std::string, CacheEntryInfo> entries(const fs::path& cache_dir) {
  std::map<std::string, CacheEntryInfo> out;
  for (const CacheEntryInfo& e : FeatureCache(cache_dir.string()).list()) {
    CHECK(out.count(e.split) == 0);  // one fingerprint per split in a fresh cache dir
    out[e.split] = e;
  }
  return out;
}

void check_counts(const RunResult& r) {
  REQUIRE(r.epochs.size() == 2);
  CHECK_FALSE(r.interrupted);
  CHECK(r.skipped.empty());
  for (const EpochMetrics& e : r.epochs) {
    CHECK(e.train.count == 2 * kTrain);
    CHECK(e.validation.count == 2 * kValidation);
  }
  CHECK(r.test.count == 2 * kTest);
  const auto& s = r.summary;
  CHECK(s.at("status") == "completed");
  CHECK(s.at("test_count") == 2 * kTest);
  CHECK(s.at("epochs_completed") == 2);
}

}  // namespace

TEST_CASE("cats_vs_dogs graphs hold the book's settings as committed") {
  for (const char* graph : {"cached.yaml", "augmented.yaml"}) {
    INFO(graph);
    Diagnostics diag(graph);
    const GraphSpec g = load_graph(kExample + graph, {}, Registry::global(), diag);
    REQUIRE(diag.str() == "");
    CHECK(g.source == "folder");
    CHECK(g.source_params.string("path") == kExample + "data");  // path params resolve at load
    CHECK(g.train.epochs == 30);
    CHECK(g.train.batch == 20);
    const NodeSpec* decode = g.find("decode");
    const NodeSpec* features = g.find("features");
    const NodeSpec* head = g.find("head");
    REQUIRE(decode);
    REQUIRE(features);
    REQUIRE(head);
    CHECK(decode->params.integers("size") == std::vector<int64_t>{150, 150});
    CHECK(features->stage == "convbase");
    CHECK(features->params.string("model") == kExample + "vgg16_features.pt");
    CHECK(features->params.string("weights") == "");
    CHECK(features->params.number("rescale") == Approx(1.0 / 255.0));
    CHECK(features->params.numbers("mean") == std::vector<double>{0.485, 0.456, 0.406});
    CHECK(features->params.numbers("std") == std::vector<double>{0.229, 0.224, 0.225});
    CHECK(head->params.integer("hidden") == 256);
    CHECK(head->params.string("optimizer") == "rmsprop");
    CHECK(head->params.number("lr") == Approx(2e-5));
    const bool augmented = std::string(graph) == "augmented.yaml";
    // Listing 5.17 has Dropout(0.5); listing 5.20 (with augmentation) has none.
    CHECK(head->params.number("dropout") == (augmented ? 0.0 : 0.5));
    CHECK((g.find("memo") != nullptr) == !augmented);
    CHECK((g.find("augment") != nullptr) == augmented);
    if (augmented) {
      const Params& a = g.find("augment")->params;
      CHECK(a.number("rotation") == 40);
      CHECK(a.number("width_shift") == Approx(0.2));
      CHECK(a.number("height_shift") == Approx(0.2));
      CHECK(a.number("shear") == Approx(0.2));
      CHECK(a.number("zoom") == Approx(0.2));
      CHECK(a.boolean("horizontal_flip"));
      CHECK(a.string("fill") == "nearest");
    }
  }
}

TEST_CASE("cats_vs_dogs cached graph on a generated tree: one extraction, then all hits") {
  TempDir data("data-a");
  TempDir cache("cache-a");
  make_tree(data.path);
  setenv("PIPE_CACHE_DIR", cache.path.c_str(), 1);

  const RunResult first = run("cached.yaml", data.path);
  check_counts(first);
  // Train, validation and test are each extracted once (12 + 8 + 8); epoch 2 reads train
  // and validation back (12 + 8).
  CHECK(first.cache_misses == 2 * (kTrain + kValidation + kTest));
  CHECK(first.cache_hits == 2 * (kTrain + kValidation));
  CHECK(items(first, "decode") == 2 * (kTrain + kValidation + kTest));
  CHECK(items(first, "features") == 2 * (kTrain + kValidation + kTest));
  CHECK(items(first, "head") > 0);

  // One entry per split holding VGG16's 512 x 1 x 1 features of a 32 px image.
  const auto e = entries(cache.path);
  REQUIRE(e.size() == 3);
  CHECK(e.at("train").count == 2 * kTrain);
  CHECK(e.at("validation").count == 2 * kValidation);
  CHECK(e.at("test").count == 2 * kTest);
  for (const auto& [split, info] : e) {
    INFO(split);
    CHECK(info.feature_shape == std::vector<int64_t>{512, 1, 1});
    CHECK(info.skipped == 0);
    // Both classes present, half each (labels 0 = cats, 1 = dogs, sorted by name).
    const auto entry = FeatureCache(cache.path.string()).open(info.fingerprint, split);
    REQUIRE(entry);
    int dogs = 0;
    for (int64_t id = 0; id < entry->count(); ++id) dogs += entry->label(id);
    CHECK(dogs * 2 == entry->count());
  }

  // A second run extracts nothing: decode and the base do not run, the head trains the same.
  const RunResult second = run("cached.yaml", data.path);
  check_counts(second);
  CHECK(second.cache_misses == 0);
  CHECK(second.cache_hits == 2 * (2 * kTrain + 2 * kValidation + kTest));
  CHECK(items(second, "decode") == 0);
  CHECK(items(second, "features") == 0);
  CHECK(metrics(second) == metrics(first));

  // The tree is separable (bright vs dark blob): the book's head on the cached features, with
  // 12 training images given 60 epochs at lr 1e-3 and no dropout (one step per epoch; training
  // and validation accuracy reach 1 by epoch ~25), classifies every held-out test image. A
  // broken chain (labels, features, head, evaluation) lands near chance, 4 of 8.
  const RunResult trained = run("cached.yaml", data.path, {"train.epochs=60", "nodes.head.lr=1.0e-3", "nodes.head.dropout=0"});
  CHECK(trained.cache_misses == 0);
  INFO("validation accuracy " << trained.epochs.back().validation.accuracy << ", test " << trained.test.accuracy);
  CHECK(trained.test.count == 2 * kTest);
  CHECK(trained.test.accuracy == 1.0);
  CHECK(trained.best_val_acc == 1.0);
}

TEST_CASE("cats_vs_dogs augmented graph on a generated tree: augment runs on train only") {
  TempDir data("data-b");
  TempDir cache("cache-b");
  make_tree(data.path);
  setenv("PIPE_CACHE_DIR", cache.path.c_str(), 1);

  const RunResult r = run("augmented.yaml", data.path);
  check_counts(r);
  // Every epoch augments and extracts the 12 training images; validation and test are
  // decoded and extracted once (memoized), never augmented.
  CHECK(items(r, "augment") == 2 * 2 * kTrain);
  CHECK(items(r, "decode") == 2 * 2 * kTrain + 2 * kValidation + 2 * kTest);
  CHECK(items(r, "features") == 2 * 2 * kTrain + 2 * kValidation + 2 * kTest);
  // Only the evaluation splits are memoized.
  const auto e = entries(cache.path);
  CHECK(e.count("train") == 0);
  REQUIRE(e.count("validation") == 1);
  REQUIRE(e.count("test") == 1);
  CHECK(e.at("validation").count == 2 * kValidation);
  CHECK(e.at("test").count == 2 * kTest);
  CHECK(e.at("validation").feature_shape == std::vector<int64_t>{512, 1, 1});

  // The augmentation is real: without it the head sees other features and trains differently.
  const RunResult plain = run("augmented.yaml", data.path,
                              {"nodes.augment.rotation=0", "nodes.augment.width_shift=0",
                               "nodes.augment.height_shift=0", "nodes.augment.shear=0",
                               "nodes.augment.zoom=0", "nodes.augment.horizontal_flip=false"});
  check_counts(plain);
  CHECK(items(plain, "augment") == 2 * 2 * kTrain);
  CHECK(items(plain, "features") == 2 * 2 * kTrain);  // evaluation features from the cache
  CHECK(metrics(plain) != metrics(r));
}
