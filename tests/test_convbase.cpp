// convbase (and train_base, which writes the weights convbase reads): feature shapes,
// batch-composition independence, weights files, fingerprints and error messages, and golden
// features of the shipped base on fixed Fashion-MNIST images.
// No torch include: the stages are driven through pipe's own API only.
#include <catch2/catch.hpp>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <unistd.h>

#include <fmt/format.h>
#include <opencv2/core.hpp>

#include "pipe/rng.h"
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
  // optimize: auto (the default) on the CPU: the frozen forward, named in the fingerprint.
  CHECK(stage->fingerprint() == "builtin:small_vgg random-init:0 optimized");
  CHECK(testing::make<BatchStage>("{stage: convbase, model: 'builtin:small_vgg', optimize: off}")->fingerprint() ==
        "builtin:small_vgg random-init:0");

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

// Features of `ids` (64x64 images) through small_vgg with the shipped weights at `threads`.
std::vector<Tensor> shipped_features(const std::string& optimize, int threads, const std::vector<int64_t>& ids) {
  torch_set_threads(threads);
  auto stage = testing::make<BatchStage>(
      "{stage: convbase, model: 'builtin:small_vgg', weights: models/small_vgg_fmnist.pt, optimize: " + optimize + "}",
      "features", 1, PIPE_SOURCE_DIR);
  Batch b = batch_of(ids, 64);
  stage->process(b);
  std::vector<Tensor> out;
  for (Sample& s : b.samples) out.push_back(std::move(s.features));
  torch_set_threads(2);
  return out;
}

