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
// Training, evaluation, best-epoch weights and resume come from SupervisedSink
// (supervised_sink.h), shared with train_base; save(dir) writes dir/<node>.pt (torch::save of the head module: fc1.*, fc2.*): head.pt for a
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
#include "supervised_sink.h"
#include "torch_schemas.h"
#include "torch_util.h"

namespace pipeline::stages {
namespace {

using namespace dense_head;  // the parameters (torch_schemas.h)
namespace nn = torch::nn;

struct HeadImpl : nn::Module {
  HeadImpl(int64_t in, int64_t hidden, int64_t out, double dropout)
      : fc1(register_module("fc1", nn::Linear(in, hidden))),
        fc2(register_module("fc2", nn::Linear(hidden, out))),
        dropout(dropout) {}

  // Inverted dropout with masks drawn from `gen` (nn::Dropout would use the global one). The
  // mask is drawn for the whole global batch (s.global rows) and this rank's rows from s.offset kept,
  // so a distributed run draws what one process draws.
  torch::Tensor forward(const torch::Tensor& x, at::Generator& gen, const StepShard& s) {
    torch::Tensor h = torch::relu(fc1->forward(x.flatten(1)));
    if (is_training() && dropout > 0) {
      const double keep = 1.0 - dropout;
      torch::Tensor mask = torch::empty({s.global, h.size(1)}, h.options()).bernoulli_(keep, gen).div_(keep);
      h = h * (s.global == h.size(0) ? mask : mask.narrow(0, s.offset, h.size(0)));
    }
    return fc2->forward(h);
  }

  nn::Linear fc1, fc2;
  double dropout;
};
TORCH_MODULE(Head);

class DenseHead : public SupervisedSink {
 public:
  DenseHead(const Params& p, const StageContext& ctx)
      : SupervisedSink(ctx.node, "dense_head"),
        hidden_(p.get(kHidden)),
        dropout_(p.get(kDropout)),
        optimizer_(p.get(kOptimizer)),
        lr_(p.get(kLr)),
        weight_decay_(p.get(kWeightDecay)),
        momentum_(p.get(kMomentum)) {
    if (dropout_ >= 1.0)
      throw std::runtime_error(fmt::format("{}: dropout must be in [0, 1), got {}", what(), dropout_));
  }

  void save(const std::string& dir) override {
    if (built() && !dir.empty()) torchu::save_file(head_, dir + "/" + safe_file_name(node(), kMaxFileName - 3) + ".pt");
  }

 private:
  void start() override { head_ = nullptr; }
  torch::Tensor inputs(const Batch& batch) override {
    return torchu::to_torch(batch.stack_features()).reshape({static_cast<int64_t>(batch.size()), -1});
  }
  int64_t width(const torch::Tensor& x) override { return x.size(1); }
  void check(const torch::Tensor& x, const Batch& batch) override {
    if (x.size(1) != built_width())
      throw std::runtime_error(fmt::format("{}: sample {} has {} features, the head was built for {}", what(),
                                           batch.samples[0].describe(), x.size(1), built_width()));
  }
  torch::Tensor forward(const torch::Tensor& x) override { return head_->forward(x, gen(), shard()); }
  torch::Tensor loss(const torch::Tensor& logits, const torch::Tensor& y) const override {
    if (classes() == 2)  // sigmoid + binary cross-entropy, fused for numerical stability
      return torch::binary_cross_entropy_with_logits(logits.squeeze(1), y.to(torch::kFloat));
    return torch::cross_entropy_loss(logits, y);  // softmax + cross-entropy
  }
  torch::Tensor predict(const torch::Tensor& logits) const override {
    return classes() == 2 ? (logits.squeeze(1) > 0).to(torch::kLong) : logits.argmax(1);
  }
  torch::nn::Module& net() override { return *head_; }
  double configured_lr() const override { return lr_; }
  torch::jit::Module script_net() override {
    ScriptWriter w("DenseHead");
    const auto linear = [&](const nn::Linear& fc, const std::string& name) {
      return fmt::format("torch.linear(x, {}, {})", w.tensor(name + "_weight", fc->weight), w.tensor(name + "_bias", fc->bias));
    };
    w.line("x = torch.flatten(x, 1)");
    w.line(fmt::format("x = torch.relu({})", linear(head_->fc1, "fc1")));  // dropout: identity at evaluation
    w.line(fmt::format("x = {}", linear(head_->fc2, "fc2")));
    return w.finish();
  }
  torch::optim::Optimizer& optimizer() override { return *optimizer_impl_; }
  // The head is tiny, and OpenBLAS/ATen split its products differently at different thread
  // counts (last-ulp differences in losses were measured here).
  int training_threads() const override { return 1; }

  void build(int64_t in) override {
    head_ = Head(in, hidden_, classes() == 2 ? 1 : classes(), dropout_);
    torchu::init_module(*head_, gen());
    auto params = head_->parameters();
    if (optimizer_ == Optimizer::rmsprop) {
      // Keras RMSprop defaults: rho 0.9 (torch's alpha, whose default is 0.99), epsilon 1e-7.
      // torch adds eps outside the root, w -= lr * g / (sqrt(v) + eps), as Keras 2.0.8 (the
      // book's, eps 1e-8) did; tf.keras 2.x and Keras 3 add it inside, sqrt(v + eps). The two
      // differ only where v is small (v < ~1e-6): there Keras' effective step is smaller.
      optimizer_impl_ = std::make_unique<torch::optim::RMSprop>(
          params, torch::optim::RMSpropOptions(lr_).alpha(0.9).eps(1e-7).weight_decay(weight_decay_));
    } else if (optimizer_ == Optimizer::adam) {  // Keras' epsilon 1e-7 (torch's default is 1e-8)
      optimizer_impl_ = std::make_unique<torch::optim::Adam>(
          params, torch::optim::AdamOptions(lr_).eps(1e-7).weight_decay(weight_decay_));
    } else {
      optimizer_impl_ = std::make_unique<torch::optim::SGD>(
          params, torch::optim::SGDOptions(lr_).momentum(momentum_).weight_decay(weight_decay_));
    }
  }

  int64_t hidden_;
  double dropout_;
  Optimizer optimizer_;
  double lr_, weight_decay_, momentum_;
  Head head_{nullptr};
  std::unique_ptr<torch::optim::Optimizer> optimizer_impl_;
};

}  // namespace

void register_dense_head(Registry& r) {
  r.add<DenseHead>(dense_head_schema());
}

}  // namespace pipeline::stages
