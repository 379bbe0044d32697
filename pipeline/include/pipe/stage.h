// The stage contract. A stage declares what it is (a StageSchema) next to its
// implementation; the registry, the graph validator, `pipe stages` and docs/stages.md all
// read that one declaration.
#pragma once
// NOTE: the C++ namespace is `pipeline`, not `pipe`: POSIX <unistd.h> declares ::pipe(),
// which makes a global `namespace pipe` a compile error in any file that includes it.

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "pipe/params.h"
#include "pipe/rng.h"
#include "pipe/sample.h"
#include "pipe/source.h"

namespace pipeline {

enum class StageKind {
  source,     // a `data:` source, not a node
  map,        // per-sample transform (decode, augment)
  batch_map,  // per-batch transform (convbase): batches, owns a device
  cache,      // memoizes everything upstream of it (handled by the framework)
  sink,       // consumes ordered batches (head training/evaluation)
  join,       // per-sample fan-in: several inputs of one sample id -> one sample (concat)
};
enum class Concurrency { parallel, serial };
const char* stage_kind_name(StageKind k);

// What a stage produces: lets the validator reject impossible orders (a convbase fed with
// encoded bytes, a head fed with images it cannot use...).
enum class Payload { any, bytes, image, features };
const char* payload_name(Payload p);

struct StageSchema {
  std::string name;
  std::string doc;  // one paragraph
  StageKind kind = StageKind::map;
  Concurrency concurrency = Concurrency::parallel;
  // Random stages draw from the per-sample stream and act on the training split only:
  // validation and test images are never augmented.
  bool random = false;
  bool has_device = false;
  // Sinks only: the sink takes training passes only (e.g. `preview`); the planner leaves it,
  // and whatever only it needs, out of validation and test passes.
  bool train_only = false;
  Payload consumes = Payload::any;
  Payload produces = Payload::any;
  std::vector<ParamSpec> params;
  std::string example;  // an example YAML node, shown by `pipe stages`

  StageSchema& param(ParamSpec p) { params.push_back(std::move(p)); return *this; }
  const ParamSpec* find(const std::string& param) const;
};

// One step of data-parallel training on this rank: rows [offset, offset + local) of a
// global batch of `global` rows (docs/distributed.md). local == 0: this rank has no rows of
// that batch, and still takes part in its all-reduce.
struct StepShard {
  int64_t global = 0, offset = 0, local = 0;
};

// What a sink needs to train data-parallel across processes (pipe launch, torchrun, Slurm,
// mpirun). The runner owns it; a sink reads it during the run.
class DataParallel {
 public:
  virtual ~DataParallel() = default;
  virtual int rank() const = 0;
  virtual int world() const = 0;
  // This rank's steps in the current pass, in order (the runner sets them before each pass).
  virtual const std::vector<StepShard>& steps() const = 0;
  // In place, over every rank; `what` names the collective in an error message.
  virtual void all_reduce_sum(float* data, std::size_t n, const std::string& what) = 0;
  virtual void all_reduce_sum(double* data, std::size_t n, const std::string& what) = 0;
};

struct RunInfo {
  uint64_t seed = 0;
  int epochs = 0;
  int batch = 0;  // training batch size (global: over every rank)
  std::vector<std::string> classes;
  std::string out_dir;  // run directory ("" when none, e.g. in tests)
  int threads = 1;
  DataParallel* parallel = nullptr;  // null: this run is one process
};

class Stage {
 public:
  virtual ~Stage() = default;
  // Extra identity for cache fingerprints beyond stage name + params (e.g. a hash of model
  // weights); empty when params say everything.
  virtual std::string fingerprint() const { return {}; }
};

class MapStage : public Stage {
 public:
  // `rng` is this sample's own stream for this node; deterministic stages ignore it.
  virtual void process(Sample& sample, Rng& rng) = 0;
};

class BatchStage : public Stage {
 public:
  virtual int batch_size() const = 0;
  // Replaces the payload of each sample (e.g. image -> features), keeping order.
  virtual void process(Batch& batch) = 0;
};

// Optional, for a batch stage whose process() (or a sink whose consume()) keeps every core of
// this process busy (a CPU forward pass, or a training step, on LibTorch's whole intra-op
// thread team). While it runs, the executor starts no per-sample work (decode, augment)
// beside it: on a full CPU that work only preempts one of the team's threads, and the team's
// barriers then wait for it (docs/performance.md: decode beside a 32 px forward cost the
// forward about twice decode's own CPU time). A stage that computes on a GPU answers false:
// there, preparing the next batch while the device works is the overlap that pays. Added in
// API 0.3; stages that do not implement it are never gated. While it answers true, its
// process() or consume() runs on one thread of the executor's, the same for every batch of
// every pass (an OpenMP team belongs to the thread that starts it).
class FillsCores {
 public:
  virtual ~FillsCores() = default;
  virtual bool fills_cores() const = 0;
};

// Fan-in: one sample id arriving on every input edge, joined into one sample. The framework
// matches inputs by sample id and calls process in sample order; a sample skipped on any
// input never reaches the join.
class JoinStage : public Stage {
 public:
  // `inputs` holds one sample per input edge, in the order the graph lists the edges. `out`
  // starts as a copy of inputs[0]'s metadata (id, label, split, epoch, view, origin) with an
  // empty payload.
  virtual void process(std::vector<Sample>& inputs, Sample& out) = 0;
};

// The framework's own `cache` node (pipeline/src/cache_node.cpp): the planner and the runner
// do its work, so it has no methods. Not a base for plugin stages.
class CacheStage : public Stage {};

struct SplitMetrics {
  double loss = 0;
  double accuracy = 0;
  int64_t count = 0;
};

// Sample-weighted running loss and accuracy over one pass, for sinks.
class MetricSum {
 public:
  void reset() { *this = MetricSum(); }
  // `mean_loss` of a batch of `n` samples, `correct` of them classified right.
  void add(double mean_loss, int64_t correct, int64_t n) {
    loss_sum_ += mean_loss * static_cast<double>(n);
    correct_ += correct;
    count_ += n;
  }
  // The sums, and a MetricSum made of sums (a distributed sink adds every rank's).
  double loss_sum() const { return loss_sum_; }
  int64_t correct() const { return correct_; }
  int64_t count() const { return count_; }
  static MetricSum of_sums(double loss_sum, int64_t correct, int64_t count) {
    MetricSum m;
    m.loss_sum_ = loss_sum;
    m.correct_ = correct;
    m.count_ = count;
    return m;
  }
  SplitMetrics metrics() const {
    if (count_ == 0) return {};
    const double n = static_cast<double>(count_);
    return {loss_sum_ / n, static_cast<double>(correct_) / n, count_};
  }