TEST_CASE("convbase optimize: auto agrees with the eager forward and repeats exactly at any thread count", "[convbase]") {
  const std::vector<int64_t> ids = {0, 1, 2, 3, 4, 5, 6, 7};
  const auto eager = shipped_features("off", 2, ids);
  const auto fast1 = shipped_features("auto", 1, ids), fast2 = shipped_features("auto", 2, ids);
  const auto fast4 = shipped_features("auto", 4, ids);
  for (size_t i = 0; i < ids.size(); ++i) {
    float largest = 0;
    for (int64_t k = 0; k < eager[i].numel(); ++k) largest = std::max(largest, std::fabs(eager[i].ptr()[k]));
    INFO("image " << i << ", largest |feature| " << largest);
    REQUIRE(largest > 0.1f);
    // The documented tolerance (docs/performance.md): 1e-4 of the largest feature.
    CHECK(max_abs_diff(fast2[i], eager[i]) <= 1e-4f * largest);
    // Bit-identical across thread counts: cached features, and so metrics, do not depend on --threads.
    CHECK(max_abs_diff(fast1[i], fast2[i]) == 0.0f);
    CHECK(max_abs_diff(fast4[i], fast2[i]) == 0.0f);
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
    CHECK(seeded->fingerprint() == "builtin:small_vgg random-init:9 optimized");
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

namespace {

// One image's features in a few numbers: their sum and L2 norm, the largest value and where
// it is, and the first and last values.
struct Golden {
  std::string origin;  // which Fashion-MNIST image (file index: the source's selection)
  double sum, norm, max;
  int64_t argmax;
  double v0, v2047;
};

// Recorded with the shipped models/small_vgg_fmnist.pt (LibTorch 1.13 CPU). The tolerance,
// 1e-4 relative (+1e-5 absolute for single values), is far above float32 rounding and the
// last-ulp differences between BLAS kernels, threads or CPUs, and far below what any change
// to the input chain (selection, decode, resize, rescale) or the base's weights and layers
// does to these numbers.
const std::vector<Golden> kGolden = {
    {"fashion-mnist:t10k-images-idx3-ubyte.gz#6924", 1376.0209, 46.4365712, 5.24311066, 212, 0.348537773, 0.156334937},
    {"fashion-mnist:t10k-images-idx3-ubyte.gz#9797", 1417.22864, 51.3798473, 5.36555004, 729, 0, 0.160119981},
    {"fashion-mnist:t10k-images-idx3-ubyte.gz#9140", 1433.08533, 49.098962, 3.97136426, 1322, 0.462963045, 0.297391295},
    {"fashion-mnist:t10k-images-idx3-ubyte.gz#8035", 1294.94603, 48.8743474, 5.36085463, 1526, 0.239185676, 1.13576496},
    {"fashion-mnist:t10k-images-idx3-ubyte.gz#5031", 1543.21359, 53.6044465, 5.68948746, 212, 0.637664676, 0.120638691},
    {"fashion-mnist:t10k-images-idx3-ubyte.gz#761", 1581.41781, 60.4281663, 7.04938698, 254, 0.108458214, 2.98719907},
};

bool close(double got, double want, double abs_tol) { return std::fabs(got - want) <= 1e-4 * std::fabs(want) + abs_tol; }

}  // namespace

TEST_CASE("convbase with the shipped weights: golden features of fixed Fashion-MNIST test images", "[convbase]") {
  torch_set_threads(2);
  // The cached regime's chain: fashion_mnist (shirt vs t-shirt; 3 test images per class) ->
  // decode to 32x32 RGB -> small_vgg with models/small_vgg_fmnist.pt, default normalization.
  auto source = testing::make_source("{source: fashion_mnist, classes: [shirt, t-shirt], per_class: [1, 1, 3]}");
  auto decode = testing::make<MapStage>("{stage: decode, size: [32, 32]}");
  auto base = testing::make<BatchStage>("{stage: convbase, model: 'builtin:small_vgg', weights: models/small_vgg_fmnist.pt}",
                                        "features", 1, PIPE_SOURCE_DIR);
  REQUIRE(source->size(Split::test) == 6);
  Batch b;
  Rng rng(0, 0, 0, 0, 0);
  for (int64_t i = 0; i < 6; ++i) {
    Sample s = source->describe(Split::test, i);
    source->load(s);
    decode->process(s, rng);
    b.samples.push_back(s);
  }
  base->process(b);
  std::string table;
  bool all_close = b.samples.size() == kGolden.size();
  for (size_t i = 0; i < b.samples.size(); ++i) {
    const Tensor& f = b.samples[i].features;
    REQUIRE(f.numel() == 2048);
    double sum = 0, sq = 0;
    int64_t argmax = 0;
    for (int64_t k = 0; k < f.numel(); ++k) {
      sum += f.ptr()[k];
      sq += double(f.ptr()[k]) * f.ptr()[k];
      if (f.ptr()[k] > f.ptr()[argmax]) argmax = k;
    }
    const Golden got{b.samples[i].origin, sum, std::sqrt(sq), f.ptr()[argmax], argmax, f.ptr()[0], f.ptr()[2047]};
    table += fmt::format("    {{\"{}\", {:.9g}, {:.9g}, {:.9g}, {}, {:.9g}, {:.9g}}},\n", got.origin, got.sum, got.norm,
                         got.max, got.argmax, got.v0, got.v2047);
    if (i >= kGolden.size()) continue;
    const Golden& want = kGolden[i];
    INFO("image " << i << " " << got.origin);
    CHECK(got.origin == want.origin);
    CHECK(close(got.sum, want.sum, 0));
    CHECK(close(got.norm, want.norm, 0));
    CHECK(close(got.max, want.max, 0));
    // The largest value is where it was (compared by value there: robust to a near-tie).
    REQUIRE(want.argmax < f.numel());
    CHECK(close(f.ptr()[want.argmax], want.max, 0));
    CHECK(close(got.v0, want.v0, 1e-5));
    CHECK(close(got.v2047, want.v2047, 1e-5));
    all_close &= got.origin == want.origin && close(got.sum, want.sum, 0) && close(got.norm, want.norm, 0);
  }
  INFO("measured (kGolden):\n" << table);
  CHECK(all_close);
}
