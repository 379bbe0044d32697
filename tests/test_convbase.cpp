// convbase (and train_base, which writes the weights convbase reads): feature shapes,
// batch-composition independence, weights files, fingerprints and error messages.
// No torch include: the stages are driven through pipe's own API only.
#include <catch2/catch.hpp>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <unistd.h>

#include <opencv2/core.hpp>

#include "pipe/stage.h"
#include "pipe/testing.h"
#include "torch_runtime.h"

using namespace pipeline;
namespace fs = std::filesystem;

namespace {

Sample image_sample(int64_t id, int size = 32, int label = 0) {
  Sample s;
  s.id = id;
  s.label = label;
  s.image = cv::Mat(size, size, CV_8UC3);
  cv::RNG rng(static_cast<uint64_t>(1000 + id));
  rng.fill(s.image, cv::RNG::UNIFORM, 0, 256);
  return s;
}

Batch batch_of(const std::vector<int64_t>& ids, int size = 32) {
  Batch b;
  for (int64_t id : ids) b.samples.push_back(image_sample(id, size, static_cast<int>(id % 2)));
  return b;
}

float max_abs_diff(const Tensor& a, const Tensor& b) {
  REQUIRE(a.shape == b.shape);
  float m = 0;
  for (int64_t i = 0; i < a.numel(); ++i) m = std::max(m, std::fabs(a.ptr()[i] - b.ptr()[i]));
  return m;
}

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// A fresh directory under the system temp dir, removed at scope exit.
struct TempDir {
  fs::path path;
  explicit TempDir(const std::string& tag)
      : path(fs::temp_directory_path() / ("pipe-test-" + tag + "-" + std::to_string(::getpid()))) {
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() { fs::remove_all(path); }
};

// One training step of train_base on a batch, then save(): writes its base weights to `out`.
void train_and_save(SinkStage& trainer, int steps) {
  for (int i = 0; i < steps; ++i) {
    trainer.begin_epoch(Split::train, i + 1);
    Batch b = batch_of({0, 1, 2, 3});
    trainer.consume(b);
    trainer.end_epoch();
  }
  trainer.save("");
}

}  // namespace

TEST_CASE("convbase: features of small_vgg", "[convbase]") {
  torch_set_threads(2);
  auto stage = testing::make<BatchStage>("{stage: convbase, model: 'builtin:small_vgg', batch: 4}");
  CHECK(stage->batch_size() == 4);
  // Unset (0): chosen for the device the stage runs on.
  CHECK(testing::make<BatchStage>("{stage: convbase, model: 'builtin:small_vgg', device: cpu}")
            ->batch_size() == 64);
  CHECK(testing::make<BatchStage>("{stage: convbase, model: 'builtin:small_vgg', batch: 0, device: cpu}")
            ->batch_size() == 64);
  if (torch_cuda_available())
    CHECK(testing::make<BatchStage>("{stage: convbase, model: 'builtin:small_vgg', device: cuda}")
              ->batch_size() == 256);
  CHECK(stage->fingerprint() == "builtin:small_vgg random-init:0");

  Batch four = batch_of({0, 1, 2, 3});
  stage->process(four);

  SECTION("shape (128, 4, 4) at 32x32; the image is released") {
    for (const Sample& s : four.samples) {
      REQUIRE(s.features.defined());
      CHECK(s.features.shape == std::vector<int64_t>{128, 4, 4});
      CHECK(s.image.empty());
    }
    // Random init is not degenerate: distinct images give distinct features.
    CHECK(max_abs_diff(four.samples[0].features, four.samples[1].features) > 1e-3f);
    Batch big = batch_of({7}, 64);
    stage->process(big);
    CHECK(big.samples[0].features.shape == std::vector<int64_t>{128, 8, 8});
  }

  SECTION("features do not depend on batch composition or order") {
    Batch one = batch_of({2});
    stage->process(one);
    CHECK(max_abs_diff(one.samples[0].features, four.samples[2].features) <= 1e-5f);
    Batch reversed = batch_of({3, 2, 1, 0});
    stage->process(reversed);
    for (int i = 0; i < 4; ++i)
      CHECK(max_abs_diff(reversed.samples[3 - i].features, four.samples[i].features) <= 1e-5f);
    // Same init seed, another stage object: same features.
    auto again = testing::make<BatchStage>("{stage: convbase, model: 'builtin:small_vgg', batch: 4}");
    Batch b = batch_of({0, 1, 2, 3});
    again->process(b);
    CHECK(max_abs_diff(b.samples[1].features, four.samples[1].features) == 0.0f);
  }

  SECTION("normalization parameters change the input") {
    auto norm = testing::make<BatchStage>(
        "{stage: convbase, model: 'builtin:small_vgg', mean: [0.5, 0.5, 0.5], std: [0.25, 0.25, 0.25]}");
    Batch b = batch_of({0});
    norm->process(b);
    CHECK(max_abs_diff(b.samples[0].features, four.samples[0].features) > 1e-3f);
    CHECK_THROWS_WITH(testing::make<BatchStage>(
                          "{stage: convbase, model: 'builtin:small_vgg', mean: [0.5, 0.5, 0.5]}"),
                      Catch::Contains("both 'mean' and 'std'"));
  }

  SECTION("a batch with mixed image sizes is a sample error naming the sample") {
    Batch mixed = batch_of({0, 1});
    mixed.samples[1] = image_sample(1, 28);
    CHECK_THROWS_AS(stage->process(mixed), SampleError);
    Batch mixed2 = batch_of({0, 1});
    mixed2.samples[1] = image_sample(1, 28);
    CHECK_THROWS_WITH(stage->process(mixed2), Catch::Contains("train#1") && Catch::Contains("28x28"));
  }
}

TEST_CASE("convbase: weights files, fingerprints and errors", "[convbase]") {
  torch_set_threads(2);
  TempDir dir("convbase");
  const std::string graph_dir = dir.path.string();

  SECTION("train_base writes weights that convbase loads; any change changes the fingerprint") {
    auto trainer = testing::make<SinkStage>(
        "{stage: train_base, model: 'builtin:small_vgg', out: models/w.pt, device: cpu}",
        "trainer", 1, graph_dir);
    RunInfo run;
    run.seed = 3;
    run.classes = {"a", "b"};
    trainer->begin_run(run);
    train_and_save(*trainer, 1);
    const fs::path weights = dir.path / "models" / "w.pt";
    REQUIRE(fs::exists(weights));
    CHECK(fs::file_size(weights) < 5u * 1024 * 1024);

    const std::string yaml = "{stage: convbase, model: 'builtin:small_vgg', weights: models/w.pt}";
    auto loaded = testing::make<BatchStage>(yaml, "features", 1, graph_dir);
    const std::string fp1 = loaded->fingerprint();
    CHECK(fp1.find("weights:") != std::string::npos);
    CHECK(fp1 != "builtin:small_vgg random-init:0");
    auto random = testing::make<BatchStage>("{stage: convbase, model: 'builtin:small_vgg'}");
    Batch a = batch_of({5}), b = batch_of({5});
    loaded->process(a);
    random->process(b);
    CHECK(max_abs_diff(a.samples[0].features, b.samples[0].features) > 1e-3f);

    // Loading the same file again: same fingerprint, same features.
    auto loaded2 = testing::make<BatchStage>(yaml, "features", 1, graph_dir);
    CHECK(loaded2->fingerprint() == fp1);
    Batch c = batch_of({5});
    loaded2->process(c);
    CHECK(max_abs_diff(a.samples[0].features, c.samples[0].features) == 0.0f);

    // One more training step, saved over the same path: new content, new fingerprint.
    const std::string before = slurp(weights);
    train_and_save(*trainer, 1);
    REQUIRE(slurp(weights) != before);
    auto loaded3 = testing::make<BatchStage>(yaml, "features", 1, graph_dir);
    CHECK(loaded3->fingerprint() != fp1);

    // A random init fingerprint follows its seed.
    auto seeded = testing::make<BatchStage>("{stage: convbase, model: 'builtin:small_vgg', init_seed: 9}");
    CHECK(seeded->fingerprint() == "builtin:small_vgg random-init:9");
  }

  SECTION("missing and unreadable files are named in the error") {
    const std::string missing = (dir.path / "nope" / "model.pt").string();
    CHECK_THROWS_WITH(testing::make<BatchStage>("{stage: convbase, model: '" + missing + "'}"),
                      Catch::Contains(missing) && Catch::Contains("does not exist"));
    CHECK_THROWS_WITH(testing::make<BatchStage>(
                          "{stage: convbase, model: 'builtin:small_vgg', weights: missing.pt}",
                          "features", 1, graph_dir),
                      Catch::Contains((dir.path / "missing.pt").string()));
    const fs::path junk = dir.path / "junk.pt";
    std::ofstream(junk) << "not a model";
    CHECK_THROWS_WITH(testing::make<BatchStage>("{stage: convbase, model: junk.pt}", "features", 1,
                                                graph_dir),
                      Catch::Contains("cannot load TorchScript model") &&
                          Catch::Contains(junk.string()));
    CHECK_THROWS_WITH(testing::make<BatchStage>(
                          "{stage: convbase, model: 'builtin:small_vgg', weights: junk.pt}",
                          "features", 1, graph_dir),
                      Catch::Contains("cannot load weights") && Catch::Contains(junk.string()));
    CHECK_THROWS_WITH(testing::make<BatchStage>("{stage: convbase, model: 'builtin:resnet'}"),
                      Catch::Contains("unknown builtin model 'resnet'"));
  }

  SECTION("devices") {
    CHECK_THROWS_WITH(
        testing::make<BatchStage>("{stage: convbase, model: 'builtin:small_vgg', device: gpu}"),
        Catch::Contains("unknown device 'gpu'"));
    if (!torch_cuda_available()) {
      CHECK_THROWS_WITH(
          testing::make<BatchStage>("{stage: convbase, model: 'builtin:small_vgg', device: cuda:1}"),
          Catch::Contains("CUDA is not available"));
    }
    CHECK(torch_runtime_info().find("LibTorch") != std::string::npos);
  }
}
