// Small stages and a synthetic source of the tests' own, so that executor and spec tests do
// not depend on images, LibTorch or the built-in stages.
#pragma once

#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <thread>

#include <fmt/format.h>

#include "pipe/registry.h"

namespace pipeline::test {

// N samples per split; sample i carries features [i] and label i % 2.
class CountSource : public Source {
 public:
  explicit CountSource(const Params& p) : n_(p.integer("n")) {}
  const std::vector<std::string>& classes() const override { return classes_; }
  int64_t size(Split s) const override { return s == Split::train ? n_ : n_ / 2; }
  Sample describe(Split split, int64_t index) const override {
    Sample s;
    s.id = index;
    s.label = static_cast<int>(index % 2);
    s.split = split;
    s.origin = fmt::format("count:{}#{}", split_name(split), index);
    return s;
  }
  void load(Sample& s) const override {
    const float v = static_cast<float>(s.id);
    s.features = Tensor::copy_of(&v, {1});
  }
  std::string identity() const override { return fmt::format("count:{}", n_); }

 private:
  int64_t n_;
  std::vector<std::string> classes_{"even", "odd"};
};

// Adds uniform noise from the sample's stream (random) and sleeps a per-sample time.
class NoiseStage : public MapStage {
 public:
  explicit NoiseStage(const Params& p) : amp_(p.number("amp")), sleep_us_(p.integer("sleep_us")), fail_on_(p.integer("fail_on")),
                                          bad_(p.integers("bad")) {}
  void process(Sample& s, Rng& rng) override {
    if (s.id == fail_on_) throw std::runtime_error("boom");
    for (int64_t b : bad_)
      if (s.id == b) throw SampleError("bad sample data");
    if (sleep_us_ > 0) std::this_thread::sleep_for(std::chrono::microseconds((s.id * 7919) % sleep_us_));
    const float v = s.features.ptr()[0] + static_cast<float>(rng.uniform(-amp_, amp_));
    s.features = Tensor::copy_of(&v, {1});
  }

 private:
  double amp_;
  int64_t sleep_us_, fail_on_;
  std::vector<int64_t> bad_;
};

// Doubles features, in batches of `batch`.
class DoubleBatch : public BatchStage {
 public:
  explicit DoubleBatch(const Params& p) : batch_(static_cast<int>(p.integer("batch"))) {}
  int batch_size() const override { return batch_; }
  void process(Batch& b) override {
    for (Sample& s : b.samples) {
      const float v = s.features.ptr()[0] * 2;
      s.features = Tensor::copy_of(&v, {1});
    }
  }

 private:
  int batch_;
};

// Records everything it sees; "loss" is the mean feature, "accuracy" the share of samples
// whose rounded feature parity matches the label.
class RecordSink;
struct Seen {
  Split split;
  int epoch;
  int64_t id;
  float value;
};
// What the most recently destroyed RecordSink saw (the runner owns and destroys its stages).
inline std::vector<Seen>& last_seen() {
  static std::vector<Seen> s;
  return s;
}

class RecordSink : public SinkStage {
 public:
  explicit RecordSink(const Params& p) : sleep_us_(p.integer("sleep_us")) {}
  ~RecordSink() override { last_seen() = seen; }
  void begin_epoch(Split, int) override { sum_ = 0; hits_ = 0; n_ = 0; }
  void consume(Batch& b) override {
    if (on_consume) on_consume(b);
    if (sleep_us_ > 0) std::this_thread::sleep_for(std::chrono::microseconds(sleep_us_));
    std::lock_guard<std::mutex> lock(mu);
    for (const Sample& s : b.samples) {
      seen.push_back({s.split, s.epoch, s.id, s.features.ptr()[0]});
      sum_ += s.features.ptr()[0];
      hits_ += (static_cast<int64_t>(std::lround(s.features.ptr()[0])) % 2) == s.label;
      ++n_;
      ++consumed;
    }
    batches.push_back(b.size());
  }
  SplitMetrics end_epoch() override {
    return {n_ ? sum_ / static_cast<double>(n_) : 0, n_ ? static_cast<double>(hits_) / static_cast<double>(n_) : 0, n_};
  }
  // Called first in consume(), outside the lock: a test holds the sink here (a latch) to
  // fill the pass up to its limit, or records what has arrived.
  std::function<void(const Batch&)> on_consume;
  std::mutex mu;
  std::vector<Seen> seen;
  std::vector<size_t> batches;
  std::atomic<int64_t> consumed{0};

