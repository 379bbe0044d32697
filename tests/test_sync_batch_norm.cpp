// Synchronized BatchNorm (stages/sync_batch_norm.h): two ranks in two threads, each with its
// own rows of one batch, against nn::BatchNorm2d on the whole batch in one process. The
// outputs, the running statistics and, in SupervisedSink's units (a rank's gradients are the
// global ones divided by its share), every gradient must be one process's.
#include <torch/torch.h>
#undef CHECK  // torch's CHECK macro; Catch2's below
#include <catch2/catch.hpp>

#include <condition_variable>
#include <mutex>
#include <thread>

#include "sync_batch_norm.h"

namespace nn = torch::nn;
using pipeline::DataParallel;
using pipeline::StepShard;

namespace {

// An all-reduce between two threads: each call adds its values in and returns when both have.
class Exchange {
 public:
  void sum(double* data, std::size_t n) {
    std::unique_lock<std::mutex> lock(mu_);
    const uint64_t round = round_;
    if (arrived_ == 0) acc_.assign(data, data + n);
    else for (std::size_t i = 0; i < n; ++i) acc_[i] += data[i];
    if (++arrived_ == 2) {
      result_ = acc_;
      arrived_ = 0;
      ++round_;
      cv_.notify_all();
    } else {
      cv_.wait(lock, [&] { return round_ != round; });
    }
    std::copy(result_.begin(), result_.end(), data);
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<double> acc_, result_;
  int arrived_ = 0;
  uint64_t round_ = 0;
};

class ThreadRank : public DataParallel {
 public:
  ThreadRank(int rank, Exchange& ex) : rank_(rank), ex_(ex) {}
  int rank() const override { return rank_; }
  int world() const override { return 2; }
  const std::vector<StepShard>& steps() const override { return steps_; }
  void all_reduce_sum(float*, std::size_t, const std::string&) override { throw std::logic_error("a float all-reduce"); }
  void all_reduce_sum(double* data, std::size_t n, const std::string&) override {
    ++reduces;
    ex_.sum(data, n);
  }
  int reduces = 0;

 private:
  int rank_;
  Exchange& ex_;
  std::vector<StepShard> steps_;
};

nn::BatchNorm2d make_bn(int64_t c) {
  nn::BatchNorm2d bn(c);
  torch::NoGradGuard no_grad;
  bn->weight.copy_(torch::linspace(0.5, 1.5, c));
  bn->bias.copy_(torch::linspace(-0.2, 0.3, c));
  return bn;
}

struct Grads {
  torch::Tensor y, dx, dw, db;
};

// The loss of `rows` rows: their mean of sum(y * c), as a sink's mean loss over its rows.
torch::Tensor loss(const torch::Tensor& y, const torch::Tensor& c) {
  return y.size(0) == 0 ? y.sum() : (y * c).sum() / static_cast<double>(y.size(0));
}

}  // namespace

TEST_CASE("synchronized BatchNorm over two ranks is one process's BatchNorm on the whole batch") {
  torch::manual_seed(3);
  const int64_t global = 6, channels = 4;
  const torch::Tensor x = torch::randn({global, channels, 3, 5}) * 2 + 1;
  const torch::Tensor c = torch::randn({global, channels, 3, 5});

  // One process: nn::BatchNorm2d in training mode, two steps (running statistics move twice).
  nn::BatchNorm2d ref = make_bn(channels);
  ref->train();
  Grads one;
  for (int step = 0; step < 2; ++step) {
    ref->zero_grad();
    const torch::Tensor xi = x.clone().requires_grad_(true);
    one.y = ref->forward(xi);
    loss(one.y, c).backward();
    one.dx = xi.grad();
  }
  one.dw = ref->weight.grad();
  one.db = ref->bias.grad();

  // Rank r's rows [bounds[r], bounds[r+1]); unequal shares, and a rank with none.
  for (const std::array<int64_t, 3>& bounds : {std::array<int64_t, 3>{0, 2, 6}, std::array<int64_t, 3>{0, 0, 6}}) {
    INFO("rank 0 has " << bounds[1] << " of " << global << " rows");
    Exchange ex;
    std::vector<nn::BatchNorm2d> bns = {make_bn(channels), make_bn(channels)};
    std::vector<Grads> g(2);
    std::vector<int> reduces(2);
    std::vector<std::thread> ranks;
    for (int r = 0; r < 2; ++r)
      ranks.emplace_back([&, r] {
        ThreadRank group(r, ex);
        const int64_t from = bounds[r], rows = bounds[r + 1] - from;
        const double share = static_cast<double>(rows) / static_cast<double>(global);
        for (int step = 0; step < 2; ++step) {
          bns[r]->zero_grad();
          const torch::Tensor xi = x.narrow(0, from, rows).clone().requires_grad_(true);
          g[r].y = pipeline::stages::sync_batch_norm(xi, *bns[r], group, share, "test");
          loss(g[r].y, c.narrow(0, from, rows)).backward();
          g[r].dx = xi.grad();
        }
        g[r].dw = bns[r]->weight.grad();
        g[r].db = bns[r]->bias.grad();
        reduces[r] = group.reduces;
      });
    for (std::thread& t : ranks) t.join();

    const double tol = 1e-5;
    for (int r = 0; r < 2; ++r) {
      const int64_t from = bounds[r], rows = bounds[r + 1] - from;
      const double share = static_cast<double>(rows) / static_cast<double>(global);
      CHECK(reduces[r] == 4);  // one forward and one backward all-reduce per step, rows or not
      CHECK(torch::allclose(g[r].y, one.y.narrow(0, from, rows), tol, tol));
      if (rows > 0) CHECK(torch::allclose(g[r].dx * share, one.dx.narrow(0, from, rows), tol, tol));
      CHECK(torch::allclose(bns[r]->running_mean, ref->running_mean, tol, tol));
      CHECK(torch::allclose(bns[r]->running_var, ref->running_var, tol, tol));
      CHECK(bns[r]->num_batches_tracked.item<int64_t>() == 2);
    }
    const double s0 = static_cast<double>(bounds[1]) / global, s1 = static_cast<double>(bounds[2] - bounds[1]) / global;
    CHECK(torch::allclose(g[0].dw * s0 + g[1].dw * s1, one.dw, tol, tol));
    CHECK(torch::allclose(g[0].db * s0 + g[1].db * s1, one.db, tol, tol));
  }
}
