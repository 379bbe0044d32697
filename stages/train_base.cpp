// train_base: trains a builtin conv base from scratch, end to end with a linear classifier,
// and saves the base: this is how pipe makes its own pretrained backbone
// (graphs/pretrain.yaml -> models/small_vgg_fmnist.pt, later loaded by convbase `weights:`).
//
// Sink, serial. Consumes `image` batches (H x W x 3 uint8 RGB, normalized as convbase does:
// x = p * rescale, or (p * rescale - mean) / std) in sample order. Network: the builtin base
// -> global average pool (classifier: gap) or flatten (classifier: flatten) -> Linear(C),
// softmax cross-entropy, Adam (Keras' eps 1e-7). Train split: train mode (BatchNorm batch
// statistics), one step per batch; validation/test: eval mode, no grad. Initialization is
// drawn from the stage's own generator seeded by the run seed and node name (the base as
// torchvision's VGG, the classifier as Keras' Dense), so runs are reproducible.
// Training, evaluation, best-epoch weights and resume (`pipe run --resume`) come from
// SupervisedSink (supervised_sink.h), shared with dense_head. In a data-parallel run each
// training step's BatchNorms use the global batch's statistics (sync_batch_norm.h); save(dir) writes
// the base only (torch::save of the nn::Sequential, on the CPU) to `out` (relative to the
// graph's directory; parent directories are created) and a copy to dir/base.pt.
// Params:
//   model: builtin:small_vgg | builtin:vgg16  (builtin:small_vgg)
//   classifier: gap|flatten (gap),  lr (1e-3),  weight_decay (0),  device (auto)
//   out: PATH (models/small_vgg_fmnist.pt),  rescale, mean, std
//   threads: N (2): intra-op threads while training and evaluating, whatever --threads says,
//     because ATen/OpenBLAS split convolution reductions by thread count (measured: train
//     loss 1.71444 at 1 thread vs 1.71419 at 2); a fixed count makes runs repeat exactly.
//
// Example config:
//   trainer: {stage: train_base, model: "builtin:small_vgg", out: ../models/small_vgg_fmnist.pt}
#include <filesystem>
#include <memory>

#include <fmt/format.h>

#include "builtin.h"
#include "supervised_sink.h"
#include "sync_batch_norm.h"
#include "torch_schemas.h"
#include "torch_util.h"

namespace pipeline::stages {
namespace {

using namespace train_base;  // the parameters (torch_schemas.h)
namespace nn = torch::nn;

struct NetImpl : nn::Module {
  NetImpl(nn::Sequential b, bool gap) : base(register_module("base", std::move(b))), gap(gap) {}

  torch::Tensor pool(const torch::Tensor& f) const { return gap ? f.mean({2, 3}) : f.flatten(1); }
  torch::Tensor pooled(const torch::Tensor& x) { return pool(base->forward(x)); }
  torch::Tensor forward(const torch::Tensor& x) { return fc->forward(pooled(x)); }

  nn::Sequential base;
  nn::Linear fc{nullptr};
  bool gap;
};
TORCH_MODULE(Net);

class TrainBase : public SupervisedSink, public FillsCores {
 public:
  // A CPU training step on a team of more than one thread keeps the cores busy, as the conv
  // base's forward does: per-sample work (decode, augment) takes turns with it.
  bool fills_cores() const override { return device_.is_cpu() && threads_ > 1; }

  TrainBase(const Params& p, const StageContext& ctx)
      : SupervisedSink(ctx.node, "train_base"),
        model_(p.get(kModel)),
        gap_(p.get(kClassifier) == Classifier::gap),
        lr_(p.get(kLr)),
        weight_decay_(p.get(kWeightDecay)),
        device_(torchu::parse_device(p.get(kDevice))),
        norm_(torchu::image_norm(p, what())),
        out_(ctx.resolve(p.get(kOut))),
        threads_(static_cast<int>(p.get(kThreads))) {
    if (model_.rfind("builtin:", 0) != 0 || !torchu::is_builtin(model_.substr(8)))
      throw std::runtime_error(fmt::format("{}: model must be a builtin ({}), got '{}'", what(),
                                           "builtin:small_vgg, builtin:vgg16", model_));
  }

  void save(const std::string& dir) override {
    if (!built()) return;  // never trained
    net_->to(torch::kCPU);
    const std::filesystem::path out(out_);
    if (out.has_parent_path()) std::filesystem::create_directories(out.parent_path());
    torchu::save_file(net_->base, out_);
    if (!dir.empty()) torchu::save_file(net_->base, dir + "/base.pt");
    net_->to(device_);
  }

