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
#include <cmath>
#include <cstring>
#include <fstream>
#include <memory>

#include <fmt/format.h>
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

#include "builtin.h"
#include "supervised_sink.h"
#include "torch_schemas.h"
#include "torch_util.h"

namespace pipeline::stages {
namespace {

using namespace dense_head;  // the parameters (torch_schemas.h)
namespace nn = torch::nn;

// The head's products are tiny (20 x 2048 x 256): it trains on one intra-op thread whatever
// --threads says (IntraOpThreads, supervised_sink.h), so that its metrics do not depend on it.
constexpr int kHeadThreads = 1;

// --- RMSprop with a lean step.
// torch::optim::RMSprop's step is five passes over each parameter (mul_, addcmul_, sqrt, add_,
// addcdiv_) and allocates the root; with zero_grad's fill and backward's add into the zeroed
// gradient it was over 40% of the head's epoch. LeanRMSprop does the same update in one pass:
//   v = alpha v + (1 - alpha) g^2,   w -= lr g / (sqrt(v) + eps)
// with ATen's roundings (ATen's AVX2 addcmul rounds once, as a fused multiply-add, and
// every other operation is IEEE-rounded), so the weights are bit-identical to torch's step; a
// probe on the first step checks that against ATen's own kernels and falls back to torch's
// step if it does not hold (another CPU or LibTorch build). Then it drops the gradients, as
// zero_grad(set_to_none) does: backward writes the next gradient instead of adding it to
// zeros (the same values). The state (step, square_avg, keyed as torch keys it) and options are
// RMSprop's, so torch::save/load checkpoints are unchanged; weight decay, momentum, centered
// and a closure take torch's step.
#if defined(__x86_64__) && defined(__GNUC__)
// Subnormal square averages. A hidden unit that ReLU has switched off gets zero gradients, so
// its weights' v decays by alpha every step into the subnormal range and stays there (0.9
// times the smallest subnormal rounds back to it): after 30 epochs of graphs/cached.yaml, 17% of
// fc1's v. Every float operation on a subnormal takes a microcode assist (~100 cycles), which
// made the update 1.3 ms a step instead of 0.2. For such a lane (g = 0) the update is
// v = v alpha, and w + (-lr g) / avg adds a signed zero whatever avg is (so the vector body
// computes w with v taken as 0). v alpha, subnormal v = m 2^-149 and alpha < 1, is m alpha
// rounded to an integer (ties to even) in units of 2^-149: m alpha is exact in double
// (23 + 24 bits), so rounding it there gives the IEEE product without an assist.
__attribute__((target("avx2,fma"))) inline float subnormal_times(float v, float alpha) {
  uint32_t m = 0;
  std::memcpy(&m, &v, sizeof m);
  const auto r = static_cast<uint32_t>(std::nearbyint(static_cast<double>(m) * static_cast<double>(alpha)));
  float out = 0;
  std::memcpy(&out, &r, sizeof out);
  return out;
}
__attribute__((target("avx2,fma"))) inline bool subnormal(float v) {
  return v != 0 && std::fpclassify(v) == FP_SUBNORMAL;
}
__attribute__((target("avx2,fma"))) inline void rmsprop_scalar(float* w, const float* g, float* v, int64_t n, float alpha,
                                                                float one_minus_alpha, float eps, float minus_lr) {
  for (int64_t i = 0; i < n; ++i) {  // ATen's scalar tail rounds as its vector body does
    if (g[i] == 0 && subnormal(v[i])) {
      v[i] = subnormal_times(v[i], alpha);
      w[i] = w[i] + minus_lr * g[i];  // (-lr g) / avg is that signed zero, whatever avg is
      continue;
    }
    const float vi = std::fma(one_minus_alpha * g[i], g[i], v[i] * alpha);
    v[i] = vi;
    w[i] = w[i] + minus_lr * g[i] / (std::sqrt(vi) + eps);
  }
}

__attribute__((target("avx2,fma"))) void rmsprop_update(float* w, const float* g, float* v, int64_t n, float alpha,
                                                         float one_minus_alpha, float eps, float minus_lr) {
  int64_t i = 0;
  const __m256 a = _mm256_set1_ps(alpha), c = _mm256_set1_ps(one_minus_alpha), e = _mm256_set1_ps(eps),
               l = _mm256_set1_ps(minus_lr), zero = _mm256_setzero_ps();
  const __m256i exponent = _mm256_set1_epi32(0x7f800000), zero_i = _mm256_setzero_si256();
  const __m256d a_d = _mm256_set1_pd(alpha);
  for (; i + 8 <= n; i += 8) {
    const __m256 gi = _mm256_loadu_ps(g + i);
    __m256 vi = _mm256_loadu_ps(v + i);
    // Subnormal lanes of v (exponent field 0, not 0): integer compares, no assist.
    const __m256i bits = _mm256_castps_si256(vi);
    const __m256i sub = _mm256_andnot_si256(_mm256_cmpeq_epi32(bits, zero_i),
                                            _mm256_cmpeq_epi32(_mm256_and_si256(bits, exponent), zero_i));
    const bool any_sub = !_mm256_testz_si256(sub, sub);
    __m256 scaled = zero;
    if (any_sub) {
      const __m256i moving = _mm256_castps_si256(_mm256_cmp_ps(gi, zero, _CMP_NEQ_UQ));
      if (!_mm256_testz_si256(sub, moving)) {  // a subnormal v with a gradient: rare, exact in hardware
        rmsprop_scalar(w + i, g + i, v + i, 8, alpha, one_minus_alpha, eps, minus_lr);
        continue;
      }
      // m alpha rounded to an integer, in double (4 lanes at a time), back to subnormal bits
      const __m256d lo = _mm256_round_pd(_mm256_mul_pd(_mm256_cvtepi32_pd(_mm256_castsi256_si128(bits)), a_d),
                                         _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      const __m256d hi = _mm256_round_pd(_mm256_mul_pd(_mm256_cvtepi32_pd(_mm256_extracti128_si256(bits, 1)), a_d),
                                         _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      scaled = _mm256_castsi256_ps(_mm256_set_m128i(_mm256_cvtpd_epi32(hi), _mm256_cvtpd_epi32(lo)));
      vi = _mm256_andnot_ps(_mm256_castsi256_ps(sub), vi);  // 0 there: no assist below, same w
    }
    // addcmul_(g, g, c) after mul_(alpha): (v alpha) + (c g) g, one rounding for the last two
    __m256 vn = _mm256_fmadd_ps(_mm256_mul_ps(c, gi), gi, _mm256_mul_ps(vi, a));
    // sqrt().add_(eps), then addcdiv_(g, avg, -lr): w + (-lr g) / avg
    const __m256 avg = _mm256_add_ps(_mm256_sqrt_ps(vn), e);
    _mm256_storeu_ps(w + i, _mm256_add_ps(_mm256_loadu_ps(w + i), _mm256_div_ps(_mm256_mul_ps(l, gi), avg)));
    if (any_sub) vn = _mm256_blendv_ps(vn, scaled, _mm256_castsi256_ps(sub));
    _mm256_storeu_ps(v + i, vn);
  }
  rmsprop_scalar(w + i, g + i, v + i, n - i, alpha, one_minus_alpha, eps, minus_lr);
}
bool cpu_has_avx2_fma() { return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"); }
#else
void rmsprop_update(float*, const float*, float*, int64_t, float, float, float, float) {}
bool cpu_has_avx2_fma() { return false; }
#endif


// Does rmsprop_update reproduce torch's step bit for bit here? Checked on values where one
// rounding more or less shows (about 1 in 14 random values) and on subnormal v with and without
// a gradient: a vector body with a scalar tail, and short tensors that are all tail.
bool lean_step_matches_aten() {
  if (!cpu_has_avx2_fma()) return false;
  torch::NoGradGuard no_grad;
  const double alpha = 0.9, eps = 1e-7, lr = 1e-4;
  for (int k = 0; k < 33; ++k) {
    const int64_t n = k == 0 ? 4096 + 13 : 13;
    const torch::Tensor j = torch::arange(n, torch::kLong);
    const torch::Tensor i = j.to(torch::kFloat) + static_cast<float>(13 * k);
    torch::Tensor w = torch::sin(i * 0.37f), g = torch::cos(i * 1.3f) * 1e-2f, v = torch::sin(i * 0.11f).abs_() * 1e-4f;
    // Subnormal v (bit patterns 1 .. 2^23 - 1), some with g = 0: whole vectors of them, vectors
    // where they have gradients, vectors mixing them with normal lanes, the tail.
    const torch::Tensor m = ((j * 7919 + k) % ((1 << 23) - 1) + 1).to(torch::kInt).view(torch::kFloat);
    const torch::Tensor sub = k == 0 ? ((j < 128) | ((j < 192) & (j % 2 == 0)) | (j >= n - 6)) : (j % 3 == 0);
    const torch::Tensor still = k == 0 ? ((j < 64) | ((j >= 128) & (j < 192) & (j % 2 == 0)) | ((j % 2 == 0) & (j >= n - 6)))
                                       : (j % 2 == 0);
    v = torch::where(sub, m, v);
    g = torch::where(still, torch::zeros_like(g), g);
    const torch::Tensor v_aten = v.mul(alpha).addcmul_(g, g, 1 - alpha);
    const torch::Tensor w_aten = w.addcdiv(g, v_aten.sqrt().add_(eps), -lr);
    torch::Tensor w_lean = w.clone(), v_lean = v.clone();
    rmsprop_update(w_lean.data_ptr<float>(), g.data_ptr<float>(), v_lean.data_ptr<float>(), n, static_cast<float>(alpha),
                   static_cast<float>(1 - alpha), static_cast<float>(eps), static_cast<float>(-lr));
    if (!torch::equal(v_lean, v_aten) || !torch::equal(w_lean, w_aten)) return false;
  }
  return true;
}

class LeanRMSprop : public torch::optim::RMSprop {
 public:
  using RMSprop::RMSprop;

  torch::Tensor step(LossClosure closure = nullptr) override {
    static const bool matches = lean_step_matches_aten();
    if (closure != nullptr || !matches || !lean()) return RMSprop::step(std::move(closure));
    torch::NoGradGuard no_grad;
    for (auto& group : param_groups_) {
      const auto& o = static_cast<const torch::optim::RMSpropOptions&>(group.options());
      for (torch::Tensor& p : group.params()) {
        if (!p.grad().defined()) continue;
        auto& slot = state_[c10::guts::to_string(p.unsafeGetTensorImpl())];
        if (!slot) {  // as RMSprop::step creates it
          auto s = std::make_unique<torch::optim::RMSpropParamState>();
          s->square_avg(torch::zeros_like(p, torch::MemoryFormat::Preserve));
          slot = std::move(s);
        }
        auto& s = static_cast<torch::optim::RMSpropParamState&>(*slot);
        s.step(s.step() + 1);
        const torch::Tensor& g = p.grad();
        rmsprop_update(p.data_ptr<float>(), g.data_ptr<float>(), s.square_avg().data_ptr<float>(), p.numel(),
                       static_cast<float>(o.alpha()), static_cast<float>(1 - o.alpha()), static_cast<float>(o.eps()),
                       static_cast<float>(-o.lr()));
        p.mutable_grad() = torch::Tensor();
      }
    }
    return {};
  }

 private:
  // The plain update on dense float32 CPU tensors: what rmsprop_update computes.
  bool lean() const {
    const auto dense = [](const torch::Tensor& t) {
      return t.defined() && t.device().is_cpu() && t.scalar_type() == torch::kFloat && t.is_contiguous() &&
             t.layout() == torch::kStrided;
    };
    for (const auto& group : param_groups_) {
      const auto& o = static_cast<const torch::optim::RMSpropOptions&>(group.options());
      // alpha < 1: subnormal v alpha stays subnormal (see subnormal_times)
      if (o.weight_decay() != 0 || o.momentum() != 0 || o.centered() || !(o.alpha() >= 0 && o.alpha() < 1)) return false;
      for (const torch::Tensor& p : group.params()) {
        if (!p.grad().defined()) continue;
        if (!dense(p) || !dense(p.grad()) || p.grad().numel() != p.numel()) return false;
        const auto it = state_.find(c10::guts::to_string(p.unsafeGetTensorImpl()));
        if (it != state_.end()) {
          const torch::Tensor& v = static_cast<const torch::optim::RMSpropParamState&>(*it->second).square_avg();
          if (!dense(v) || v.numel() != p.numel()) return false;
        }
      }
    }
    return true;
  }
};

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
  int training_threads() const override { return kHeadThreads; }

  void build(int64_t in) override {
    head_ = Head(in, hidden_, classes() == 2 ? 1 : classes(), dropout_);
    torchu::init_module(*head_, gen());
    auto params = head_->parameters();
    if (optimizer_ == Optimizer::rmsprop) {
      // Keras RMSprop defaults: rho 0.9 (torch's alpha, whose default is 0.99), epsilon 1e-7.
      // torch adds eps outside the root, w -= lr * g / (sqrt(v) + eps), as Keras 2.0.8 (the
      // book's, eps 1e-8) did; tf.keras 2.x and Keras 3 add it inside, sqrt(v + eps). The two
      // differ only where v is small (v < ~1e-6): there Keras' effective step is smaller.
      optimizer_impl_ = std::make_unique<LeanRMSprop>(
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
