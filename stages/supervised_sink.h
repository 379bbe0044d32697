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
#include <cmath>
#include <fstream>
#include <memory>
#include <string>

#include <fmt/format.h>

#include "files.h"
#include "pipe/rng.h"
#include "pipe/stage.h"
#include "running_loss.h"
#include "script_export.h"
#include "torch_runtime.h"
#include "torch_util.h"

namespace pipeline::stages {

// The calling thread's intra-op threads for a scope (n > 0; 0 leaves them). OpenBLAS/ATen split
// products and convolution reductions differently at different thread counts (last-ulp
// differences in losses), so a trainer keeps a count of its own to make a seeded run's metrics
// identical whatever --threads says. torch_threads_here() sets it for this thread alone, in
// nanoseconds: at::set_num_threads also rebuilds caffe2's pthreadpool (a thread created and
// joined per call, 0.6-18 ms here depending on load), and two calls per batch made a cached
// head epoch 0.6-1.3 s at --threads 2 against 0.26 s at 1.
class IntraOpThreads {
 public:
  explicit IntraOpThreads(int n) : n_(n), prev_(n > 0 ? torch_threads_here(n) : 0) {}
  ~IntraOpThreads() {
    if (n_ > 0 && prev_ != n_) torch_threads_here(prev_);
  }
  IntraOpThreads(const IntraOpThreads&) = delete;
  IntraOpThreads& operator=(const IntraOpThreads&) = delete;

 private:
  int n_, prev_;
};

class SupervisedSink : public SinkStage, public ModelExport, public LearningRate, public RunningLoss {
 public:
  void begin_run(const RunInfo& run) override {
    class_names_ = run.classes;
    classes_ = static_cast<int64_t>(run.classes.size());
    if (classes_ < 2)
      throw std::runtime_error(fmt::format("{}: needs at least 2 classes, the run has {}", what_, classes_));
    gen_ = torchu::make_generator(hash64(fmt::format("{}/{}", run.seed, node_)));
    parallel_ = run.parallel;
    run_threads_ = run.threads;
    width_ = 0;
    best_.clear();
    start();
  }

  void begin_epoch(Split split, int) override {
    training_ = split == Split::train;
    step_ = 0;
    sums_.reset();
    running_loss_ = -1;
  }

  void consume(Batch& batch) override {
    if (batch.samples.empty()) return;
    const IntraOpThreads threads(training_threads());
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
    const int64_t n = static_cast<int64_t>(batch.size());
    shard_ = StepShard{n, 0, n};
    if (parallel_ && training_) {
      if (step_ >= parallel_->steps().size())
        throw std::logic_error(fmt::format("{}: more training batches than the pass's {} steps", what_, parallel_->steps().size()));
      shard_ = parallel_->steps()[step_++];
    }
    step(x, y, n);
  }

  SplitMetrics end_epoch() override {
    if (!parallel_) return sums_.metrics();
    // Every rank takes part in every global batch's all-reduce, rows or not.
    if (training_)
      while (step_ < parallel_->steps().size()) empty_step(parallel_->steps()[step_++]);
    double s[3] = {sums_.loss_sum(), static_cast<double>(sums_.correct()), static_cast<double>(sums_.count())};
    parallel_->all_reduce_sum(s, 3, "the metrics of " + what_);
    sums_ = MetricSum::of_sums(s[0], std::llround(s[1]), std::llround(s[2]));
    return sums_.metrics();
  }
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
  // A batch of no rows, as inputs() would make it (a rank's share of a tiny last batch).
  virtual torch::Tensor empty_input() { return torch::zeros({0, built_width()}); }
  // True when a training step's backward runs collectives of its own (synchronized
  // BatchNorm): a rank with no rows then runs backward too, to take part in them.
  virtual bool collective_backward() const { return false; }

  // This step's rows of the global batch: {n, 0, n} when the run is one process. A subclass
  // that draws per-row randomness (dropout) draws it for all `global` rows and keeps its own,
  // so that ranks draw what one process would.
  const StepShard& shard() const { return shard_; }
  DataParallel* parallel() const { return parallel_; }
  int run_threads() const { return run_threads_; }  // the run's threads (--threads), not training_threads()
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
      if (parallel_) all_reduce_gradients(n);
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

  // A global batch this rank has no rows of: the same draws and update as every other rank.
  void empty_step(const StepShard& s) {
    if (!built()) throw std::runtime_error(fmt::format("{}: a rank with no training rows in the first batch", what_));
    const IntraOpThreads threads(training_threads());
    shard_ = s;
    net().train();
    optimizer().zero_grad();
    if (collective_backward()) {
      forward(empty_input().to(device())).sum().backward();  // no rows: zero gradients
    } else {
      torch::NoGradGuard no_grad;
      forward(empty_input().to(device()));
    }
    all_reduce_gradients(0);
    optimizer().step();
  }

  // Each rank's gradient of its rows' mean loss, weighted by its share of the global batch
  // and summed over the ranks, is the gradient of the global batch's mean loss: the update
  // one process makes. One flat buffer, one all-reduce per step.
  void all_reduce_gradients(int64_t rows) {
    std::vector<torch::Tensor> params, flat;
    for (torch::Tensor& p : net().parameters()) {
      if (!p.requires_grad()) continue;
      if (!p.grad().defined()) p.mutable_grad() = torch::zeros_like(p);
      params.push_back(p);
      flat.push_back(p.grad().flatten().to(torch::kCPU, torch::kFloat));
    }
    torch::Tensor buf = torch::cat(flat).mul_(static_cast<double>(rows) / static_cast<double>(shard_.global)).contiguous();
    parallel_->all_reduce_sum(buf.data_ptr<float>(), static_cast<size_t>(buf.numel()), "the gradients of " + what_);
    int64_t at = 0;
    for (torch::Tensor& p : params) {
      torch::Tensor g = p.mutable_grad();
      g.copy_(buf.narrow(0, at, g.numel()).view_as(g));
      at += g.numel();
    }
  }

  std::string node_, what_;
  std::vector<std::string> class_names_;
  double lr_ = -1;  // set_lr's, -1: the optimizer's own
  int64_t classes_ = 0;
  int64_t width_ = 0;  // 0: not built yet
  at::Generator gen_;
  std::vector<torch::Tensor> best_;
  bool training_ = false;
  DataParallel* parallel_ = nullptr;
  int run_threads_ = 1;
  size_t step_ = 0;  // training steps taken in this pass (distributed runs)
  StepShard shard_;
  MetricSum sums_;
  std::atomic<double> running_loss_{-1};  // sums_'s loss, for a progress line on another thread
};

}  // namespace pipeline::stages
