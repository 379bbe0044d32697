// cache: memoizes everything upstream of it in the content-addressed feature store, so that
// later epochs and later runs skip the upstream nodes entirely.
//
// A framework node, not a stage: it does no per-sample work. The planner (plan.h) places
// it, keys it (the data source's identity and listing, every upstream node's stage, params,
// fingerprint and wiring, and for random upstream nodes their names, the run seed and the
// views kept) and cuts the graph at it; the runner binds the reads and writes to the store
// (cache_store.h: <root>/<key>/<split>.npy, numpy-readable, plus a <split>.json manifest).
// Samples that failed upstream are recorded with their node and reason; a hit replays them
// under the graph's on_error policy exactly as the miss did.
// Params:
//   dir: PATH    cache root; "" = $PIPE_CACHE_DIR, else $XDG_CACHE_HOME/pipe, else
//                ~/.cache/pipe (relative paths resolve against the graph's directory)
//   views: K     0 (default): plain memo; the upstream must be deterministic (a random stage
//                upstream is a validation error: it would freeze one augmented view).
//                K >= 1: the training split keeps K augmented views per sample (view v is
//                computed with the random streams of view v), and every epoch each sample
//                reads one of them, picked uniformly by the stream keyed on (seed, node,
//                epoch, id). Validation and test are never augmented and keep one view.
//
// Example config:
//   memo: {stage: cache}
//   views: {stage: cache, views: 8, dir: /scratch/pipe-cache}
#include <memory>

#include "pipe/registry.h"

namespace pipeline {

namespace {
class CacheNode : public CacheStage {};

const auto kDir =
    param::string("dir", "", "cache root (\"\": $PIPE_CACHE_DIR, else $XDG_CACHE_HOME/pipe, else ~/.cache/pipe)").path();
const auto kViews = param::integer("views", 0,
                                   "0: plain memo of a deterministic upstream; K >= 1: keep K augmented views per "
                                   "training sample, each epoch reads one per sample")
                        .range(0, 1024);
}  // namespace

void register_framework_stages(Registry& r) {
  r.add<CacheNode>(Schema("cache", "Memoizes everything upstream (conv-base features) in a content-addressed on-disk "
                                   "store: once a split is complete, later epochs and runs read it back and the "
                                   "upstream nodes do not run. views: K keeps K augmented views per training sample.")
                       .consumes(Payload::features)
                       .produces(Payload::features)
                       .param(kDir)
                       .param(kViews)
                       .example("memo: {stage: cache}"));
}

}  // namespace pipeline
