// The supervised sink both training stages share (dense_head, train_base): one optimizer step
// per training batch, evaluation (no grad) on validation and test, sample-weighted loss and
// accuracy per pass, the best epoch's weights kept in memory, and the state `pipe run
// --resume` needs to continue exactly (network, optimizer, best weights, generator).
//
// A subclass supplies the network: it builds it, lazily, for the input width the first batch
// shows (`width`), and says how a batch becomes an input tensor, how logits come out of it and
// how they become a loss and predictions. Randomness (initialization, dropout) comes from
// `gen()`, seeded from the run seed and the node name.
#pragma once

#include <atomic>
#include <fstream>
#include <memory>
#include <string>

#include <fmt/format.h>

#include "files.h"
#include "pipe/rng.h"
#include "pipe/stage.h"
#include "running_loss.h"
#include "script_export.h"
#include "torch_util.h"

namespace pipeline::stages {

class SupervisedSink : public SinkStage, public ModelExport, public LearningRate, public RunningLoss {
 public:
  void begin_run(const RunInfo& run) override {
    class_names_ = run.classes;
    classes_ = static_cast<int64_t>(run.classes.size());
    if (classes_ < 2)
      throw std::runtime_error(fmt::format("{}: needs at least 2 classes, the run has {}", what_, classes_));
    gen_ = torchu::make_generator(hash64(fmt::format("{}/{}", run.seed, node_)));
    width_ = 0;
    best_.clear();
    start();
  }

  void begin_epoch(Split split, int) override {
    training_ = split == Split::train;
    sums_.reset();
    running_loss_ = -1;
  }

  void consume(Batch& batch) override {
    if (batch.samples.empty()) return;
    // OpenBLAS/ATen split products and convolution reductions differently at different
    // thread counts (last-ulp differences in losses), so a subclass trains at a thread count
    // of its own to keep a seeded run's metrics identical whatever --threads says.
    const int prev = at::get_num_threads(), fixed = training_threads();
    if (fixed > 0) at::set_num_threads(fixed);
    struct Restore {
      int n;
      bool on;
      ~Restore() {
        if (on) at::set_num_threads(n);
      }
    } restore{prev, fixed > 0};
    if (!gen_.defined()) throw std::logic_error(fmt::format("{}: consume() before begin_run()", what_));
    torch::Tensor x = inputs(batch);
    const std::vector<int64_t> labels = batch.labels();
    for (size_t i = 0; i < labels.size(); ++i)
      if (labels[i] < 0 || labels[i] >= classes_)
        throw std::runtime_error(fmt::format("{}: sample {} has label {} outside [0, {})", what_,
                                             batch.samples[i].describe(), labels[i], classes_));
    if (width_ == 0) {
      build(width_ = width(x));
      apply_lr();
    }
    check(x, batch);
    const bool cuda = device().is_cuda();
    x = x.to(device(), /*non_blocking=*/cuda);
    const torch::Tensor y = torch::tensor(labels, torch::kLong).to(device());
    step(x, y, static_cast<int64_t>(batch.size()));
  }

  SplitMetrics end_epoch() override { return sums_.metrics(); }
  double running_loss() const override { return running_loss_.load(std::memory_order_relaxed); }

  void mark_best(int) override {
    if (width_ > 0) best_ = torchu::snapshot(net());
  }
  void restore_best() override {
    if (width_ > 0 && !best_.empty()) torchu::restore(net(), best_);
  }

  // model.pt: the path's stages, then the network with its best-epoch weights (restored
  // before the test pass).
  std::string export_model(const std::vector<PathStep>& upstream, const std::string& file) override {
    if (!built()) return "it was never trained";
    return write_model(upstream, script_net(), class_names_, file);
  }

  // The run's schedule (train.lr_schedule), applied to every parameter group; kept until the
  // optimizer exists when it is built lazily on the first batch.
  void set_lr(double lr) override {
    lr_ = lr;
    if (built()) apply_lr();
  }

