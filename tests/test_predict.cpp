// A run's outputs as a user takes them away: model.pt (base + head, TorchScript), classes.json,
// the saved graph.yaml, and `pipe predict`. Data: Fashion-MNIST shirts and t-shirts written
// as PNG files into a folder tree, so that the test split is a directory of images, and a
// trained head that gets some of them wrong (an exact match of the accuracy means something).
#include <catch2/catch.hpp>

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#include <torch/script.h>

#include "gunzip.h"
#include "predict.h"
#include "run_support.h"

using namespace pipeline;
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

// ROOT/{train,validation,test}/{shirt,t-shirt}/NNNN.png from the Fashion-MNIST test file
// (labels 6 and 0), `per_split` images per class and split.
void make_tree(const fs::path& root, int per_split) {
  const std::string dir = "/usr/share/datasets/fashion-mnist/";
  const std::vector<uint8_t> images = gunzip(dir + "t10k-images-idx3-ubyte.gz");
  const std::vector<uint8_t> labels = gunzip(dir + "t10k-labels-idx1-ubyte.gz");
  const std::map<int, std::string> classes = {{6, "shirt"}, {0, "t-shirt"}};
  const char* splits[] = {"train", "validation", "test"};
  std::map<int, int> taken;
  for (size_t i = 0; i < 10000; ++i) {
    const int label = labels[8 + i];
    if (!classes.count(label) || taken[label] >= 3 * per_split) continue;
    const int k = taken[label]++;
    const fs::path d = root / splits[k / per_split] / classes.at(label);
    fs::create_directories(d);
    const cv::Mat img(28, 28, CV_8UC1, const_cast<uint8_t*>(&images[16 + i * 784]));
    REQUIRE(cv::imwrite((d / fmt::format("{:05}.png", i)).string(), img));
  }
}

struct Workdir {
  fs::path path = fs::temp_directory_path() / fmt::format("pipe-predict-{}", ::getpid());
  Workdir() {
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~Workdir() { fs::remove_all(path); }
};

// The graph: relative data path (resolved against the graph file), the shipped base.
const char* kGraph = R"(
data: {source: folder, path: data}
nodes:
  decode:   {stage: decode, size: [32, 32]}
  features: {stage: convbase, model: "builtin:small_vgg", weights: WEIGHTS}
  memo:     {stage: cache}
  head:     {stage: dense_head, hidden: 32, dropout: 0.5, optimizer: rmsprop, lr: 1.0e-4}
edges: [decode -> features -> memo -> head]
train: {epochs: 2, batch: 20, seed: 5}
)";

RunResult run(const fs::path& graph_file, const fs::path& out) {
  Diagnostics diag(graph_file.string());
  const GraphSpec g = load_graph(graph_file.string(), {}, Registry::global(), diag);
  if (!diag.ok()) FAIL(diag.str());
  RunConfig cfg;
  cfg.threads = 2;
  cfg.quiet = true;
  cfg.out_dir = out.string();
  return run_graph(g, cfg);
}

std::vector<std::string> test_files(const fs::path& root) {
  std::vector<std::string> none;
  std::vector<Prediction> missing;
  std::vector<std::string> files = image_files({(root / "test").string()}, missing);
  REQUIRE(missing.empty());
  return files;
}

// What a user without pipe does: OpenCV reads and resizes (bilinear, decode's default), then
// model.pt takes the RGB pixels, channels last.
torch::Tensor plain_pixels(const std::vector<std::string>& files) {
  torch::Tensor x = torch::empty({static_cast<int64_t>(files.size()), 32, 32, 3}, torch::kUInt8);
  for (size_t i = 0; i < files.size(); ++i) {
    cv::Mat bgr = cv::imread(files[i], cv::IMREAD_COLOR), rgb, small;
    cv::cvtColor(bgr, rgb, cv::COLOR_BGR2RGB);
    cv::resize(rgb, small, cv::Size(32, 32), 0, 0, cv::INTER_LINEAR);
    std::memcpy(x[static_cast<int64_t>(i)].data_ptr(), small.data, 32 * 32 * 3);
  }
  return x;
}

