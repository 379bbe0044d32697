// convbase: a frozen convolutional base: a batch of RGB images -> per-sample feature maps.
//
// Per-batch map, serial (it owns the device and uses LibTorch's intra-op threads), no
// randomness. Consumes `image` (H x W x 3 uint8 RGB, the same size across a batch);
// produces `features`: one float32 (C, H', W') tensor per sample, and clears `image`.
// The model is frozen: eval() (BatchNorm uses its running statistics, dropout is off),
// requires_grad(false) on every parameter, and the forward runs under torch::InferenceMode.
// Pixels become x = p * rescale, or (p * rescale - mean[c]) / std[c] when mean/std are given.
// On CUDA (a runtime path: pipe also builds against a CPU-only LibTorch) the host packs raw
// uint8 pixels into pinned memory, a quarter of float32's bytes, and the device converts and
// normalizes them into channels-last float, the layout cuDNN's tensor-core kernels want (the
// weights are made channels-last too); cuDNN autotuning is on. A batch goes in chunks whose
// copies are all non-blocking, so packing and uploading chunk k+1 and copying chunk k-1's
// features back into pinned memory overlap chunk k's forward; the host waits once per batch,
// for its stream to drain after the last copy back. `bf16: true` runs the CUDA forward under
// autocast to bfloat16, or to float16 on a device without bfloat16 convolutions (before
// compute capability 8); it is ignored on the CPU. The fingerprint names the CUDA forward.
// `optimize: auto` (the default) runs the base on the CPU as frozen TorchScript passed
// through optimize_for_inference, what `torch.jit.freeze` + `torch.jit.optimize_for_inference`
// give a PyTorch user: BatchNorm folded into the convolutions, conv+ReLU fused, oneDNN
// weights prepacked (measured in `pipe bench`). Its features differ from eager in the last
// bits, so the fingerprint says which forward made them: a cache never mixes the two.
// fingerprint() identifies the weights by content (FNV-1a of the weights or TorchScript
// file) so that a cache keyed on it is invalidated by any change of the weights.
// Params:
//   model: builtin:vgg16 | builtin:small_vgg | PATH   architecture, or a TorchScript file
//   weights: PATH     weights for a builtin: a torch::save()d module (train_base writes them) or a
//                     PyTorch state dict such as torchvision's vgg16-397923af.pth (checked
//                     tensor by tensor); "" = random init, tests only
//   init_seed: N      seed of the random init when weights is ""
//   device: auto|cpu|cuda|cuda:N,  batch: N (0 = chosen for the device),  rescale, mean, std,
//   bf16: bool,  optimize: auto|off
//
// Example config:
//   features: {stage: convbase, model: "builtin:small_vgg",
//              weights: ../models/small_vgg_fmnist.pt, device: auto}
#include <algorithm>
#include <filesystem>
#include <optional>

#include <ATen/autocast_mode.h>
#include <ATen/detail/CUDAHooksInterface.h>
#include <c10/core/DeviceGuard.h>
#include <c10/core/impl/VirtualGuardImpl.h>
#include <fmt/format.h>
#include <torch/script.h>

#include "builtin.h"
#include "cache_store.h"  // hash_file: XXH3-128 of the weights
#include "script_export.h"
#include "torch_runtime.h"
#include "torch_schemas.h"
#include "torch_util.h"