 private:
  double loss_sum_ = 0;
  int64_t correct_ = 0, count_ = 0;
};

class SinkStage : public Stage {
 public:
  virtual void begin_run(const RunInfo&) {}
  virtual void begin_epoch(Split split, int epoch) = 0;
  virtual void consume(Batch& batch) = 0;  // batches arrive in sample order
  virtual SplitMetrics end_epoch() = 0;
  // Called after a validation pass is better than every earlier one: keep a checkpoint.
  virtual void mark_best(int /*epoch*/) {}
  // Restore the best checkpoint (if any) before the test pass.
  virtual void restore_best() {}
  // Write final artifacts (e.g. head.pt) into the run directory.
  virtual void save(const std::string& /*dir*/) {}
  // Everything needed to continue training exactly (weights, optimizer state, the best
  // checkpoint, random generator state), written at each epoch end into an empty `dir`;
  // `pipe run --resume` calls load_state after begin_run. Sinks that cannot resume keep
  // these defaults, and resuming a run that uses them is refused.
  virtual bool can_resume() const { return false; }
  virtual void save_state(const std::string& /*dir*/) const {}
  virtual void load_state(const std::string& /*dir*/) {}
  // False for sinks that train nothing (e.g. `preview`): their end_epoch() metrics are not
  // reported, and they take no part in choosing the best epoch.
  virtual bool reports_metrics() const { return true; }
};

// One node on the evaluation path into a sink (ModelExport::export_model).
struct PathStep {
  std::string node, stage;
  const Params* params = nullptr;
  const Stage* impl = nullptr;
};

// A sink that can write what it learned, with everything upstream of it, as one model file.
// A separate interface (the runner asks with dynamic_cast) so that plugins built before it
// existed keep their vtable layout.
class ModelExport {
 public:
  virtual ~ModelExport() = default;
  // Writes `file`, a self-contained model (TorchScript) of what happens to an image at
  // evaluation time: the nodes of `upstream` (source side first, random stages left out as in
  // evaluation) and then this sink, with its best-epoch weights. Called after the test pass.
  // Returns "" when written, else why this path has no model form (the run goes on).
  virtual std::string export_model(const std::vector<PathStep>& upstream, const std::string& file) = 0;
};

// A sink whose optimizer has a learning rate the run schedules (train.lr_schedule). A
// separate interface for the same reason as ModelExport.
class LearningRate {
 public:
  virtual ~LearningRate() = default;
  virtual double configured_lr() const = 0;  // what the graph gave
  virtual void set_lr(double lr) = 0;        // for the coming epoch
};

// The one rule for paths in graphs (data, weights, outputs, cache dirs, plugins): "~" and
// "~/..." are the user's home ($HOME, else the password database), an absolute path stays, a
// relative one is taken from `base_dir` (the graph file's directory); the result is
// lexically normalised. "" stays "".
std::string resolve_path(const std::string& path, const std::string& base_dir);

struct StageContext {
  std::string node;       // the node's name in the graph
  std::string graph_dir;  // directory of the graph file: relative paths resolve against it
  uint64_t seed = 0;
  // A path parameter as the graph means it (resolve_path against the graph's directory).
  std::string resolve(const std::string& path) const { return resolve_path(path, graph_dir); }
};

using StageFactory =
    std::function<std::unique_ptr<Stage>(const Params&, const StageContext&)>;

struct SourceContext {
  std::string graph_dir;
  std::string resolve(const std::string& path) const { return resolve_path(path, graph_dir); }
};
using SourceFactory =
    std::function<std::unique_ptr<Source>(const Params&, const SourceContext&)>;

}  // namespace pipeline