// `pipe predict ARGS` as a user runs it: exit code, stdout, stderr.
struct Cli {
  int code;
  std::string out, err;
};
Cli pipe_predict(const std::string& args, const fs::path& work) {
  const fs::path err = work / "stderr.txt";
  const std::string cmd = fmt::format("'{}/pipe' predict {} 2>'{}'", PIPE_BINARY_DIR, args, err.string());
  FILE* f = popen(cmd.c_str(), "r");
  REQUIRE(f != nullptr);
  Cli c;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, f)) > 0) c.out.append(buf, n);
  const int status = pclose(f);
  c.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  std::ifstream in(err);
  c.err.assign(std::istreambuf_iterator<char>(in), {});
  CHECK(c.err.find("Sanitizer") == std::string::npos);
  return c;
}

std::vector<std::string> lines(const std::string& text) {
  std::vector<std::string> out;
  std::istringstream in(text);
  for (std::string l; std::getline(in, l);) out.push_back(l);
  return out;
}

}  // namespace

TEST_CASE("model.pt and pipe predict give the run's test results, and plain LibTorch the same probabilities") {
  Workdir work;
  make_tree(work.path / "data", 60);
  std::string yaml = kGraph;
  yaml.replace(yaml.find("WEIGHTS"), 7, std::string(PIPE_SOURCE_DIR) + "/models/small_vgg_fmnist.pt");
  std::ofstream(work.path / "graph.yaml") << yaml;
  const fs::path run_dir = work.path / "run";
  const RunResult r = run(work.path / "graph.yaml", run_dir);
  REQUIRE(r.test.count == 120);
  // A test accuracy strictly between 0 and 1: wrong predictions exist to be reproduced.
  REQUIRE(r.test.accuracy > 0.55);
  REQUIRE(r.test.accuracy < 1.0);

  SECTION("the run directory holds the model, the class names and what the summary promises") {
    REQUIRE(fs::is_regular_file(run_dir / "model.pt"));
    std::ifstream c(run_dir / "classes.json");
    CHECK(json::parse(c) == json({"shirt", "t-shirt"}));
    std::ifstream s(run_dir / "summary.json");
    const json summary = json::parse(s);
    CHECK(summary["model"] == "model.pt");
    CHECK(summary["sinks"]["head"]["model"] == "model.pt");
    CHECK(summary["classes"] == json({"shirt", "t-shirt"}));
    CHECK(summary["class_counts"]["test"]["shirt"] == 60);
    CHECK(summary["class_counts"]["train"]["t-shirt"] == 60);
    CHECK(summary["pipe_version"] == PIPE_VERSION_STRING);
    CHECK(summary["started"].get<std::string>().size() == 20);  // 2026-12-01T09:30:00Z
  }

  SECTION("pipe predict on the test split reproduces test_acc exactly") {
    const Predictor predictor(run_dir.string());
    CHECK(predictor.classes() == std::vector<std::string>({"shirt", "t-shirt"}));
    const std::vector<std::string> files = test_files(work.path / "data");
    const std::vector<Prediction> preds = predictor.predict(files, 7);  // batches of 7 and a rest
    int64_t correct = 0;
    for (const Prediction& p : preds) {
      REQUIRE(p.error.empty());
      REQUIRE(p.probabilities.size() == 2);
      CHECK(p.probabilities[0] + p.probabilities[1] == Approx(1.0).epsilon(1e-6));
      const size_t cls = p.probabilities[1] > p.probabilities[0] ? 1 : 0;
      correct += fs::path(p.path).parent_path().filename() == predictor.classes()[cls];
    }
    CHECK(static_cast<double>(correct) / static_cast<double>(preds.size()) == r.test.accuracy);
  }

  SECTION("model.pt without pipe: same probabilities, from uint8, float and gray input") {
    const std::vector<std::string> files = test_files(work.path / "data");
    const std::vector<Prediction> preds = Predictor(run_dir.string()).predict(files, 32);
    torch::jit::Module m = torch::jit::load((run_dir / "model.pt").string());
    const torch::Tensor x = plain_pixels(files);
    torch::InferenceMode guard;
    const torch::Tensor p = m.forward({x}).toTensor();
    REQUIRE(p.sizes() == torch::IntArrayRef({static_cast<int64_t>(files.size()), 2}));
    float worst = 0;
    for (size_t i = 0; i < files.size(); ++i)
      for (int64_t c = 0; c < 2; ++c)
        worst = std::max(worst, std::abs(p[static_cast<int64_t>(i)][c].item<float>() - preds[i].probabilities[static_cast<size_t>(c)]));
    CHECK(worst <= 1e-6f);
    CHECK(torch::allclose(m.forward({x.to(torch::kFloat)}).toTensor(), p, 0, 1e-6));
    // The files are gray: one channel, (N, H, W), gives what the RGB copy gives.
    CHECK(torch::allclose(m.forward({x.select(3, 0).contiguous()}).toTensor(), p, 0, 1e-6));
    CHECK(m.attr("classes").toListRef().size() == 2);
    CHECK(m.attr("input_size").toIntVector() == std::vector<int64_t>({32, 32}));
    // Pictures of another size are resized inside the model: no error, probabilities.
    const torch::Tensor big = torch::upsample_bilinear2d(x.permute({0, 3, 1, 2}).to(torch::kFloat), {64, 64}, false)
                                  .permute({0, 2, 3, 1}).contiguous();
    const torch::Tensor pb = m.forward({big}).toTensor();
    CHECK(torch::allclose(pb.sum(1), torch::ones({pb.size(0)}), 0, 1e-5));
  }

  SECTION("the saved graph.yaml reruns the run from another directory") {
    fs::create_directories(work.path / "elsewhere");
    fs::copy_file(run_dir / "graph.yaml", work.path / "elsewhere" / "graph.yaml");
    const RunResult again = run(work.path / "elsewhere" / "graph.yaml", work.path / "run2");
    CHECK(test::sink_results(again) == test::sink_results(r));
  }

  SECTION("the CLI: a line per image, bad files reported with their reason, exit 1, the rest predicted") {
    const fs::path broken = work.path / "broken.png";
    std::ofstream(broken) << "not a png";
    const std::string test_dir = (work.path / "data" / "test").string();
    const Cli ok = pipe_predict(fmt::format("'{}' '{}' --top 2", run_dir.string(), test_dir), work.path);
    CHECK(ok.code == 0);
    const auto out = lines(ok.out);
    REQUIRE(out.size() == 120);
    CHECK(out[0].rfind(test_dir, 0) == 0);
    CHECK(std::count(out[0].begin(), out[0].end(), '\t') == 4);  // path, two (class, probability) pairs

    const Cli bad = pipe_predict(fmt::format("'{}' '{}' '{}' '{}/missing.jpg' --json", run_dir.string(), test_dir,
                                             broken.string(), work.path.string()), work.path);
    CHECK(bad.code == 1);
    CHECK(bad.err.find(broken.string() + ": cannot decode image") != std::string::npos);
    CHECK(bad.err.find("missing.jpg: no such file or directory") != std::string::npos);
    const auto json_lines = lines(bad.out);
    REQUIRE(json_lines.size() == 122);
    int predicted = 0;
    for (const std::string& l : json_lines) {
      const json j = json::parse(l);
      if (j.contains("error")) continue;
      ++predicted;
      CHECK(j["probabilities"].size() == 2);
      CHECK((j["class"] == "shirt" || j["class"] == "t-shirt"));
    }
    CHECK(predicted == 120);

    const Cli no_model = pipe_predict(fmt::format("'{}' '{}'", work.path.string(), test_dir), work.path);
    CHECK(no_model.code == 1);
    CHECK(no_model.err.find("model.pt: no such model file") != std::string::npos);
  }
}