  bool can_resume() const override { return true; }
  void save_state(const std::string& dir) const override {
    write_file(dir + "/meta.txt", std::to_string(width_) + "\n");
    torchu::save_file(gen_.get_state(), dir + "/generator.pt");
    if (width_ == 0) return;
    torch::serialize::OutputArchive net_archive;
    const_cast<SupervisedSink*>(this)->net().save(net_archive);
    std::ostringstream out;
    net_archive.save_to(out);
    write_file(dir + "/net.pt", out.str());
    torchu::save_file(const_cast<SupervisedSink*>(this)->optimizer(), dir + "/optimizer.pt");
    if (!best_.empty()) torchu::save_file(best_, dir + "/best.pt");
  }
  void load_state(const std::string& dir) override {
    int64_t width = 0;
    std::ifstream meta(dir + "/meta.txt");
    if (!(meta >> width)) throw std::runtime_error(fmt::format("{}: no state in {}", what_, dir));
    if (width > 0) {
      build(width_ = width);  // draws init values from gen_; the saved generator state replaces it below
      torch::serialize::InputArchive net_archive;
      net_archive.load_from(dir + "/net.pt", device());
      net().load(net_archive);
      torch::load(optimizer(), dir + "/optimizer.pt");
      best_.clear();
      if (std::ifstream(dir + "/best.pt").good()) torch::load(best_, dir + "/best.pt");
    }
    torch::Tensor state;
    torch::load(state, dir + "/generator.pt");
    gen_.set_state(state);
  }

 protected:
  SupervisedSink(std::string node, std::string stage) : node_(std::move(node)), what_(fmt::format("{} '{}'", stage, node_)) {}

  // At begin_run, after the generator is seeded (a network built up front draws from it here).
  virtual void start() {}
  // The batch as the network's input, on the CPU.
  virtual torch::Tensor inputs(const Batch& batch) = 0;
  // What the network is built for, read from the first batch's input (e.g. its feature width).
  virtual int64_t width(const torch::Tensor& x) = 0;
  // Builds the network and optimizer for `width`, on device(); init draws from gen().
  virtual void build(int64_t width) = 0;
  // Refuses a batch the built network cannot take (message naming the sample).
  virtual void check(const torch::Tensor& /*x*/, const Batch& /*batch*/) {}
  virtual torch::Tensor forward(const torch::Tensor& x) = 0;
  virtual torch::Tensor loss(const torch::Tensor& logits, const torch::Tensor& y) const = 0;
  virtual torch::Tensor predict(const torch::Tensor& logits) const { return logits.argmax(1); }
  virtual torch::nn::Module& net() = 0;
  // The built network in evaluation mode as TorchScript (script_export.h), returning logits.
  virtual torch::jit::Module script_net() = 0;
  virtual torch::optim::Optimizer& optimizer() = 0;
  virtual torch::Device device() const { return torch::kCPU; }
  // Intra-op threads for consume(), independent of --threads; 0 = the run's.
  virtual int training_threads() const { return 0; }

  bool built() const { return width_ > 0; }
  int64_t classes() const { return classes_; }
  int64_t built_width() const { return width_; }
  at::Generator& gen() { return gen_; }
  const std::string& node() const { return node_; }
  const std::string& what() const { return what_; }

 private:
  void apply_lr() {
    if (lr_ < 0) return;
    for (auto& group : optimizer().param_groups()) group.options().set_lr(lr_);
  }

  void step(const torch::Tensor& x, const torch::Tensor& y, int64_t n) {
    torch::Tensor logits, l;
    if (training_) {
      net().train();
      optimizer().zero_grad();
      logits = forward(x);
      l = loss(logits, y);
      l.backward();
      optimizer().step();
    } else {
      net().eval();
      torch::NoGradGuard no_grad;
      logits = forward(x);
      l = loss(logits, y);
    }
    torch::NoGradGuard no_grad;
    sums_.add(l.item<double>(), predict(logits).eq(y).sum().item<int64_t>(), n);
    running_loss_.store(sums_.metrics().loss, std::memory_order_relaxed);
  }

  std::string node_, what_;
  std::vector<std::string> class_names_;
  double lr_ = -1;  // set_lr's, -1: the optimizer's own
  int64_t classes_ = 0;
  int64_t width_ = 0;  // 0: not built yet
  at::Generator gen_;
  std::vector<torch::Tensor> best_;
  bool training_ = false;
  MetricSum sums_;
  std::atomic<double> running_loss_{-1};  // sums_'s loss, for a progress line on another thread
};

}  // namespace pipeline::stages