namespace pipeline::stages {
namespace {

using namespace convbase;  // the parameters (torch_schemas.h)

// First line of a (often multi-line, stack-trace carrying) c10 error message.
std::string first_line(const std::string& s) { return s.substr(0, s.find('\n')); }

// batch: 0. On the CPU, images/s of the conv base is flat from batch ~16 up, and 64 keeps a
// batch's activations in a few tens of MB. A GPU needs larger batches to fill its SMs and to
// amortize the launch and copy latency of each forward; 256 is what VGG16 at 150 px (1.5 GB
// of activations in its first block at fp32) still fits on any current data-centre card.
int choose_batch(int requested, const torch::Device& device) {
  if (requested > 0) return requested;
  return device.is_cuda() ? 256 : 64;
}

class ConvBase : public BatchStage, public FillsCores, public Scriptable {
 public:
  ConvBase(const Params& p, const StageContext& ctx)
      : what_(fmt::format("convbase '{}'", ctx.node)),
        device_(torchu::parse_device(p.get(kDevice))),
        norm_(torchu::image_norm(p, what_)),
        batch_(choose_batch(static_cast<int>(p.get(kBatch)), device_)),
        bf16_(p.get(kBf16)) {
    load_model(p, ctx);
    // CUDA keeps the eager forward: the frozen path is measured and tested on the CPU only.
    if (device_.is_cuda()) prepare_cuda();
    else if (p.get(kOptimize) == Optimize::automatic) optimize();
  }

  int batch_size() const override { return batch_; }

  // On the CPU the forward runs on LibTorch's whole intra-op team: the executor holds the
  // per-sample stages back while it runs (FillsCores). A team of one leaves cores to them.
  bool fills_cores() const override { return device_.is_cpu() && torch_threads() > 1; }

  // For model.pt: the normalization and the network, in float32 on the CPU (bf16 is a
  // CUDA speed option, not part of what the base computes).
  torch::jit::Module script() const override {
    ScriptWriter w("ConvBase");
    script_norm(w, norm_);
    if (builtin_) script_layers(w, builtin_, "layer");
    else w.line(fmt::format("x = {}(x)", w.module("net", *script_)));
    return w.finish();
  }
  std::string fingerprint() const override { return fingerprint_; }

  void process(Batch& batch) override {
    if (batch.samples.empty()) return;
    torch::Tensor y;
    if (device_.is_cuda()) {
      y = process_cuda(batch.samples);
    } else {
      torch::Tensor x = torchu::images_to_tensor(batch.samples, norm_);
      torch::InferenceMode inference;
      y = forward(x).to(torch::kCPU, torch::kFloat).contiguous();
      check_output(y, static_cast<int64_t>(batch.size()));
    }
    torch::InferenceMode inference;
    for (size_t i = 0; i < batch.size(); ++i) {
      Sample& s = batch.samples[i];
      s.features = torchu::from_torch(y[static_cast<int64_t>(i)]);  // aliases the batch output
      s.image.release();
    }
  }

 private:
  // builtin_ (with its weights) or script_, frozen and on the device; sets fingerprint_.
  void load_model(const Params& p, const StageContext& ctx) {
    const std::string model = p.get(kModel);
    const std::string weights = p.get(kWeights);
    if (model.rfind("builtin:", 0) == 0) {
      const std::string name = model.substr(8);
      if (!torchu::is_builtin(name))
        throw std::runtime_error(fmt::format("{}: unknown builtin model '{}' (builtins: {})", what_,
                                             name, fmt::join(torchu::builtin_names(), ", ")));
      builtin_ = torchu::make_builtin(name);
      if (weights.empty()) {
        const auto seed = static_cast<uint64_t>(p.get(kInitSeed));
        at::Generator gen = torchu::make_generator(seed);
        torchu::init_module(*builtin_, gen);
        fingerprint_ = fmt::format("{} random-init:{}", model, seed);
      } else {
        const std::string path = existing_file(weights, ctx.graph_dir, "weights");
        load_weights(path, model);
        fingerprint_ = fmt::format("{} weights:{}", model, hash_file(path));
      }
      torchu::freeze(*builtin_);
      builtin_->to(device_);
    } else {
      if (!weights.empty())
        throw std::runtime_error(fmt::format(
            "{}: 'weights' applies to builtin models only; the TorchScript file '{}' carries "
            "its own", what_, model));
      const std::string path = existing_file(model, ctx.graph_dir, "model");
      try {
        script_ = torch::jit::load(path, device_);
      } catch (const c10::Error& e) {
        throw std::runtime_error(fmt::format("{}: cannot load TorchScript model '{}': {}", what_,
                                             path, first_line(e.what_without_backtrace())));
      }
      script_->eval();
      for (auto p : script_->parameters()) p.set_requires_grad(false);
      fingerprint_ = fmt::format("torchscript:{}", hash_file(path));
    }
  }

