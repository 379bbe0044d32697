// dense_head: learns separable synthetic features (binary and multi-class), determinism
// for a fixed seed, best-epoch checkpoints, head.pt, and parameter errors.
// No torch include: the stage is driven through pipe's own API only.
#include <catch2/catch.hpp>

#include <filesystem>
#include <random>
#include <unistd.h>

#include "pipe/stage.h"
#include "pipe/testing.h"
#include "torch_runtime.h"

using namespace pipeline;
namespace fs = std::filesystem;

namespace {

// `n` samples of (8, 2, 2) features: a fixed random mean per class (32 dims, N(0, 1) each,
// so class means lie ~8 apart) plus N(0, 1) noise: linearly separable with a wide margin.
struct Data {
  std::vector<Sample> samples;
};

Data make_data(int classes, int n, uint32_t seed, Split split) {
  std::normal_distribution<float> normal(0.f, 1.f);
  std::mt19937 mgen(42);  // the same class means for every split
  std::vector<std::vector<float>> mean(static_cast<size_t>(classes), std::vector<float>(32));
  for (auto& row : mean)
    for (float& v : row) v = normal(mgen);
  std::mt19937 gen(seed);
  Data d;
  for (int i = 0; i < n; ++i) {
    Sample s;
    s.id = i;
    s.split = split;
    s.label = static_cast<int>(gen() % static_cast<uint32_t>(classes));
    float* x = nullptr;
    s.features = Tensor::zeros({8, 2, 2}, &x);
    for (int k = 0; k < 32; ++k)
      x[k] = mean[static_cast<size_t>(s.label)][static_cast<size_t>(k)] + normal(gen);
    d.samples.push_back(s);
  }
  return d;
}

SplitMetrics pass(SinkStage& head, const Data& d, Split split, int epoch, int batch = 20) {
  head.begin_epoch(split, epoch);
  for (size_t i = 0; i < d.samples.size(); i += static_cast<size_t>(batch)) {
    Batch b;
    b.split = split;
    b.epoch = epoch;
    for (size_t j = i; j < std::min(d.samples.size(), i + static_cast<size_t>(batch)); ++j)
      b.samples.push_back(d.samples[j]);
    head.consume(b);
  }
  return head.end_epoch();
}

struct History {
  std::vector<double> train_loss, val_loss, val_acc;
};

History train(SinkStage& head, int classes, int epochs, uint64_t seed) {
  RunInfo run;
  run.seed = seed;
  run.epochs = epochs;
  for (int c = 0; c < classes; ++c) run.classes.push_back("c" + std::to_string(c));
  head.begin_run(run);
  const Data tr = make_data(classes, 400, 1, Split::train);
  const Data va = make_data(classes, 200, 2, Split::validation);
  History h;
  for (int e = 1; e <= epochs; ++e) {
    const SplitMetrics t = pass(head, tr, Split::train, e);
    const SplitMetrics v = pass(head, va, Split::validation, e);
    CHECK(t.count == 400);
    CHECK(v.count == 200);
    h.train_loss.push_back(t.loss);
    h.val_loss.push_back(v.loss);
    h.val_acc.push_back(v.accuracy);
  }
  return h;
}

const char* kBinary = "{stage: dense_head, hidden: 64, dropout: 0.5, optimizer: rmsprop, lr: 1.0e-3}";

}  // namespace

TEST_CASE("dense_head: learns, deterministic, best checkpoint", "[dense_head]") {
  torch_set_threads(2);

  SECTION("binary (sigmoid) head learns a separable set; runs repeat bit for bit") {
    auto head = testing::make<SinkStage>(kBinary, "head");
    const History h = train(*head, 2, 5, 7);
    INFO("validation accuracy per epoch: " << Catch::Detail::stringify(h.val_acc));
    CHECK(h.val_acc.back() > 0.95);
    CHECK(h.train_loss.back() < h.train_loss.front());

    auto head2 = testing::make<SinkStage>(kBinary, "head");
    const History h2 = train(*head2, 2, 5, 7);
    CHECK(h2.train_loss == h.train_loss);  // exact: same seed, same order
    CHECK(h2.val_loss == h.val_loss);
    // begin_run on the same object starts over.
    const History h3 = train(*head, 2, 5, 7);
    CHECK(h3.train_loss == h.train_loss);
    // Another seed: another init and other dropout masks.
    auto head4 = testing::make<SinkStage>(kBinary, "head");
    const History h4 = train(*head4, 2, 5, 8);
    CHECK(h4.train_loss != h.train_loss);
  }

  SECTION("multi-class (softmax) head, each optimizer") {
    for (const char* opt : {"rmsprop", "adam", "sgd"}) {
      const std::string lr = std::string(opt) == "sgd" ? "0.05" : "1.0e-3";
      auto head = testing::make<SinkStage>(std::string("{stage: dense_head, hidden: 64, dropout: 0.2, "
                                                       "momentum: 0.9, optimizer: ") +
                                           opt + ", lr: " + lr + "}");
      const History h = train(*head, 3, 6, 1);
      INFO(opt << ": validation accuracy per epoch: " << Catch::Detail::stringify(h.val_acc));
      CHECK(h.val_acc.back() > 0.85);
    }
  }

  SECTION("restore_best brings back the marked weights; save writes head.pt") {
    auto head = testing::make<SinkStage>(kBinary, "head");
    RunInfo run;
    run.seed = 3;
    run.classes = {"a", "b"};
    head->begin_run(run);
    const Data tr = make_data(2, 400, 1, Split::train);
    const Data va = make_data(2, 200, 2, Split::validation);
    pass(*head, tr, Split::train, 1);
    const SplitMetrics best = pass(*head, va, Split::validation, 1);
    head->mark_best(1);
    for (int e = 2; e <= 4; ++e) pass(*head, tr, Split::train, e);
    const SplitMetrics later = pass(*head, va, Split::validation, 4);
    CHECK(later.loss != best.loss);
    head->restore_best();
    const SplitMetrics restored = pass(*head, va, Split::validation, 5);
    CHECK(restored.loss == best.loss);
    CHECK(restored.accuracy == best.accuracy);

    const fs::path dir = fs::temp_directory_path() / ("pipe-test-head-" + std::to_string(::getpid()));
    fs::create_directories(dir);
    head->save(dir.string());
    CHECK(fs::file_size(dir / "head.pt") > 32u * 64u * 4u);
    fs::remove_all(dir);
  }

  SECTION("errors") {
    CHECK_THROWS_WITH(testing::make<SinkStage>("{stage: dense_head, dropout: 1.0}"),
                      Catch::Contains("dropout"));
    CHECK_THROWS_WITH(testing::make<SinkStage>("{stage: dense_head, optimizer: adagrad}"),
                      Catch::Contains("adagrad"));
    auto head = testing::make<SinkStage>(kBinary, "head");
    RunInfo run;
    run.classes = {"a", "b"};
    head->begin_run(run);
    Data d = make_data(2, 3, 1, Split::train);
    d.samples[2].label = 5;
    head->begin_epoch(Split::train, 1);
    Batch b;
    b.samples = d.samples;
    CHECK_THROWS_WITH(head->consume(b), Catch::Contains("label 5"));
  }
}
