// Training controls of one sink across epochs: which epoch is best (train.checkpoint), when
// to stop (train.early_stopping) and the learning rate of each epoch (train.lr_schedule).
// Pure bookkeeping on validation metrics, as Keras' ModelCheckpoint, EarlyStopping and
// ReduceLROnPlateau keep it; the runner applies the decisions. State round-trips through
// JSON so that `pipe run --resume` continues exactly.
#pragma once

#include <limits>

#include <nlohmann/json.hpp>

#include "pipe/stage.h"
#include "spec.h"

namespace pipeline {

// The best value of a monitored metric so far, and the epochs since it last improved.
class MetricWatch {
 public:
  MetricWatch() = default;
  MetricWatch(MonitorRule rule, double min_delta) : rule_(rule), min_delta_(min_delta) {}
  // True when `m` improves on the best by more than min_delta (the first value always does).
  bool update(const SplitMetrics& m);
  int wait() const { return wait_; }
  void reset_wait() { wait_ = 0; }
  nlohmann::ordered_json state() const;
  void restore(const nlohmann::ordered_json& j);

 private:
  MonitorRule rule_;
  double min_delta_ = 0;
  double best_ = std::numeric_limits<double>::quiet_NaN();
  int wait_ = 0;
};

class Controls {
 public:
  // `base_lr`: the sink's configured learning rate (< 0: it has none to schedule).
  Controls(const TrainSpec& train, double base_lr);
  // The learning rate for `epoch` (1-based), before it runs; < 0 without one.
  double lr_for(int epoch) const;
  struct Verdict {
    bool best = false;  // keep this epoch's weights
    bool stop = false;  // early stopping: no more epochs
  };
  Verdict end_epoch(const SplitMetrics& validation);
  bool stopped() const { return stopped_; }
  // More epochs were granted (`--resume --set train.epochs=N`): train on after a stop.
  void resume_training();
  nlohmann::ordered_json state() const;
  void restore(const nlohmann::ordered_json& j);

 private:
  TrainSpec train_;
  double base_lr_, plateau_lr_;
  MetricWatch best_, stopping_, plateau_;
  bool stopped_ = false;
};

}  // namespace pipeline
