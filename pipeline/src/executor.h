// The executor: runs one pass (one split, one epoch) of a DAG of ops on a tbb::flow::graph
// with the properties the framework promises:
//   bounded   one limiter caps samples between the feed and the last sink, across every
//             branch: a sample's token returns only when every sink has taken it;
//   ordered   a sequencer restores feed order before anything batches, and a join matches
//             its inputs by sample, so batches never depend on thread timing;
//   seeded    random stages draw from per-(seed, node, epoch, sample, view) streams;
//   failing   an exception cancels the pass once, naming node and sample.
// Shape of a pass: feed -> [per-sample region] -> sequencer -> [serial tail]. The region is
// every per-sample op (map, join, framework op) not downstream of a batching op; it runs as
// one parallel flow node per sample, evaluating its ops in order (fan-out copies the sample,
// fan-in joins within the sample). The tail holds batch ops, sinks and whatever follows a
// batch op; it runs serially in sample order, and joins there match inputs by sample.
// The executor knows ops, not caches or regimes: a cache read or write is a framework op
// (`fn`) that the runner binds.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "pipe/stage.h"
#include "spec.h"

namespace pipeline {

// Per-node counters, accumulated over every pass of a run.
struct NodeProfile {
  std::string node;
  std::string stage;
  std::atomic<int64_t> items{0};
  std::atomic<int64_t> busy_ns{0};     // inside the stage's code
  std::atomic<int64_t> blocked_ns{0};  // finished, waiting for the next node to take the sample
  std::atomic<int64_t> wait_ns{0};     // serial tail only: idle, waiting for input
  std::atomic<int64_t> gated_ns{0};    // per-sample ops: held back while a FillsCores op ran
};

class Profile {
 public:
  NodeProfile& node(const std::string& name, const std::string& stage);
  std::vector<const NodeProfile*> nodes() const;

 private:
  mutable std::mutex mu_;
  std::vector<std::unique_ptr<NodeProfile>> nodes_;
};

// A node error: which node, which sample, what went wrong. Its what() says all three.
class NodeError : public std::runtime_error {
 public:
  // `context` follows the node's name in the message, e.g. " (stage 'cutout' from plugin P)".
  NodeError(std::string node, std::string sample, const std::string& what, const std::string& context = "");
  std::string node, sample, reason;
};

struct SkippedSample {
  int64_t id = -1;
  std::string sample;  // file path for files, else "<split>#<id>"
  std::string reason;
  std::string node;
  Split split = Split::train;
};

// One op of a pass. Ops are listed in topological order (every input before its consumer).
struct PassNode {
  std::string name;
  std::string stage;
  StageKind kind = StageKind::map;
  Stage* impl = nullptr;     // MapStage / BatchStage / SinkStage; null for cache ops
  bool random = false;
  Concurrency concurrency = Concurrency::parallel;
  // Names the stage and its plugin in error messages ("" for built-in stages).
  std::string context;
  // Cache writer: called in order with every sample that reaches it (nullptr: not a writer).
  std::function<void(const Sample&)> write;
  // Producers, as indices into PassSpec::nodes; -1 is the feed (after PassSpec::load when
  // one is set). Empty: the previous op (-1 for the first), i.e. a chain. A join takes its
  // inputs in this order.
  std::vector<int> inputs;
  // A framework op (load, cache read, cache write) of kind map: called instead of a stage.
  std::function<void(Sample&)> fn;
  bool cheap = false;  // `fn` is a memory read: nothing to overlap, may run inline
};

struct PassResult {
  int64_t fed = 0, consumed = 0;
  std::vector<SkippedSample> skipped;
  bool interrupted = false;
  double seconds = 0;
};

struct PassSpec {
  Split split = Split::train;
  int epoch = 0;
  uint64_t seed = 0;
  int64_t count = 0;                              // samples to feed
  std::function<Sample(int64_t seq)> describe;    // serial, cheap: metadata of the seq-th sample
  std::function<void(Sample&)> load;              // optional, parallel: fills the payload
  std::string load_name = "load";                 // profile name of the load step
  std::vector<PassNode> nodes;                    // after the feed, in order; last may be a sink
  int sink_batch = 20;
  int in_flight = 256;
  bool skip_bad = false;                          // on_error: skip
  bool ordered = true;                            // false only for benchmarks of the cost of order
  // The load is a memory read (a cache hit): with no parallel stage before the tail there
  // is nothing to overlap, so the pass runs inline on the calling thread (same order, same
  // results, no per-sample thread hand-offs).
  bool cheap_load = false;
  // In a pass without a sink whose tail holds a batch op that fills the cores (FillsCores: an
  // extraction), the per-sample work runs on the core thread's team between that op's calls, a
  // batch's worth at a time (run_team in executor.cpp); false: on TBB threads, held back while
  // the op runs, as in every other pass.
  bool on_core_team = true;
  const std::atomic<bool>* stop = nullptr;        // set by SIGINT: stop feeding
  std::function<void(int64_t done, int64_t total)> progress;  // from the serial tail
  // Test instrumentation: called with the number of samples in flight after each admission.
  std::function<void(int64_t)> on_admit;
};

PassResult run_pass(const PassSpec& pass, Profile& profile);

// Runs `job` on the core thread, the one thread of the process whose OpenMP team runs
// multi-threaded LibTorch work (a pass's CPU conv base goes there by itself: FillsCores), on
// torch_threads() intra-op threads; returns when it has, rethrowing what it threw. libgomp
// keeps a team's idle threads for each thread that ever ran a parallel region, and once those
// outnumber the cores it cuts every team's spin-wait to 100 rounds: a second team made every
// 32 px forward 10% slower (configure_threads, runner.h).
void run_on_core_thread(const std::function<void()>& job);

}  // namespace pipeline
