// pipe predict: see predict.h.
#include "predict.h"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <numeric>

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <oneapi/tbb/parallel_for.h>
#include <torch/script.h>
#include <yaml-cpp/yaml.h>

#include "files.h"
#include "pipe/registry.h"
#include "spec.h"

namespace fs = std::filesystem;

namespace pipeline {

struct Predictor::Impl {
  std::string file;
  torch::jit::Module model;
  std::vector<std::string> classes;
  std::vector<std::unique_ptr<MapStage>> prepare;  // decode, resize: as the run's evaluation
};

namespace {

std::string first_line(const std::string& s) { return s.substr(0, s.find('\n')); }

// The stages named by the model's pipe_prepare YAML, built from the registry.
std::vector<std::unique_ptr<MapStage>> prepare_stages(const std::string& yaml, const std::string& file) {
  std::vector<std::unique_ptr<MapStage>> out;
  const YAML::Node steps = YAML::Load(yaml);
  for (const YAML::Node& step : steps) {
    const std::string stage = step["stage"].as<std::string>();
    const StageEntry* e = Registry::global().find(stage);
    if (!e) throw std::runtime_error(fmt::format("{}: prepares images with stage '{}', which this pipe lacks", file, stage));
    Diagnostics diag(file);
    const Params params = parse_params(e->schema, step, "pipe_prepare", diag);
    if (!diag.ok()) throw std::runtime_error(fmt::format("{}: pipe_prepare: {}", file, diag.str()));
    std::unique_ptr<Stage> s = e->make(params, StageContext{stage, "", 0});
    auto* map = dynamic_cast<MapStage*>(s.get());
    if (!map) throw std::runtime_error(fmt::format("{}: pipe_prepare stage '{}' is not a per-sample map", file, stage));
    s.release();
    out.emplace_back(map);
  }
  return out;
}

// Reads, decodes and resizes one file into `s.image`; returns the reason it failed, or "".
std::string prepare(const std::vector<std::unique_ptr<MapStage>>& stages, const std::string& path, Sample& s) {
  try {
    s.origin = path;
    s.bytes = read_image_bytes(path);
    Rng rng(0, 0, 0, 0, 0);  // the prepare stages are deterministic
    for (const auto& stage : stages) stage->process(s, rng);
    if (s.image.empty() || s.image.type() != CV_8UC3 || !s.image.isContinuous()) return "decoding gave no RGB image";
    return "";
  } catch (const std::exception& e) {
    return e.what();
  }
}

// Probabilities for the prepared images of `chunk` (all the same size), in order.
void classify(torch::jit::Module& model, std::vector<Sample>& samples, std::vector<Prediction*>& chunk) {
  if (chunk.empty()) return;
  const cv::Mat& first = samples[0].image;
  const auto n = static_cast<int64_t>(chunk.size());
  torch::Tensor x = torch::empty({n, first.rows, first.cols, 3}, torch::kUInt8);
  const size_t bytes = first.total() * 3;
  for (int64_t i = 0; i < n; ++i) std::memcpy(x[i].data_ptr(), samples[static_cast<size_t>(i)].image.data, bytes);
  torch::InferenceMode guard;
  const torch::Tensor p = model.forward({x}).toTensor().to(torch::kFloat).contiguous();
  for (int64_t i = 0; i < n; ++i) {
    const float* row = p[i].data_ptr<float>();
    chunk[static_cast<size_t>(i)]->probabilities.assign(row, row + p.size(1));
  }
}

}  // namespace

Predictor::Predictor(const std::string& model) : impl_(std::make_unique<Impl>()) {
  Impl& m = *impl_;
  m.file = fs::is_directory(model) ? (fs::path(model) / "model.pt").string() : model;
  if (!fs::is_regular_file(m.file))
    throw std::runtime_error(fmt::format("{}: no such model file (a run writes model.pt when its graph has a model "
                                         "form; summary.json says why not under sinks.<node>.no_model)", m.file));
  try {
    m.model = torch::jit::load(m.file, torch::kCPU);
  } catch (const c10::Error& e) {
    throw std::runtime_error(fmt::format("{}: cannot load TorchScript: {}", m.file, first_line(e.what_without_backtrace())));
  }
  if (!m.model.hasattr("pipe_prepare") || !m.model.hasattr("classes"))
    throw std::runtime_error(fmt::format("{}: not a model written by pipe (no pipe_prepare/classes attributes)", m.file));
  m.model.eval();
  for (const c10::IValue& c : m.model.attr("classes").toListRef()) m.classes.push_back(c.toStringRef());
  m.prepare = prepare_stages(m.model.attr("pipe_prepare").toStringRef(), m.file);
}

Predictor::~Predictor() = default;

const std::vector<std::string>& Predictor::classes() const { return impl_->classes; }

std::vector<Prediction> Predictor::predict(const std::vector<std::string>& files, int batch) const {
  std::vector<Prediction> out(files.size());
  const size_t step = static_cast<size_t>(std::max(1, batch));
  for (size_t begin = 0; begin < files.size(); begin += step) {
    const size_t end = std::min(files.size(), begin + step);
    std::vector<Sample> samples(end - begin);
    oneapi::tbb::parallel_for(begin, end, [&](size_t i) {
      out[i].path = files[i];
      out[i].error = prepare(impl_->prepare, files[i], samples[i - begin]);
    });
    std::vector<Sample> ok;
    std::vector<Prediction*> chunk;
    for (size_t i = begin; i < end; ++i)
      if (out[i].error.empty()) {
        ok.push_back(std::move(samples[i - begin]));
        chunk.push_back(&out[i]);
      }
    classify(impl_->model, ok, chunk);
  }
  return out;
}

std::vector<std::string> image_files(const std::vector<std::string>& paths, std::vector<Prediction>& missing) {
  std::vector<std::string> out;
  for (const std::string& p : paths) {
    std::error_code ec;
    if (fs::is_directory(p, ec)) {
      std::vector<std::string> found;
      for (auto it = fs::recursive_directory_iterator(p, fs::directory_options::skip_permission_denied, ec);
           !ec && it != fs::recursive_directory_iterator(); it.increment(ec))
        if (it->is_regular_file(ec) && is_image_file(it->path().string())) found.push_back(it->path().string());
      std::sort(found.begin(), found.end());
      out.insert(out.end(), found.begin(), found.end());
    } else if (fs::exists(p, ec)) {
      out.push_back(p);  // named on purpose: tried whatever its extension
    } else {
      missing.push_back({p, {}, "no such file or directory"});
    }
  }
  return out;
}

namespace {

std::vector<size_t> top_k(const std::vector<float>& p, int k) {
  std::vector<size_t> idx(p.size());
  std::iota(idx.begin(), idx.end(), 0);
  std::stable_sort(idx.begin(), idx.end(), [&](size_t a, size_t b) { return p[a] > p[b]; });
  idx.resize(std::min(idx.size(), static_cast<size_t>(std::max(1, k))));
  return idx;
}

void print(const Prediction& r, const std::vector<std::string>& classes, const PredictOptions& o, std::FILE* out) {
  const std::vector<size_t> top = top_k(r.probabilities, o.top);
  if (!o.json) {
    std::string line = r.path;
    for (size_t c : top) line += fmt::format("\t{}\t{:.4f}", classes[c], r.probabilities[c]);
    std::fprintf(out, "%s\n", line.c_str());
    return;
  }
  nlohmann::ordered_json j;
  j["path"] = r.path;
  j["class"] = classes[top[0]];
  j["probability"] = r.probabilities[top[0]];
  nlohmann::ordered_json t = nlohmann::ordered_json::array();
  for (size_t c : top) t.push_back({{"class", classes[c]}, {"probability", r.probabilities[c]}});
  j["top"] = t;
  j["probabilities"] = r.probabilities;
  std::fprintf(out, "%s\n", j.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace).c_str());
}

}  // namespace

int run_predict(const PredictOptions& o, std::FILE* out, std::FILE* err) {
  const Predictor predictor(o.model);
  std::vector<Prediction> failed;
  const std::vector<std::string> files = image_files(o.paths, failed);
  if (files.empty() && failed.empty()) {
    std::fprintf(err, "pipe predict: no image files (.jpg .jpeg .png .bmp .webp) under the given paths\n");
    return 1;
  }
  for (Prediction& r : predictor.predict(files, o.batch)) {
    if (r.error.empty()) print(r, predictor.classes(), o, out);
    else failed.push_back(std::move(r));
  }
  for (const Prediction& r : failed) {
    std::fprintf(err, "pipe predict: %s: %s\n", r.path.c_str(), r.error.c_str());
    if (o.json)
      std::fprintf(out, "%s\n", nlohmann::ordered_json({{"path", r.path}, {"error", r.error}})
                                    .dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace).c_str());
  }
  return failed.empty() ? 0 : 1;
}

}  // namespace pipeline
