// The stage test harness (pipe/testing.h): stages built from a YAML node through the graph
// validator's parse_params, then called the way the executor and the runner call them.
#include "pipe/testing.h"

#include <algorithm>

#include <fmt/format.h>

#include "plugin_loader.h"
#include "spec.h"

namespace pipeline::testing {

namespace {

YAML::Node load_map(const std::string& yaml, const char* key) {
  YAML::Node n;
  try {
    n = YAML::Load(yaml);
  } catch (const YAML::Exception& e) {
    throw std::runtime_error(fmt::format("test YAML '{}': {}", yaml, e.what()));
  }
  if (!n.IsMap() || !n[key] || !n[key].IsScalar())
    throw std::runtime_error(fmt::format("test YAML needs a '{}': {}", key, yaml));
  return n;
}

// The stage a graph node `yaml` becomes, through the validator; its schema and params too.
std::unique_ptr<Stage> build_stage(const std::string& yaml, const HarnessOptions& o,
                                   const StageSchema** schema, Params* params) {
  const Registry& registry = o.registry ? *o.registry : Registry::global();
  const YAML::Node n = load_map(yaml, "stage");
  const std::string name = n["stage"].Scalar();
  const StageEntry* e = registry.find(name);
  if (!e || !e->make) throw std::runtime_error(fmt::format("no stage named '{}'", name));
  Diagnostics diag("<test>");
  *params = parse_params(e->schema, n, "nodes." + o.node, diag, {"stage"});
  if (!diag.ok()) throw std::runtime_error(diag.str());
  *schema = &e->schema;
  StageContext ctx;
  ctx.node = o.node;
  ctx.graph_dir = o.graph_dir;
  ctx.seed = o.seed;
  std::unique_ptr<Stage> stage = e->make(*params, ctx);
  if (!stage) throw std::runtime_error(fmt::format("stage '{}': the factory returned no stage", name));
  return stage;
}

}  // namespace

void load_plugin(const std::string& path) { pipeline::load_plugin(path, Registry::global()); }

Harness::Harness(const std::string& yaml, HarnessOptions options)
    : options_(std::move(options)), stage_(build_stage(yaml, options_, &schema_, &params_)) {}

template <typename T>
T& Harness::as(const char* what) {
  T* t = dynamic_cast<T*>(stage_.get());
  if (!t)
    throw std::logic_error(fmt::format("Harness::{}: stage '{}' is a {} stage", what, schema_->name,
                                       stage_kind_name(schema_->kind)));
  return *t;
}

Rng Harness::rng_for(const Sample& s) const {
  return Rng::for_sample(options_.seed, options_.node, s.epoch, s.id, s.view);
}

Sample Harness::process(Sample s) {
  MapStage& m = as<MapStage>("process");
  if (schema_->random && s.split != Split::train) return s;
  Rng rng = rng_for(s);
  m.process(s, rng);
  return s;
}

std::vector<Sample> Harness::process(std::vector<Sample> samples) {
  for (Sample& s : samples) s = process(std::move(s));
  return samples;
}

std::vector<Sample> Harness::process_batch(std::vector<Sample> samples) {
  BatchStage& b = as<BatchStage>("process_batch");
  Batch batch;
  if (!samples.empty()) {
    batch.split = samples.front().split;
    batch.epoch = samples.front().epoch;
  }
  batch.samples = std::move(samples);
  b.process(batch);
  return std::move(batch.samples);
}

Sample Harness::join(std::vector<Sample> inputs) {
  JoinStage& j = as<JoinStage>("join");
  if (inputs.empty()) throw std::logic_error("Harness::join: no inputs");
  Sample out = inputs.front().metadata();
  j.process(inputs, out);
  return out;
}

void Harness::begin_run(const RunInfo& run) { as<SinkStage>("begin_run").begin_run(run); }
void Harness::begin_epoch(Split split, int epoch) { as<SinkStage>("begin_epoch").begin_epoch(split, epoch); }

void Harness::consume(std::vector<Sample> samples) {
  SinkStage& sink = as<SinkStage>("consume");
  Batch batch;
  if (!samples.empty()) {
    batch.split = samples.front().split;
    batch.epoch = samples.front().epoch;
  }
  batch.samples = std::move(samples);
  sink.consume(batch);
}

SplitMetrics Harness::end_epoch() { return as<SinkStage>("end_epoch").end_epoch(); }

SplitMetrics Harness::run_epoch(Split split, int epoch, std::vector<Sample> samples, int batch) {
  if (batch < 1) throw std::logic_error("Harness::run_epoch: batch must be >= 1");
  begin_epoch(split, epoch);
  for (size_t i = 0; i < samples.size(); i += static_cast<size_t>(batch)) {
    const size_t end = std::min(samples.size(), i + static_cast<size_t>(batch));
    std::vector<Sample> part(std::make_move_iterator(samples.begin() + static_cast<std::ptrdiff_t>(i)),
                             std::make_move_iterator(samples.begin() + static_cast<std::ptrdiff_t>(end)));
    for (Sample& s : part) {
      s.split = split;
      s.epoch = epoch;
    }
    consume(std::move(part));
  }
  return end_epoch();
}

Sample image_sample(cv::Mat image, int64_t id, int epoch, Split split, int view, int label) {
  Sample s;
  s.id = id;
  s.label = label;
  s.split = split;
  s.epoch = epoch;
  s.view = view;
  s.origin = fmt::format("test#{}", id);
  s.image = std::move(image);
  return s;
}

Sample features_sample(Tensor features, int64_t id, int epoch, Split split, int label) {
  Sample s = image_sample(cv::Mat(), id, epoch, split, 0, label);
  s.features = std::move(features);
  return s;
}

std::unique_ptr<Stage> make_stage(const std::string& yaml, const std::string& node, uint64_t seed,
                                  const std::string& graph_dir) {
  HarnessOptions o;
  o.node = node;
  o.seed = seed;
  o.graph_dir = graph_dir;
  const StageSchema* schema = nullptr;
  Params params;
  return build_stage(yaml, o, &schema, &params);
}

std::unique_ptr<Source> make_source(const std::string& yaml, const std::string& graph_dir) {
  const YAML::Node n = load_map(yaml, "source");
  const std::string name = n["source"].Scalar();
  const StageEntry* e = Registry::global().find(name);
  if (!e || !e->make_source) throw std::runtime_error("no source named '" + name + "'");
  Diagnostics diag("<test>");
  Params p = parse_params(e->schema, n, "data", diag, {"source"});
  if (!diag.ok()) throw std::runtime_error(diag.str());
  SourceContext ctx;
  ctx.graph_dir = graph_dir;
  return e->make_source(p, ctx);
}

}  // namespace pipeline::testing
