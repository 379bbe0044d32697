// The `cache` node as the executor sees it: its parameters, resolved. The stage does no
// per-sample work itself; the executor cuts the graph at it and reads or fills the feature
// store (pipeline/src/cache_store.h). dynamic_cast a node's Stage* to CacheStage to get here.
#pragma once

#include <cstdint>
#include <string>

#include "pipe/sample.h"
#include "pipe/stage.h"

namespace pipeline::stages {

class CacheStage : public Stage {
 public:
  CacheStage(const Params& params, const StageContext& ctx);

  // The `dir` parameter: "" (the default location) or a path; a relative path is resolved
  // against the graph file's directory, "~/" against $HOME.
  const std::string& dir() const { return dir_; }
  // The cache root to open a FeatureCache on: resolve_cache_dir(dir()).
  std::string root() const;
  // The `views` parameter: 0 = plain memo, K >= 1 = K augmented views per training sample.
  int views() const { return views_; }
  // Views the store keeps per sample of `split`: max(1, views()) for train, 1 for
  // validation and test (never augmented). Put it in the split's fingerprint.
  int stored_views(Split split) const;
  // The stored view that epoch `epoch` (1-based) reads for training sample `id`: 0 when
  // fewer than two views are stored, else a uniform pick in [0, K) from the counter-based
  // stream keyed on (run seed, this node, epoch, id): a pure function of those, different
  // per sample and per epoch.
  int view_for(int epoch, int64_t id) const;
  const std::string& node() const { return node_; }

 private:
  std::string node_;
  std::string dir_;
  int views_ = 0;
  uint64_t seed_ = 0;
};

}  // namespace pipeline::stages
