// The planner: (validated graph, split, epoch, cache state) -> the typed ops of each pass.
//
//   spec ──planner──▶ passes of ops: feed · load · map · batch · join · cache-read ·
//                     cache-write · sink
//
// It owns every decision about caches: where they sit (explicit `cache` nodes, plus an
// implicit memo of evaluation features before each sink that a batch stage would otherwise
// recompute every epoch), what their keys hold, and which nodes a hit cuts out of a pass.
// Plans are data: `pipe plan` prints them, tests read them, the runner binds them to stage
// instances and cache entries, and the executor runs the result.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "spec.h"

namespace pipeline {

// One memoized value: the output of `producer` on one split.
struct CachePoint {
  std::string name;   // op name: the cache node's, or "(memo)" for an implicit memo
  int node = -1;      // the explicit cache node, -1 for an implicit memo
  int producer = -1;  // the node whose output is stored
  Split split = Split::train;
  std::string root;   // cache directory
  std::string key;    // 32 hex digits
  std::string description;  // what went into the key, human-readable
  int views = 1;      // views stored per sample (K for a training `views: K` cache, else 1)
  bool present = false;     // complete in the store when the pass was planned
};

enum class OpKind { feed, load, cache_read, map, batch, join, cache_write, sink };
const char* op_kind_name(OpKind k);

struct PlanOp {
  OpKind kind = OpKind::map;
  std::string name;   // node name, or "(feed)", "(load)", a cache point's name
  std::string stage;  // stage name; "" for framework ops
  int node = -1;      // index into GraphSpec::nodes for stage ops
  int cache = -1;     // index into PassPlan::caches for cache ops
  std::vector<int> inputs;  // indices of earlier ops (the feed has none)
};

struct PassPlan {
  Split split = Split::train;
  int epoch = 0;          // 0 for extraction passes
  int extract_view = -1;  // >= 0: this pass fills view `extract_view` of caches[extract_cache]
  int extract_cache = -1;
  std::string purpose;    // "train", "validation", "test", "extract view 2/5"
  std::vector<CachePoint> caches;
  std::vector<PlanOp> ops;  // ops[0] is the feed; topological order
};

struct PlanContext {
  std::string source_identity;            // Source::identity()
  std::vector<std::string> fingerprints;  // per spec node: Stage::fingerprint()
  // Whether a cache point's entry is complete. The runner opens (and keeps) the entry; `pipe
  // plan` only looks. Null: nothing is present.
  std::function<bool(const CachePoint&)> present;
  // Fill every missing entry in extraction passes of its own, before the pass that reaches
  // the sinks (which then reads it), instead of writing it on the way: a distributed run
  // shards those passes by sample id.
  bool extract_first = false;
};

// The passes that run for (split, epoch), in order: extraction passes for a `views` cache
// that is missing, then the pass that reaches the sinks.
std::vector<PassPlan> plan_split(const GraphSpec& spec, Split split, int epoch, const PlanContext& ctx);

// The stored view a training sample reads in `epoch` from a cache keeping `views` views: 0
// below two views, else a uniform pick from the stream keyed on (seed, cache node, epoch, id).
int cache_view_for(uint64_t seed, const std::string& cache_node, int views, int epoch, int64_t id);

// Human-readable ops of one pass, one line each (what `pipe plan` prints).
std::string format_pass(const PassPlan& pass, const GraphSpec& spec);

}  // namespace pipeline