 private:
  void start() override {
    warn_if_oversubscribed();
    net_ = Net(torchu::make_builtin(model_.substr(8)), gap_);
    torchu::init_module(*net_, gen());
    optimizer_.reset();
  }
  // Its thread count is fixed (determinism), so it ignores the share of the cores that pipe
  // launch gives each process: two processes of 2 threads on 2 cores took 4.5x as long as
  // one (docs/distributed.md). Said once, by rank 0.
  void warn_if_oversubscribed() const {
    if (!parallel() || parallel()->rank() != 0 || threads_ <= run_threads()) return;
    std::fprintf(stderr,
                 "pipe: warning: %s trains on %d intra-op threads (its `threads`) in each of %d processes, and each "
                 "process's share of the cores is %d thread(s) (--threads, PIPE_THREADS): the processes will contend "
                 "for the cores; set its threads to %d\n",
                 what().c_str(), threads_, parallel()->world(), run_threads(), run_threads());
  }
  torch::Tensor inputs(const Batch& batch) override {
    torch::Tensor x = torchu::images_to_tensor(batch.samples, norm_, /*pinned=*/device_.is_cuda());
    empty_shape_ = {0, x.size(1), x.size(2), x.size(3)};
    return x;
  }
  torch::Tensor empty_input() override { return torch::zeros(empty_shape_); }
  // The classifier's input width: a probe forward of one image through the base (CPU).
  int64_t width(const torch::Tensor& x) override {
    torch::NoGradGuard no_grad;
    net_->eval();
    return net_->pooled(x.slice(0, 0, 1).to(torch::kCPU)).size(1);
  }
  void build(int64_t in) override {
    net_->fc = net_->register_module("fc", nn::Linear(in, classes()));
    torchu::init_module(*net_->fc, gen());
    net_->to(device_);
    optimizer_ = std::make_unique<torch::optim::Adam>(
        net_->parameters(), torch::optim::AdamOptions(lr_).eps(1e-7).weight_decay(weight_decay_));
  }
  torch::Tensor forward(const torch::Tensor& x) override {
    if (!parallel() || !net_->is_training()) return net_->forward(x);
    return net_->fc->forward(net_->pool(synced_base(x)));
  }
  // The base with each BatchNorm over the global batch (a data-parallel training step).
  torch::Tensor synced_base(torch::Tensor x) {
    const double share = static_cast<double>(shard().local) / static_cast<double>(shard().global);
    for (nn::AnyModule& layer : *net_->base) {
      if (auto* bn = layer.ptr()->as<nn::BatchNorm2d>())
        x = sync_batch_norm(x, *bn, *parallel(), share, what());
      else
        x = layer.forward(x);
    }
    return x;
  }
  bool collective_backward() const override { return parallel() != nullptr; }
  torch::Tensor loss(const torch::Tensor& logits, const torch::Tensor& y) const override {
    return torch::cross_entropy_loss(logits, y);
  }
  torch::nn::Module& net() override { return *net_; }
  double configured_lr() const override { return lr_; }
  torch::jit::Module script_net() override {
    ScriptWriter w("TrainBase");
    script_norm(w, norm_);
    script_layers(w, net_->base, "layer");
    w.line(gap_ ? "x = x.mean([2, 3])" : "x = torch.flatten(x, 1)");
    w.line(fmt::format("x = torch.linear(x, {}, {})", w.tensor("fc_weight", net_->fc->weight),
                       w.tensor("fc_bias", net_->fc->bias)));
    return w.finish();
  }
  torch::optim::Optimizer& optimizer() override { return *optimizer_; }
  torch::Device device() const override { return device_; }
  int training_threads() const override { return threads_; }

  std::string model_;
  bool gap_;
  double lr_, weight_decay_;
  torch::Device device_;
  torchu::ImageNorm norm_;
  std::string out_;
  int threads_;
  Net net_{nullptr};
  std::unique_ptr<torch::optim::Adam> optimizer_;
  std::vector<int64_t> empty_shape_{0, 3, 1, 1};  // a batch of no rows: set from every batch
};

}  // namespace

void register_train_base(Registry& r) {
  r.add<TrainBase>(train_base_schema());
}

}  // namespace pipeline::stages
