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
// mark_best()/restore_best() keep and restore the best weights in memory; save(dir) writes
// the base only (torch::save of the nn::Sequential, on the CPU) to `out` (relative to the
// graph's directory; parent directories are created) and a copy to dir/base.pt.
// Params:
//   model: builtin:small_vgg | builtin:vgg16  (builtin:small_vgg)
//   classifier: gap|flatten (gap),  lr (1e-3),  weight_decay (0),  device (auto)
//   out: PATH (models/small_vgg_fmnist.pt),  rescale, mean, std
//
// Example config:
//   trainer: {stage: train_base, model: "builtin:small_vgg", out: ../models/small_vgg_fmnist.pt}
#include <filesystem>
#include <memory>

#include <fmt/format.h>

#include "builtin.h"
#include "torch_schemas.h"
#include "torch_util.h"

namespace pipeline::stages {
namespace {

using torchu::param;
namespace nn = torch::nn;

struct NetImpl : nn::Module {
  NetImpl(nn::Sequential b, bool gap) : base(register_module("base", std::move(b))), gap(gap) {}

  torch::Tensor pooled(const torch::Tensor& x) {
    torch::Tensor f = base->forward(x);
    return gap ? f.mean({2, 3}) : f.flatten(1);
  }
  torch::Tensor forward(const torch::Tensor& x) { return fc->forward(pooled(x)); }

  nn::Sequential base;
  nn::Linear fc{nullptr};
  bool gap;
};
TORCH_MODULE(Net);

class TrainBase : public SinkStage {
 public:
  TrainBase(const Params& p, const StageContext& ctx)
      : node_(ctx.node),
        what_(fmt::format("train_base '{}'", ctx.node)),
        model_(p.string("model")),
        gap_(p.string("classifier") == "gap"),
        lr_(p.number("lr")),
        weight_decay_(p.number("weight_decay")),
        device_(torchu::parse_device(p.string("device"))),
        norm_(torchu::image_norm(p, what_)),
        out_(torchu::resolve_path(p.string("out"), ctx.graph_dir)) {
    if (model_.rfind("builtin:", 0) != 0 || !torchu::is_builtin(model_.substr(8)))
      throw std::runtime_error(fmt::format("{}: model must be a builtin ({}), got '{}'", what_,
                                           "builtin:small_vgg, builtin:vgg16", model_));
  }

  void begin_run(const RunInfo& run) override {
    classes_ = static_cast<int64_t>(run.classes.size());
    if (classes_ < 2)
      throw std::runtime_error(fmt::format("{}: needs at least 2 classes, the run has {}", what_,
                                           classes_));
    gen_ = torchu::make_generator(hash64(fmt::format("{}/{}", run.seed, node_)));
    net_ = Net(torchu::make_builtin(model_.substr(8)), gap_);
    torchu::init_module(*net_, gen_);
    optimizer_.reset();
    best_.clear();
  }

  void begin_epoch(Split split, int) override {
    training_ = split == Split::train;
    sums_.reset();
  }

  void consume(Batch& batch) override {
    if (batch.samples.empty()) return;
    if (!net_) throw std::logic_error("train_base: consume() before begin_run()");
    const bool cuda = device_.is_cuda();
    torch::Tensor x = torchu::images_to_tensor(batch.samples, norm_, /*pinned=*/cuda);
    if (!optimizer_) build(x);
    x = x.to(device_, /*non_blocking=*/cuda);
    const std::vector<int64_t> labels = batch.labels();
    for (size_t i = 0; i < labels.size(); ++i)
      if (labels[i] < 0 || labels[i] >= classes_)
        throw std::runtime_error(fmt::format("{}: sample {} has label {} outside [0, {})", what_,
                                             batch.samples[i].describe(), labels[i], classes_));
    const torch::Tensor y = torch::tensor(labels, torch::kLong).to(device_);

    torch::Tensor logits, loss;
    if (training_) {
      net_->train();
      optimizer_->zero_grad();
      logits = net_->forward(x);
      loss = torch::cross_entropy_loss(logits, y);
      loss.backward();
      optimizer_->step();
    } else {
      net_->eval();
      torch::NoGradGuard no_grad;
      logits = net_->forward(x);
      loss = torch::cross_entropy_loss(logits, y);
    }
    torch::NoGradGuard no_grad;
    const auto n = static_cast<int64_t>(batch.size());
    sums_.add(loss.item<double>(), logits.argmax(1).eq(y).sum().item<int64_t>(), n);
  }

  SplitMetrics end_epoch() override { return sums_.metrics(); }

  void mark_best(int) override {
    if (optimizer_) best_ = torchu::snapshot(*net_);
  }
  void restore_best() override {
    if (optimizer_ && !best_.empty()) torchu::restore(*net_, best_);
  }

  void save(const std::string& dir) override {
    if (!optimizer_) return;  // never trained
    net_->to(torch::kCPU);
    const std::filesystem::path out(out_);
    if (out.has_parent_path()) std::filesystem::create_directories(out.parent_path());
    torchu::save_file(net_->base, out_);
    if (!dir.empty()) torchu::save_file(net_->base, dir + "/base.pt");
    net_->to(device_);
  }

 private:
  // First batch: size the classifier with a probe forward, then move to the device.
  void build(const torch::Tensor& x) {
    int64_t in = 0;
    {
      torch::NoGradGuard no_grad;
      net_->eval();
      in = net_->pooled(x.slice(0, 0, 1)).size(1);
    }
    net_->fc = net_->register_module("fc", nn::Linear(in, classes_));
    torchu::init_module(*net_->fc, gen_);
    net_->to(device_);
    optimizer_ = std::make_unique<torch::optim::Adam>(
        net_->parameters(), torch::optim::AdamOptions(lr_).eps(1e-7).weight_decay(weight_decay_));
  }

  std::string node_, what_, model_;
  bool gap_;
  double lr_, weight_decay_;
  torch::Device device_;
  torchu::ImageNorm norm_;
  std::string out_;

  int64_t classes_ = 0;
  at::Generator gen_;
  Net net_{nullptr};
  std::unique_ptr<torch::optim::Adam> optimizer_;
  std::vector<torch::Tensor> best_;

  bool training_ = false;
  MetricSum sums_;
};

}  // namespace

void register_train_base(Registry& r) {
  r.add(train_base_schema(), [](const Params& p, const StageContext& ctx) -> std::unique_ptr<Stage> {
    return std::make_unique<TrainBase>(p, ctx);
  });
}

}  // namespace pipeline::stages
