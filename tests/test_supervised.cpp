// The training sinks (dense_head, train_base) share SupervisedSink: a run saved after epoch 1
// and resumed in a fresh instance continues exactly as the uninterrupted run (weights,
// optimizer state, best-epoch weights and the dropout/init generator all come back).
#include <catch2/catch.hpp>

#include <unistd.h>

#include <filesystem>
#include <random>

#include <fmt/format.h>
#include <opencv2/core.hpp>

#include "pipe/testing.h"
#include "torch_runtime.h"

using namespace pipeline;
namespace fs = std::filesystem;

namespace {

// 64 samples of two classes whose payload depends on the label, reproducible.
std::vector<Sample> data(bool images, Split split, int epoch) {
  std::mt19937 gen(7);
  std::normal_distribution<float> noise(0.f, 0.3f);
  std::vector<Sample> out;
  for (int64_t i = 0; i < 64; ++i) {
    const int label = static_cast<int>(i % 2);
    if (images) {
      cv::Mat img(16, 16, CV_8UC3);
      for (int k = 0; k < img.rows * img.cols * 3; ++k)
        img.data[k] = static_cast<uint8_t>(std::clamp(100.f + 60.f * label + 40.f * noise(gen), 0.f, 255.f));
      out.push_back(testing::image_sample(img, i, epoch, split, 0, label));
    } else {
      std::vector<float> f(12);
      for (float& v : f) v = static_cast<float>(label) + noise(gen);
      out.push_back(testing::features_sample(Tensor::copy_of(f.data(), {12}), i, epoch, split, label));
    }
  }
  return out;
}

// Metrics of epochs `from`..3 (train + validation each; mark_best when validation improves),
// then the test pass after restore_best, as text.
std::string epochs(testing::Harness& h, bool images, int from, double* best) {
  std::string out;
  for (int e = from; e <= 3; ++e) {
    const SplitMetrics tr = h.run_epoch(Split::train, e, data(images, Split::train, e), 8);
    const SplitMetrics va = h.run_epoch(Split::validation, e, data(images, Split::validation, e), 8);
    if (va.accuracy > *best) {
      *best = va.accuracy;
      static_cast<SinkStage&>(h.stage()).mark_best(e);
    }
    out += fmt::format("{} {} {} {};", tr.loss, tr.accuracy, va.loss, va.accuracy);
  }
  static_cast<SinkStage&>(h.stage()).restore_best();
  const SplitMetrics te = h.run_epoch(Split::test, 3, data(images, Split::test, 3), 8);
  return out + fmt::format("test {} {}", te.loss, te.accuracy);
}

void check_resume(const std::string& yaml, bool images) {
  torch_set_threads(1);
  RunInfo run;
  run.seed = 5;
  run.classes = {"a", "b"};
  const fs::path dir = fs::temp_directory_path() / fmt::format("pipe-test-supervised-{}", ::getpid());
  fs::remove_all(dir);
  fs::create_directories(dir);
  testing::HarnessOptions opt;
  opt.graph_dir = dir.string();

  testing::Harness whole(yaml, opt);
  whole.begin_run(run);
  double best_whole = -1;
  const std::string uninterrupted = epochs(whole, images, 1, &best_whole);

  testing::Harness first(yaml, opt);
  first.begin_run(run);
  double best = -1;
  const SplitMetrics tr = first.run_epoch(Split::train, 1, data(images, Split::train, 1), 8);
  const SplitMetrics va = first.run_epoch(Split::validation, 1, data(images, Split::validation, 1), 8);
  best = va.accuracy;
  static_cast<SinkStage&>(first.stage()).mark_best(1);
  auto& sink = static_cast<SinkStage&>(first.stage());
  REQUIRE(sink.can_resume());
  sink.save_state(dir.string());

  testing::Harness resumed(yaml, opt);
  resumed.begin_run(run);
  static_cast<SinkStage&>(resumed.stage()).load_state(dir.string());
  const std::string after = fmt::format("{} {} {} {};", tr.loss, tr.accuracy, va.loss, va.accuracy) +
                            epochs(resumed, images, 2, &best);
  CHECK(after == uninterrupted);
  fs::remove_all(dir);
}

}  // namespace

TEST_CASE("dense_head resumes exactly from its saved state (dropout stream included)") {
  check_resume("{stage: dense_head, hidden: 16, dropout: 0.5, optimizer: adam, lr: 0.01}", false);
}

TEST_CASE("train_base resumes exactly from its saved state") {
  check_resume("{stage: train_base, model: 'builtin:small_vgg', out: base.pt, device: cpu, lr: 0.001}", true);
}
