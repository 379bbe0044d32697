#include "controls.h"

#include <cmath>

namespace pipeline {

bool MetricWatch::update(const SplitMetrics& m) {
  const double v = rule_.metric == Monitor::val_acc ? m.accuracy : m.loss;
  const bool better = std::isnan(best_) || (rule_.maximize ? v > best_ + min_delta_ : v < best_ - min_delta_);
  if (better) {
    best_ = v;
    wait_ = 0;
  } else {
    ++wait_;
  }
  return better;
}

nlohmann::ordered_json MetricWatch::state() const {
  return {{"best", std::isnan(best_) ? nlohmann::ordered_json() : nlohmann::ordered_json(best_)}, {"wait", wait_}};
}

void MetricWatch::restore(const nlohmann::ordered_json& j) {
  best_ = j.at("best").is_null() ? std::numeric_limits<double>::quiet_NaN() : j.at("best").get<double>();
  wait_ = j.at("wait").get<int>();
}

Controls::Controls(const TrainSpec& train, double base_lr)
    : train_(train),
      base_lr_(base_lr),
      plateau_lr_(base_lr),
      // The best epoch: any strict improvement (ModelCheckpoint(save_best_only=True)).
      best_(train.best, 0),
      stopping_(train.early_stopping.rule, train.early_stopping.min_delta),
      plateau_(train.lr_schedule.rule, 0) {}

double Controls::lr_for(int epoch) const {
  if (base_lr_ < 0) return -1;
  const LrSchedule& s = train_.lr_schedule;
  switch (s.kind) {
    case LrSchedule::Kind::none: return base_lr_;
    case LrSchedule::Kind::step: return base_lr_ * std::pow(s.gamma, (epoch - 1) / s.step_size);
    case LrSchedule::Kind::cosine: {
      const int span = std::max(1, train_.epochs - 1);
      const double t = std::min(1.0, static_cast<double>(epoch - 1) / span);
      return s.min_lr + (base_lr_ - s.min_lr) * 0.5 * (1 + std::cos(M_PI * t));
    }
    case LrSchedule::Kind::plateau: return plateau_lr_;
  }
  return base_lr_;
}

Controls::Verdict Controls::end_epoch(const SplitMetrics& validation) {
  Verdict v;
  v.best = best_.update(validation);
  const LrSchedule& s = train_.lr_schedule;
  if (s.kind == LrSchedule::Kind::plateau && !plateau_.update(validation) && plateau_.wait() >= s.patience) {
    plateau_lr_ = std::max(s.min_lr, plateau_lr_ * s.factor);
    plateau_.reset_wait();
  }
  const EarlyStopping& e = train_.early_stopping;
  if (e.enabled && !stopping_.update(validation) && stopping_.wait() >= e.patience) stopped_ = true;
  v.stop = stopped_;
  return v;
}

void Controls::resume_training() {
  stopped_ = false;
  stopping_.reset_wait();
}

nlohmann::ordered_json Controls::state() const {
  return {{"best", best_.state()}, {"stopping", stopping_.state()}, {"plateau", plateau_.state()},
          {"plateau_lr", plateau_lr_}, {"stopped", stopped_}};
}

void Controls::restore(const nlohmann::ordered_json& j) {
  best_.restore(j.at("best"));
  stopping_.restore(j.at("stopping"));
  plateau_.restore(j.at("plateau"));
  plateau_lr_ = j.at("plateau_lr").get<double>();
  stopped_ = j.at("stopped").get<bool>();
}

}  // namespace pipeline
