// dense_head's numbers against formulas written out here, not against earlier runs: the
// initialization (Keras' Dense: Glorot uniform weights, zero biases) and the first two
// optimizer steps of RMSprop and Adam with Keras' constants, from the stage's own initial
// weights and gradients this test computes itself. A changed rho, beta, epsilon, learning-rate
// scaling or init limit moves some value far outside the tolerance.
//
// The stage is driven through pipe's API (testing::make); what it did is read back from the
// head.pt its save() writes. This file includes LibTorch (to load head.pt and to compute the
// gradients), so it is the one test that takes a torch compile.
#include <catch2/catch.hpp>

#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <string>
#include <tuple>
#include <vector>

#include <fmt/format.h>
#include <torch/torch.h>

#include "pipe/stage.h"
#include "pipe/testing.h"
#include "torch_runtime.h"

using namespace pipeline;
namespace fs = std::filesystem;

namespace {

// The head's parameters as save() writes them (fc1.*, fc2.*).
struct HeadParamsImpl : torch::nn::Module {
  HeadParamsImpl(int64_t in, int64_t hidden)
      : fc1(register_module("fc1", torch::nn::Linear(in, hidden))), fc2(register_module("fc2", torch::nn::Linear(hidden, 1))) {}
  torch::nn::Linear fc1, fc2;
};
TORCH_MODULE(HeadParams);

struct Weights {
  std::vector<torch::Tensor> t;  // fc1.weight, fc1.bias, fc2.weight, fc2.bias (double)
};

Weights load_head(const fs::path& file, int64_t in, int64_t hidden) {
  HeadParams m(in, hidden);
  torch::load(m, file.string());
  return {{m->fc1->weight.detach().to(torch::kDouble), m->fc1->bias.detach().to(torch::kDouble),
           m->fc2->weight.detach().to(torch::kDouble), m->fc2->bias.detach().to(torch::kDouble)}};
}

// Fixed features: `in` columns of values in [-1, 1] and a last column scaled by 1e-6, whose
// fc1 gradients are ~1e-7: there the optimizer's epsilon decides the step.
std::vector<Sample> batch(int64_t in, int n, int salt) {
  std::vector<Sample> out;
  for (int i = 0; i < n; ++i) {
    float* x = nullptr;
    Tensor t = Tensor::zeros({in}, &x);
    for (int64_t k = 0; k < in; ++k) x[k] = std::sin(0.7f * float(i + 1) * float(k + 1) + float(salt));
    x[in - 1] *= 1e-6f;
    out.push_back(testing::features_sample(t, i, 1, Split::train, (i * 3 + salt) % 2));
  }
  return out;
}

// Gradients of the mean binary cross-entropy (sigmoid) of the head at `w` on `samples`,
// computed here in float32 as the stage computes its forward pass.
std::vector<torch::Tensor> gradients(const Weights& w, const std::vector<Sample>& samples, int64_t in) {
  std::vector<float> xs, ys;
  for (const Sample& s : samples) {
    xs.insert(xs.end(), s.features.ptr(), s.features.ptr() + in);
    ys.push_back(float(s.label));
  }
  const auto n = static_cast<int64_t>(samples.size());
  const torch::Tensor x = torch::tensor(xs).reshape({n, in});
  const torch::Tensor y = torch::tensor(ys);
  std::vector<torch::Tensor> p;
  for (const torch::Tensor& t : w.t) p.push_back(t.to(torch::kFloat).clone().set_requires_grad(true));
  const torch::Tensor h = torch::relu(torch::nn::functional::linear(x, p[0], p[1]));
  const torch::Tensor z = torch::nn::functional::linear(h, p[2], p[3]).squeeze(1);
  torch::binary_cross_entropy_with_logits(z, y).backward();
  std::vector<torch::Tensor> g;
  for (const torch::Tensor& t : p) g.push_back(t.grad().detach().to(torch::kDouble));
  return g;
}

// The step the stage took (after - before) equals the formula's, element by element.
void check_step(const Weights& before, const Weights& after, const std::vector<torch::Tensor>& expected_step,
                const char* what) {
  const char* names[] = {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"};
  for (size_t i = 0; i < 4; ++i) {
    const torch::Tensor got = (after.t[i] - before.t[i]).flatten();
    const torch::Tensor want = expected_step[i].flatten();
    REQUIRE(got.numel() == want.numel());
    // float32 weights: the step is known to ~1e-7 absolute; 1e-4 relative on top of that.
    const torch::Tensor err = (got - want).abs() - (want.abs() * 1e-4 + 2e-7);
    const int64_t worst = err.argmax().item<int64_t>();
    INFO(what << " " << names[i] << "[" << worst << "]: step " << got[worst].item<double>() << ", formula "
              << want[worst].item<double>());
    CHECK(err.max().item<double>() <= 0);
  }
}

struct Run {
  fs::path dir;
  Weights w0, w1, w2;  // initial, after one step, after two
};

// Three heads with the same seed and node name (so the same initial weights): lr 0 shows
// the initialization; the other takes two steps, saving after each.
Run two_steps(const std::string& optimizer, double lr, int64_t in, int64_t hidden) {
  Run r;
  r.dir = fs::temp_directory_path() / fmt::format("pipe-test-optim-{}-{}", optimizer, ::getpid());
  fs::remove_all(r.dir);
  RunInfo run;
  run.seed = 11;
  run.classes = {"a", "b"};
  const auto head = [&](double rate) {
    auto h = testing::make<SinkStage>(fmt::format("{{stage: dense_head, hidden: {}, dropout: 0, optimizer: {}, lr: {}}}",
                                                  hidden, optimizer, rate),
                                      "head");
    h->begin_run(run);
    h->begin_epoch(Split::train, 1);
    return h;
  };
  const auto consume_and_save = [&](SinkStage& h, const std::vector<Sample>& samples, const std::string& sub) {
    Batch b;
    b.split = Split::train;
    b.epoch = 1;
    b.samples = samples;
    h.consume(b);
    fs::create_directories(r.dir / sub);
    h.save((r.dir / sub).string());
    return load_head(r.dir / sub / "head.pt", in, hidden);
  };
  auto frozen = head(0.0);
  r.w0 = consume_and_save(*frozen, batch(in, 10, 0), "w0");
  auto h = head(lr);
  r.w1 = consume_and_save(*h, batch(in, 10, 0), "w1");
  r.w2 = consume_and_save(*h, batch(in, 10, 1), "w2");
  return r;
}

}  // namespace

TEST_CASE("dense_head initializes as Keras' Dense: Glorot uniform weights, zero biases") {
  torch_set_threads(1);
  const int64_t in = 64, hidden = 256;
  const Run r = two_steps("rmsprop", 1e-3, in, hidden);
  for (const auto& [i, fan_in, fan_out] : {std::tuple{0, in, hidden}, std::tuple{2, hidden, int64_t{1}}}) {
    const torch::Tensor w = r.w0.t[static_cast<size_t>(i)];
    const double limit = std::sqrt(6.0 / double(fan_in + fan_out));
    INFO("weight " << i << " (" << fan_out << " x " << fan_in << "), Glorot limit " << limit);
    const double max_abs = w.abs().max().item<double>();
    CHECK(max_abs <= limit * (1 + 1e-6));  // float32 weights
    // Uniform on [-limit, limit]: the extremes are reached (16,384 and 256 draws) and the
    // mean square is limit^2 / 3.
    CHECK(max_abs >= 0.9 * limit);
    const double mean_sq = w.pow(2).mean().item<double>();
    CHECK(mean_sq == Approx(limit * limit / 3).epsilon(i == 0 ? 0.03 : 0.25));
    CHECK(std::abs(w.mean().item<double>()) < 0.1 * limit);
  }
  CHECK(r.w0.t[1].abs().max().item<double>() == 0.0);
  CHECK(r.w0.t[3].abs().max().item<double>() == 0.0);
  // The step from these weights happened (the lr-0 head is the same init, not a no-op run).
  CHECK((r.w1.t[0] - r.w0.t[0]).abs().max().item<double>() > 0);
  fs::remove_all(r.dir);
}

TEST_CASE("dense_head's RMSprop and Adam take the steps of Keras' formulas") {
  torch_set_threads(1);
  const int64_t in = 8, hidden = 16;
  const double lr = 1e-2;

  SECTION("RMSprop: rho 0.9, epsilon 1e-7 outside the root (Keras 2.0.8, the book's)") {
    // a = rho * a + (1 - rho) * g^2;  p -= lr * g / (sqrt(a) + eps)
    const double rho = 0.9, eps = 1e-7;
    const Run r = two_steps("rmsprop", lr, in, hidden);
    const auto g1 = gradients(r.w0, batch(in, 10, 0), in);
    const auto g2 = gradients(r.w1, batch(in, 10, 1), in);
    std::vector<torch::Tensor> s1, s2;
    for (size_t i = 0; i < 4; ++i) {
      const torch::Tensor a1 = (1 - rho) * g1[i] * g1[i];
      const torch::Tensor a2 = rho * a1 + (1 - rho) * g2[i] * g2[i];
      s1.push_back(-lr * g1[i] / (a1.sqrt() + eps));
      s2.push_back(-lr * g2[i] / (a2.sqrt() + eps));
    }
    // The scaled column's gradients are small enough for epsilon to matter.
    const double tiny = g1[0].index({torch::indexing::Slice(), in - 1}).abs().max().item<double>();
    CHECK(tiny < 1e-6);
    CHECK(tiny > 0);
    check_step(r.w0, r.w1, s1, "step 1");
    check_step(r.w1, r.w2, s2, "step 2");
    fs::remove_all(r.dir);
  }

  SECTION("Adam: beta1 0.9, beta2 0.999, epsilon 1e-7") {
    // Keras 2.x: m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2;
    //   lr_t = lr * sqrt(1 - b2^t) / (1 - b1^t);  p -= lr_t * m / (sqrt(v) + eps_hat).
    // pipe uses torch's Adam with eps = 1e-7 added to the bias-corrected root
    // (sqrt(v / (1 - b2^t)) + eps): Keras' formula with eps_hat = 1e-7 * sqrt(1 - b2^t). For
    // gradients above ~1e-5 the two agree to far below this test's tolerance; only the
    // 1e-7-sized gradients of the scaled column see the difference, and pin it.
    const double b1 = 0.9, b2 = 0.999, eps = 1e-7;
    const Run r = two_steps("adam", lr, in, hidden);
    const auto g1 = gradients(r.w0, batch(in, 10, 0), in);
    const auto g2 = gradients(r.w1, batch(in, 10, 1), in);
    std::vector<torch::Tensor> s1, s2;
    for (size_t i = 0; i < 4; ++i) {
      const torch::Tensor m1 = (1 - b1) * g1[i], v1 = (1 - b2) * g1[i] * g1[i];
      const torch::Tensor m2 = b1 * m1 + (1 - b1) * g2[i], v2 = b2 * v1 + (1 - b2) * g2[i] * g2[i];
      for (int t : {1, 2}) {
        const double lr_t = lr * std::sqrt(1 - std::pow(b2, t)) / (1 - std::pow(b1, t));
        const double eps_hat = eps * std::sqrt(1 - std::pow(b2, t));
        (t == 1 ? s1 : s2).push_back(-lr_t * (t == 1 ? m1 : m2) / ((t == 1 ? v1 : v2).sqrt() + eps_hat));
      }
    }
    check_step(r.w0, r.w1, s1, "step 1");
    check_step(r.w1, r.w2, s2, "step 2");
    fs::remove_all(r.dir);
  }
}