  // The base alone (normalization is done by images_to_tensor), frozen: parameters become
  // constants, which lets optimize_for_inference fold and prepack them.
  void optimize() {
    torch::jit::Module m;
    if (builtin_) {
      ScriptWriter w("FrozenBase");
      script_layers(w, builtin_, "layer");
      m = w.finish();
    } else {
      m = script_->clone();
      m.eval();
    }
    try {
      torch::jit::Module frozen = torch::jit::freeze(m);
      fast_ = torch::jit::optimize_for_inference(frozen);
    } catch (const c10::Error& e) {  // a TorchScript file freeze cannot take: say so, never guess
      throw std::runtime_error(fmt::format("{}: optimize: auto cannot freeze this model ({}); set optimize: off",
                                           what_, first_line(e.what_without_backtrace())));
    }
    fingerprint_ += " optimized";
  }

  // A PyTorch state dict (torchvision's .pth files), checked tensor by tensor, else a
  // torch::save(module) archive (train_base writes them). A state dict never reaches
  // LibTorch's module loader: pipe's own reader takes tensors only (torch_pickle.h).
  void load_weights(const std::string& path, const std::string& model) {
    if (torchu::is_state_dict_file(path)) return torchu::load_state_dict(*builtin_, path, what_);
    try {
      torch::load(builtin_, path);
    } catch (const c10::Error& e) {
      throw std::runtime_error(fmt::format("{}: cannot load weights '{}' into {}: {}", what_, path, model,
                                           first_line(e.what_without_backtrace())));
    }
  }

  std::string existing_file(const std::string& given, const std::string& dir,
                            const char* param) const {
    const std::string path = resolve_path(given, dir);
    if (!std::filesystem::is_regular_file(path))
      throw std::runtime_error(fmt::format("{}: {} file '{}' does not exist{}", what_, param, path,
                                           path == given ? "" : fmt::format(" (given as '{}')", given)));
    return path;
  }

  void check_output(const torch::Tensor& y, int64_t n) const {
    if (y.dim() < 2 || y.size(0) != n)
      throw std::runtime_error(fmt::format("{}: the model returned shape ({}) for a batch of {}",
                                           what_, fmt::join(y.sizes(), ", "), n));
  }

  // Once, for a CUDA device: cuDNN autotuning (each input shape is timed once, then the
  // fastest kernels are reused: the shapes repeat batch after batch), channels-last 4-d
  // weights, the autocast dtype, the normalization as device tensors.
  void prepare_cuda() {
    at::globalContext().setBenchmarkCuDNN(true);  // process-wide, like torch.backends.cudnn.benchmark
    torch::NoGradGuard no_grad;
    auto channels_last = [](torch::Tensor t) {
      if (t.dim() == 4) t.set_data(t.contiguous(at::MemoryFormat::ChannelsLast));
    };
    if (builtin_) {
      for (const auto& t : builtin_->parameters()) channels_last(t);
    } else {
      for (const auto& t : script_->parameters()) channels_last(t);
    }
    std::string precision = "fp32";
    if (bf16_) {
      c10::DeviceGuard on(device_);  // the hook asks about the current device
      const bool bf16_ok = at::detail::getCUDAHooks().supportsBFloat16ConvolutionWithCuDNNv8();
      autocast_ = bf16_ok ? at::kBFloat16 : at::kHalf;
      precision = bf16_ok ? "bf16" : "fp16";
    }
    const torchu::PixelAffine a = torchu::pixel_affine(norm_);
    scale_ = torch::tensor(at::ArrayRef<float>(a.scale)).view({1, 3, 1, 1}).to(device_);
    shift_ = torch::tensor(at::ArrayRef<float>(a.shift)).view({1, 3, 1, 1}).to(device_);
    // Other kernels, another layout, maybe another precision: features that differ from the
    // CPU's, so a cache keeps them apart.
    fingerprint_ += fmt::format(" cuda {}", precision);
  }

