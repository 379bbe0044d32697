// The runner: a validated GraphSpec -> epochs of train/validation passes, a test pass, and
// a run directory. Per (split, epoch) it asks the planner for the passes (plan.h), binds
// their ops to stage instances and cache entries, and hands them to the executor. It knows
// no TBB, and no cache rule: where caches sit and what their keys hold is the planner's.
#pragma once

#include <atomic>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "distributed.h"
#include "executor.h"
#include "spec.h"

namespace pipeline {

struct RunConfig {
  int threads = 0;          // 0: all cores
  std::string out_dir;      // "" : spec.output_dir, else runs/<graph>-<time>
  bool write_outputs = true;
  bool progress = false;    // a live progress bar (on a terminal)
  bool quiet = false;       // no per-epoch lines
  bool verbose = false;     // also the LibTorch runtime line (threads, BLAS) at the start
  bool ordered = true;      // benchmarks only
  const std::atomic<bool>* stop = nullptr;
  // Recorded in the run's state.json so that `pipe run --resume` can rebuild the same spec.
  std::vector<std::string> overrides;
  // Continue the interrupted run in this directory from its last completed epoch.
  std::string resume_dir;
  // Where this process sits in a distributed run (read_dist_env; world 1: alone), and how
  // long any wait for the other ranks may take (docs/distributed.md).
  DistEnv dist;
  int dist_timeout_s = 300;
};

// What `pipe run --resume DIR` needs to rebuild the spec: the graph file and overrides the
// interrupted run used, and a hash of its resolved graph (a changed graph is refused).
struct ResumeInfo {
  std::string graph_file;
  std::vector<std::string> overrides;
  std::string resolved_hash;
  int epochs_completed = 0;
};
ResumeInfo read_resume_info(const std::string& run_dir);  // throws when DIR cannot resume
std::string resolved_hash(const GraphSpec& spec);

struct EpochMetrics {
  int epoch = 0;
  SplitMetrics train, validation;
  double seconds = 0;
  double images_per_s = 0;
  double lr = -1;  // the sink's learning rate this epoch (-1: the sink has none, LearningRate)
};

// One sink's results. Sinks that report no metrics (preview) have only name and stage.
struct SinkResult {
  std::string name, stage;
  bool reports = true;
  std::vector<EpochMetrics> epochs;
  SplitMetrics test;
  double best_val_acc = -1;
  int best_epoch = 0;
  // The model file this sink exported into the run directory (ModelExport), or why none.
  std::string model, no_model_reason;
};

struct RunResult {
  std::string out_dir;
  std::vector<SinkResult> sinks;  // every sink, in graph order
  // The first sink that reports metrics (the only one in most graphs):
  std::vector<EpochMetrics> epochs;
  SplitMetrics test;
  double best_val_acc = -1;
  int best_epoch = 0;
  double seconds = 0;
  double extraction_seconds = 0;
  int64_t cache_hits = 0, cache_misses = 0;
  std::vector<SkippedSample> skipped;
  bool interrupted = false;
  nlohmann::ordered_json summary;  // as summary.json and profile.json hold them
  nlohmann::ordered_json profile;
};

// What the progress line of a pass shows (drawn on a terminal only).
struct ProgressLine {
  std::string label;       // "epoch 3 train"
  int64_t done = 0, total = 0;
  double elapsed_s = 0;    // since the pass started
  double loss = -1;        // the running training loss; < 0: not shown
};
// The line's text, without the leading '\r': label, bar of `bar_width`, done/total, rate
// (img/s), ETA (m:ss, or h:mm:ss) and the loss. Rate and ETA read "-" for the first half
// second, and until a sample is done. Pure, so that it is tested without a terminal.
std::string format_progress(const ProgressLine& p, int bar_width = 30);

// Sets TBB's and LibTorch's thread counts together (n <= 0: all cores) and returns n.
int configure_threads(int n);

// Runs the graph. Throws NodeError / std::runtime_error when the run fails.
RunResult run_graph(const GraphSpec& spec, const RunConfig& config);

// The graph in Graphviz DOT; nodes a cache cuts (they run only on a cache miss) are dashed.
std::string graph_dot(const GraphSpec& spec);

// What `pipe plan` prints: per split, the passes of epoch 1 and of epoch 2+ with their ops,
// which are served from the cache, each cache key and whether its entry is present.
std::string explain_plan(const GraphSpec& spec);

}  // namespace pipeline
