// A test harness for stages (built-in or from a plugin), in the spirit of MediaPipe's
// CalculatorRunner and GStreamer's GstHarness: build one stage from the YAML node a graph
// would hold, through the same validator, push samples in, look at what comes out.
//
//   pipeline::testing::load_plugin("build/libpipe_cutout.so");   // a plugin's stages
//   pipeline::testing::Harness h("{stage: cutout, size: 8, p: 1}");
//   Sample out = h.process(pipeline::testing::image_sample(img, /*id=*/3));
//
// A Harness calls the stage as the executor does: a map stage gets the per-sample stream of
// (seed, node, epoch, sample id, view), and a random one passes validation and test samples
// through untouched; a batch stage gets one Batch; a join gets one sample per input edge and
// the output's metadata from the first; a sink gets begin_epoch / consume / end_epoch.
#pragma once

#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include <opencv2/core/mat.hpp>

#include "pipe/registry.h"

namespace pipeline::testing {

// Loads a plugin library into Registry::global(), checking it as `pipe --plugin` does.
// Throws std::runtime_error with the loader's message when it is refused.
void load_plugin(const std::string& path);

struct HarnessOptions {
  std::string node = "node";    // the node's name: part of the random stream's key
  uint64_t seed = 1;            // the run seed (train.seed)
  std::string graph_dir = ".";  // relative paths in params resolve against it
  const Registry* registry = nullptr;  // nullptr: Registry::global()
};

class Harness {
 public:
  // yaml: a node as written in a graph, e.g. "{stage: cutout, size: 8, p: 1}". Throws
  // std::runtime_error carrying every diagnostic when the validator refuses it (the same
  // FILE:LINE:COL lines `pipe validate` prints, with FILE "<test>").
  explicit Harness(const std::string& yaml, HarnessOptions options = {});

  const StageSchema& schema() const { return *schema_; }
  const Params& params() const { return params_; }
  Stage& stage() { return *stage_; }
  const HarnessOptions& options() const { return options_; }

  // The stream the executor hands this node for sample s: Rng::for_sample(seed, node,
  // s.epoch, s.id, s.view).
  Rng rng_for(const Sample& s) const;

  // Map stages: the sample after the stage. A random stage leaves validation and test
  // samples as they are (as in a run).
  Sample process(Sample s);
  std::vector<Sample> process(std::vector<Sample> samples);  // each on its own
  // Batch stages: one batch (split and epoch of the first sample), in order.
  std::vector<Sample> process_batch(std::vector<Sample> samples);
  // Joins: one sample per input edge, in edge order; the output starts with the first
  // input's metadata and no payload.
  Sample join(std::vector<Sample> inputs);
  // Sinks.
  void begin_run(const RunInfo& run);
  void begin_epoch(Split split, int epoch);
  void consume(std::vector<Sample> samples);  // one batch
  SplitMetrics end_epoch();
  // One whole pass: begin_epoch, consume each batch of at most `batch` samples, end_epoch.
  SplitMetrics run_epoch(Split split, int epoch, std::vector<Sample> samples, int batch);

 private:
  template <typename T>
  T& as(const char* what);

  HarnessOptions options_;
  const StageSchema* schema_ = nullptr;
  Params params_;
  std::unique_ptr<Stage> stage_;
};

// A training sample carrying `image` (not copied: cv::Mat shares pixels; stages that write
// clone first).
Sample image_sample(cv::Mat image, int64_t id = 0, int epoch = 1, Split split = Split::train,
                    int view = 0, int label = 0);
// A training sample carrying `features`.
Sample features_sample(Tensor features, int64_t id = 0, int epoch = 1, Split split = Split::train,
                       int label = 0);

// yaml: a node as written in a graph, e.g. "{stage: augment, rotation: 40}".
// Throws std::runtime_error carrying every diagnostic when validation fails.
std::unique_ptr<Stage> make_stage(const std::string& yaml, const std::string& node = "node",
                                  uint64_t seed = 1, const std::string& graph_dir = ".");

template <typename T>
std::unique_ptr<T> make(const std::string& yaml, const std::string& node = "node",
                        uint64_t seed = 1, const std::string& graph_dir = ".") {
  std::unique_ptr<Stage> s = make_stage(yaml, node, seed, graph_dir);
  T* t = dynamic_cast<T*>(s.get());
  if (!t) throw std::runtime_error("stage built from '" + yaml + "' has another kind");
  s.release();
  return std::unique_ptr<T>(t);
}

// yaml: a data block, e.g. "{source: folder, path: /tmp/x}".
std::unique_ptr<Source> make_source(const std::string& yaml, const std::string& graph_dir = ".");

}  // namespace pipeline::testing
