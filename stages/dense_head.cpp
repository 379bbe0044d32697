// dense_head: the trainable classifier on top of frozen features (the book's densely
// connected classifier): Flatten -> Dense(hidden, ReLU) -> Dropout(dropout) -> Dense(1) +
// sigmoid / binary cross-entropy for two classes, Dense(C) + softmax / cross-entropy for more.
//
// Sink, serial. Consumes `features` in ordered batches: on the train split it is in train
// mode and takes one optimizer step per batch; on validation/test it is in eval mode under
// no-grad. end_epoch() returns the mean loss (of the per-batch losses, before each step on
// train, weighted by batch size) and the accuracy over the split's samples.
// The module is built on the first batch (the feature size is known then). Initialization
// is Keras' Dense (Glorot uniform, zero bias).
// Determinism: all of the head's randomness (init and dropout masks) comes from its own
// CPU generator, seeded in begin_run() from the run seed and the node name. The head is
// serial and the framework hands it batches in sample order, so the sequence of draws, and
// with it every loss, is the same in every run with the same seed, whatever the thread
// count; and no other stage drawing from LibTorch's global generator can perturb it.
// mark_best() keeps an in-memory copy of the weights, restore_best() puts it back;
// save(dir) writes dir/<node>.pt (torch::save of the head module: fc1.*, fc2.*): head.pt for a
// node named head, one file per head in a graph with several.
// Params:
//   hidden: N (256),  dropout: p in [0, 1) (0.5),  optimizer: rmsprop|adam|sgd (rmsprop),
//   lr (1e-4),  weight_decay (0),  momentum (0, sgd only)
//
// Example config:
//   head: {stage: dense_head, hidden: 256, dropout: 0.5, optimizer: rmsprop, lr: 2.0e-5}
#include <fstream>
#include <memory>

#include <fmt/format.h>

#include "builtin.h"
#include "torch_schemas.h"
#include "torch_util.h"

namespace pipeline::stages {
namespace {

using torchu::param;
namespace nn = torch::nn;

struct HeadImpl : nn::Module {
  HeadImpl(int64_t in, int64_t hidden, int64_t out, double dropout)
      : fc1(register_module("fc1", nn::Linear(in, hidden))),
        fc2(register_module("fc2", nn::Linear(hidden, out))),
        dropout(dropout) {}

  // Inverted dropout with masks drawn from `gen` (nn::Dropout would use the global one).
  torch::Tensor forward(const torch::Tensor& x, at::Generator& gen) {
    torch::Tensor h = torch::relu(fc1->forward(x.flatten(1)));
    if (is_training() && dropout > 0) {
      const double keep = 1.0 - dropout;
      h = h * torch::empty_like(h).bernoulli_(keep, gen).div_(keep);
    }
    return fc2->forward(h);
  }

  nn::Linear fc1, fc2;
  double dropout;
};
TORCH_MODULE(Head);

class DenseHead : public SinkStage {
 public:
  DenseHead(const Params& p, const StageContext& ctx)
      : node_(ctx.node),
        hidden_(p.integer("hidden")),
        dropout_(p.number("dropout")),
        optimizer_(p.string("optimizer")),
        lr_(p.number("lr")),
        weight_decay_(p.number("weight_decay")),
        momentum_(p.number("momentum")) {
    if (dropout_ >= 1.0)
      throw std::runtime_error(
          fmt::format("dense_head '{}': dropout must be in [0, 1), got {}", node_, dropout_));
  }

  void begin_run(const RunInfo& run) override {
    classes_ = static_cast<int64_t>(run.classes.size());
    if (classes_ < 2)
      throw std::runtime_error(fmt::format("dense_head '{}': needs at least 2 classes, the run has {}",
                                           node_, classes_));
    gen_ = torchu::make_generator(hash64(fmt::format("{}/{}", run.seed, node_)));
    head_ = nullptr;
    optimizer_impl_.reset();
    best_.clear();
  }

  void begin_epoch(Split split, int) override {
    training_ = split == Split::train;
    sums_.reset();
  }

  void consume(Batch& batch) override {
    if (batch.samples.empty()) return;
    // The head is tiny, and OpenBLAS/ATen split its products differently at different
    // thread counts (last-ulp differences in losses were measured here): one thread makes a
    // seeded run's metrics identical whatever --threads says.
    struct OneThread {
      int prev = at::get_num_threads();
      OneThread() { at::set_num_threads(1); }
      ~OneThread() { at::set_num_threads(prev); }
    } one_thread;
    if (!gen_.defined()) throw std::logic_error("dense_head: consume() before begin_run()");
    const Tensor features = batch.stack_features();
    const auto n = static_cast<int64_t>(batch.size());
    torch::Tensor x = torchu::to_torch(features).reshape({n, -1});
    std::vector<int64_t> labels = batch.labels();
    for (size_t i = 0; i < labels.size(); ++i)
      if (labels[i] < 0 || labels[i] >= classes_)
        throw std::runtime_error(fmt::format("dense_head '{}': sample {} has label {} outside [0, {})",
                                             node_, batch.samples[i].describe(), labels[i], classes_));
    if (!head_) build(x.size(1));
    if (x.size(1) != in_features_)
      throw std::runtime_error(fmt::format("dense_head '{}': sample {} has {} features, the head was "
                                           "built for {}", node_, batch.samples[0].describe(),
                                           x.size(1), in_features_));
    const torch::Tensor y = torch::tensor(labels, torch::kLong);

    torch::Tensor logits, loss;
    if (training_) {
      head_->train();
      optimizer_impl_->zero_grad();
      logits = head_->forward(x, gen_);
      loss = loss_of(logits, y);
      loss.backward();
      optimizer_impl_->step();
    } else {
      head_->eval();
      torch::NoGradGuard no_grad;
      logits = head_->forward(x, gen_);
      loss = loss_of(logits, y);
    }
    torch::NoGradGuard no_grad;
    const torch::Tensor pred =
        classes_ == 2 ? (logits.squeeze(1) > 0).to(torch::kLong) : logits.argmax(1);
    sums_.add(loss.item<double>(), pred.eq(y).sum().item<int64_t>(), n);
  }