 private:
  int64_t sleep_us_;
  double sum_ = 0;
  int64_t hits_ = 0, n_ = 0;
};

// Holds a test stage until a condition (a latch, no sleeps): wait(ready) returns when
// ready() is true after a notify(). A condition that never comes would hang the test: after
// 120 s wait() gives up and returns false, which the test checks.
struct Latch {
  std::mutex mu;
  std::condition_variable cv;
  void notify() {
    std::lock_guard<std::mutex> lock(mu);
    cv.notify_all();
  }
  bool wait(const std::function<bool()>& ready) {
    std::unique_lock<std::mutex> lock(mu);
    return cv.wait_for(lock, std::chrono::seconds(120), ready);
  }
};

class TestCache : public Stage {};

// A join: the sum of its inputs' features.
class SumJoin : public JoinStage {
 public:
  void process(std::vector<Sample>& inputs, Sample& out) override {
    float v = 0;
    for (const Sample& s : inputs) v += s.features.ptr()[0];
    out.features = Tensor::copy_of(&v, {1});
  }
};

inline ParamSpec int_param(const char* name, int64_t def, const char* doc = "test parameter") {
  return {name, ParamType::integer, doc, ParamValue{def}, 0, 1e9, {}, -1};
}

inline void register_test_stages() {
  static bool done = false;
  if (done) return;
  done = true;
  Registry& r = Registry::global();
  r.set_origin("tests");
  StageSchema src;
  src.name = "t_count";
  src.doc = "Synthetic source";
  src.produces = Payload::features;
  src.param(int_param("n", 100));
  r.add_source(src, [](const Params& p, const SourceContext&) { return std::make_unique<CountSource>(p); });

  StageSchema noise;
  noise.name = "t_noise";
  noise.kind = StageKind::map;
  noise.random = true;
  noise.consumes = noise.produces = Payload::features;
  noise.param({"amp", ParamType::number, "noise amplitude", ParamValue{0.25}, 0, 10, {}, -1});
  noise.param(int_param("sleep_us", 0));
  noise.param({"fail_on", ParamType::integer, "id that throws", ParamValue{int64_t{-1}}, -1, 1e9, {}, -1});
  noise.param({"bad", ParamType::integer_list, "ids with bad data", ParamValue{std::vector<int64_t>{}}, 0, 1e9, {}, -1});
  r.add(noise, [](const Params& p, const StageContext&) { return std::make_unique<NoiseStage>(p); });

  StageSchema plain = noise;
  plain.name = "t_map";
  plain.random = false;
  r.add(plain, [](const Params& p, const StageContext&) { return std::make_unique<NoiseStage>(p); });

  StageSchema dbl;
  dbl.name = "t_batch";
  dbl.kind = StageKind::batch_map;
  dbl.concurrency = Concurrency::serial;
  dbl.consumes = dbl.produces = Payload::features;
  dbl.param(int_param("batch", 8));
  r.add(dbl, [](const Params& p, const StageContext&) { return std::make_unique<DoubleBatch>(p); });

  StageSchema bytes;
  bytes.name = "t_needs_image";
  bytes.kind = StageKind::map;
  bytes.consumes = Payload::image;
  bytes.produces = Payload::features;
  r.add(bytes, [](const Params&, const StageContext&) -> std::unique_ptr<Stage> { return nullptr; });

  StageSchema sum;
  sum.name = "t_sum";
  sum.kind = StageKind::join;
  sum.consumes = sum.produces = Payload::features;
  r.add(sum, [](const Params&, const StageContext&) { return std::make_unique<SumJoin>(); });

  StageSchema sink;
  sink.name = "t_sink";
  sink.kind = StageKind::sink;
  sink.concurrency = Concurrency::serial;
  sink.consumes = Payload::features;
  sink.param(int_param("sleep_us", 0));
  r.add(sink, [](const Params& p, const StageContext&) { return std::make_unique<RecordSink>(p); });
  StageSchema train_sink = sink;
  train_sink.name = "t_train_sink";
  train_sink.train_only = true;
  r.add(train_sink, [](const Params& p, const StageContext&) { return std::make_unique<RecordSink>(p); });
  r.set_origin("built-in");
}

}  // namespace pipeline::test
