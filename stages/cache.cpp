// cache: memoizes everything upstream of it (the conv-base features) in the content-addressed
// feature store, so that later epochs and later runs skip the upstream nodes entirely.
//
// Kind `cache`, serial. Consumes and produces `features` (a float32 tensor per sample).
// The stage itself does nothing per sample: the framework cuts the graph at this node. Each
// split is keyed by a fingerprint of the data source's identity, every upstream node's stage
// name + params + Stage::fingerprint() (e.g. the model weights' hash) and the views stored.
// A split whose entry is complete is read back from the store (mmap, zero copy) and nothing
// upstream runs; otherwise the upstream runs once, its output is written through the store
// and committed when the split is complete (the store: pipeline/src/cache_store.h; the
// files: <root>/<fingerprint>/<split>.npy, numpy-readable, plus a <split>.json manifest).
// Samples that failed upstream under `on_error: skip` are recorded as skipped and stay
// absent on later reads.
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
#include "cache.h"

#include <algorithm>
#include <memory>

#include "builtin.h"
#include "cache_store.h"

namespace pipeline::stages {

CacheStage::CacheStage(const Params& p, const StageContext& ctx)
    : node_(ctx.node), dir_(p.string("dir")), views_(static_cast<int>(p.integer("views"))),
      seed_(ctx.seed) {
  if (!dir_.empty() && dir_[0] != '/' && dir_[0] != '~' && !ctx.graph_dir.empty() &&
      ctx.graph_dir != ".")
    dir_ = ctx.graph_dir + "/" + dir_;
}

std::string CacheStage::root() const { return resolve_cache_dir(dir_); }

int CacheStage::stored_views(Split split) const {
  return split == Split::train ? std::max(1, views_) : 1;
}

int CacheStage::view_for(int epoch, int64_t id) const {
  if (views_ <= 1) return 0;
  Rng rng = Rng::for_sample(seed_, node_, epoch, id, 0);
  return static_cast<int>(rng.below(views_));
}

void register_cache(Registry& r) {
  StageSchema s;
  s.name = "cache";
  s.doc = "Memoizes everything upstream (conv-base features) in a content-addressed on-disk "
          "store: once a split is complete, later epochs and runs read it back and the "
          "upstream nodes do not run. views: K keeps K augmented views per training sample.";
  s.kind = StageKind::cache;
  s.concurrency = Concurrency::serial;
  s.consumes = Payload::features;
  s.produces = Payload::features;

  ParamSpec dir;
  dir.name = "dir";
  dir.type = ParamType::string;
  dir.doc = "cache root (\"\": $PIPE_CACHE_DIR, else $XDG_CACHE_HOME/pipe, else ~/.cache/pipe)";
  dir.default_value = ParamValue{std::string()};
  s.param(dir);

  ParamSpec views;
  views.name = "views";
  views.type = ParamType::integer;
  views.doc = "0: plain memo of a deterministic upstream; K >= 1: keep K augmented views per "
              "training sample, each epoch reads one per sample";
  views.default_value = ParamValue{int64_t{0}};
  views.min = 0;
  views.max = 1024;
  s.param(views);

  s.example = "memo: {stage: cache}";
  r.add(std::move(s), [](const Params& p, const StageContext& ctx) -> std::unique_ptr<Stage> {
    return std::make_unique<CacheStage>(p, ctx);
  });
}

}  // namespace pipeline::stages