  SplitMetrics end_epoch() override { return sums_.metrics(); }

  void mark_best(int) override {
    if (head_) best_ = torchu::snapshot(*head_);
  }
  void restore_best() override {
    if (head_ && !best_.empty()) torchu::restore(*head_, best_);
  }
  void save(const std::string& dir) override {
    if (head_ && !dir.empty()) torchu::save_file(head_, dir + "/" + node_ + ".pt");
  }

  bool can_resume() const override { return true; }
  void save_state(const std::string& dir) const override {
    write_file(dir + "/meta.txt", std::to_string(in_features_) + "\n");
    torchu::save_file(gen_.get_state(), dir + "/generator.pt");
    if (!head_) return;
    torchu::save_file(head_, dir + "/head.pt");
    torchu::save_file(*optimizer_impl_, dir + "/optimizer.pt");
    if (!best_.empty()) torchu::save_file(best_, dir + "/best.pt");
  }
  void load_state(const std::string& dir) override {
    int64_t in = 0;
    std::ifstream meta(dir + "/meta.txt");
    if (!(meta >> in)) throw std::runtime_error(fmt::format("dense_head '{}': no state in {}", node_, dir));
    if (in > 0) {
      build(in);  // draws init values from gen_; the saved generator state replaces it below
      torch::load(head_, dir + "/head.pt");
      torch::load(*optimizer_impl_, dir + "/optimizer.pt");
      best_.clear();
      if (std::ifstream(dir + "/best.pt").good()) torch::load(best_, dir + "/best.pt");
    }
    torch::Tensor state;
    torch::load(state, dir + "/generator.pt");
    gen_.set_state(state);
  }

 private:
  void build(int64_t in) {
    in_features_ = in;
    head_ = Head(in, hidden_, classes_ == 2 ? 1 : classes_, dropout_);
    torchu::init_module(*head_, gen_);
    auto params = head_->parameters();
    if (optimizer_ == "rmsprop") {
      // Keras RMSprop defaults: rho 0.9 (torch's alpha, whose default is 0.99), epsilon 1e-7.
      // torch adds eps outside the root, w -= lr * g / (sqrt(v) + eps), as Keras 2.0.8 (the
      // book's, eps 1e-8) did; tf.keras 2.x and Keras 3 add it inside, sqrt(v + eps). The two
      // differ only where v is small (v < ~1e-6): there Keras' effective step is smaller.
      optimizer_impl_ = std::make_unique<torch::optim::RMSprop>(
          params, torch::optim::RMSpropOptions(lr_).alpha(0.9).eps(1e-7).weight_decay(weight_decay_));
    } else if (optimizer_ == "adam") {  // Keras' epsilon 1e-7 (torch's default is 1e-8)
      optimizer_impl_ = std::make_unique<torch::optim::Adam>(
          params, torch::optim::AdamOptions(lr_).eps(1e-7).weight_decay(weight_decay_));
    } else {
      optimizer_impl_ = std::make_unique<torch::optim::SGD>(
          params, torch::optim::SGDOptions(lr_).momentum(momentum_).weight_decay(weight_decay_));
    }
  }

  torch::Tensor loss_of(const torch::Tensor& logits, const torch::Tensor& y) const {
    if (classes_ == 2)  // sigmoid + binary cross-entropy, fused for numerical stability
      return torch::binary_cross_entropy_with_logits(logits.squeeze(1), y.to(torch::kFloat));
    return torch::cross_entropy_loss(logits, y);  // softmax + cross-entropy
  }

  std::string node_;
  int64_t hidden_;
  double dropout_;
  std::string optimizer_;
  double lr_, weight_decay_, momentum_;

  int64_t classes_ = 0;
  int64_t in_features_ = 0;
  at::Generator gen_;
  Head head_{nullptr};
  std::unique_ptr<torch::optim::Optimizer> optimizer_impl_;
  std::vector<torch::Tensor> best_;

  bool training_ = false;
  MetricSum sums_;
};

}  // namespace

void register_dense_head(Registry& r) {
  r.add(dense_head_schema(), [](const Params& p, const StageContext& ctx) -> std::unique_ptr<Stage> {
    return std::make_unique<DenseHead>(p, ctx);
  });
}

}  // namespace pipeline::stages