  // Chunks of a CUDA batch: 4, so that three quarters of the host packing and all copies but
  // the last hide behind forwards, each of at least 32 images, so that every forward still
  // fills the device.
  static constexpr int64_t kChunks = 4, kMinChunk = 32;

  // The batch's features, float32 (N, C, H', W') in pinned host memory, complete on return.
  // Nothing in the loop waits for the device: each chunk is packed, queued for upload,
  // forward and download on the current stream, and the host goes on to pack the next one.
  torch::Tensor process_cuda(const std::vector<Sample>& samples) {
    torch::InferenceMode inference;
    const auto n = static_cast<int64_t>(samples.size());
    const int64_t chunk = std::max(kMinChunk, (n + kChunks - 1) / kChunks);
    torch::Tensor out;
    for (int64_t begin = 0; begin < n; begin += chunk) {
      const int64_t len = std::min(chunk, n - begin);
      // Freed pinned blocks are reused only once the copies queued from them have run (the
      // caching host allocator records an event on the stream for each non-blocking copy).
      torch::Tensor host = torchu::images_to_uint8(samples, static_cast<size_t>(begin),
                                                   static_cast<size_t>(len), /*pinned=*/true);
      // (N, H, W, 3) permuted to (N, 3, H, W) is channels-last as laid out: no transpose.
      torch::Tensor x = host.to(device_, /*non_blocking=*/true).permute({0, 3, 1, 2});
      x = x.to(torch::kFloat).mul_(scale_).add_(shift_);
      torch::Tensor y = forward(x).to(torch::kFloat).contiguous();
      check_output(y, len);
      if (!out.defined()) {
        std::vector<int64_t> shape = y.sizes().vec();
        shape[0] = n;
        out = torch::empty(shape, torch::TensorOptions().dtype(torch::kFloat).pinned_memory(true));
      }
      out.narrow(0, begin, len).copy_(y, /*non_blocking=*/true);
    }
    // The last thing queued is the last copy back: when the stream drains, out is complete.
    c10::impl::VirtualGuardImpl(device_.type()).getStream(device_).synchronize();
    return out;
  }

  torch::Tensor forward(const torch::Tensor& x) {
    const bool autocast = autocast_.has_value();
    if (autocast) {
      at::autocast::set_autocast_gpu_dtype(*autocast_);
      at::autocast::set_enabled(true);
    }
    struct AutocastOff {
      bool on;
      ~AutocastOff() {
        if (on) {
          at::autocast::set_enabled(false);
          at::autocast::clear_cache();
        }
      }
    } off{autocast};
    if (fast_) return fast_->forward({x}).toTensor();
    if (builtin_) return builtin_->forward(x);
    return script_->forward({x}).toTensor();
  }

  std::string what_;
  torch::Device device_;
  torchu::ImageNorm norm_;
  int batch_;
  bool bf16_;
  std::optional<at::ScalarType> autocast_;  // CUDA with bf16: true
  torch::Tensor scale_, shift_;             // CUDA: the normalization, (1, 3, 1, 1) on the device
  torch::nn::Sequential builtin_{nullptr};
  std::optional<torch::jit::Module> script_;
  std::optional<torch::jit::Module> fast_;  // optimize: auto on the CPU
  std::string fingerprint_;
};

}  // namespace

void register_convbase(Registry& r) {
  r.add<ConvBase>(convbase_schema());
}

}  // namespace pipeline::stages
