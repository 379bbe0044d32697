// Synchronized BatchNorm for data-parallel training (sync_batch_norm.h).
#include "sync_batch_norm.h"

#include <algorithm>

#include <torch/torch.h>

namespace pipeline::stages {
namespace {

namespace nn = torch::nn;

// Forward all-reduces each channel's sum, sum of squares and count; backward the sums of the
// output gradient and of gradient x normalized input. The global sums are taken over
// s-weighted local sums (a rank's gradients are the global ones divided by s, see the header),
// the input gradient divides the global terms by s, and the weight and bias gradients are the
// local sums, which the sink's all-reduce weights by s and adds up. Sums are in double.
class SyncBatchNorm : public torch::autograd::Function<SyncBatchNorm> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& x,
                               const torch::Tensor& weight, const torch::Tensor& bias, nn::BatchNorm2dImpl* bn,
                               DataParallel* group, double share, const std::string& what) {
    const int64_t c = x.size(1);
    const std::vector<int64_t> dims{0, 2, 3};
    torch::Tensor sums = torch::cat({x.sum(dims, false, torch::kDouble), x.square().sum(dims, false, torch::kDouble),
                                     torch::full({1}, static_cast<double>(x.numel() / c), torch::kDouble)})
                             .to(torch::kCPU)
                             .contiguous();
    group->all_reduce_sum(sums.data_ptr<double>(), static_cast<size_t>(sums.numel()), "the BatchNorm statistics of " + what);
    const double n = sums[2 * c].item<double>();
    const torch::Tensor mean = sums.narrow(0, 0, c) / n;
    const torch::Tensor var = (sums.narrow(0, c, c) / n - mean * mean).clamp_min(0);
    const auto per_channel = [&](const torch::Tensor& t) { return t.to(x.options()).view({1, c, 1, 1}); };
    const torch::Tensor invstd = per_channel((var + bn->options.eps()).rsqrt());
    const torch::Tensor xhat = (x - per_channel(mean)) * invstd;
    {  // running statistics as nn::BatchNorm2d keeps them (unbiased variance)
      bn->num_batches_tracked += 1;
      const double m = bn->options.momentum() ? *bn->options.momentum() : 1.0 / bn->num_batches_tracked.item<double>();
      bn->running_mean.mul_(1 - m).add_(mean.to(x.options()), m);
      bn->running_var.mul_(1 - m).add_((var * (n / std::max(n - 1, 1.0))).to(x.options()), m);
    }
    ctx->save_for_backward({xhat, weight, invstd});
    ctx->saved_data["group"] = reinterpret_cast<int64_t>(group);  // lives for the whole run
    ctx->saved_data["share"] = share;
    ctx->saved_data["n"] = n;
    ctx->saved_data["what"] = what;
    return xhat * weight.view({1, c, 1, 1}) + bias.view({1, c, 1, 1});
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const torch::Tensor &xhat = saved[0], &weight = saved[1], &invstd = saved[2], &dy = grads[0];
    auto* group = reinterpret_cast<DataParallel*>(ctx->saved_data["group"].toInt());
    const double share = ctx->saved_data["share"].toDouble(), n = ctx->saved_data["n"].toDouble();
    const int64_t c = xhat.size(1);
    const std::vector<int64_t> dims{0, 2, 3};
    const torch::Tensor dy_sum = dy.sum(dims, false, torch::kDouble), dyx_sum = (dy * xhat).sum(dims, false, torch::kDouble);
    torch::Tensor sums = torch::cat({dy_sum, dyx_sum}).mul(share).to(torch::kCPU).contiguous();
    group->all_reduce_sum(sums.data_ptr<double>(), static_cast<size_t>(sums.numel()),
                          "the BatchNorm gradients of " + ctx->saved_data["what"].toStringRef());
    const auto per_channel = [&](const torch::Tensor& t) { return (t / (n * share)).to(dy.options()).view({1, c, 1, 1}); };
    const torch::Tensor dx =
        share > 0 ? (dy - per_channel(sums.narrow(0, 0, c)) - xhat * per_channel(sums.narrow(0, c, c))) *
                        (weight.view({1, c, 1, 1}) * invstd)
                  : dy;  // no rows: dy is empty, and so is the input's gradient
    return {dx, dyx_sum.to(weight.options()), dy_sum.to(weight.options()), {}, {}, {}, {}};
  }
};

}  // namespace

torch::Tensor sync_batch_norm(const torch::Tensor& x, torch::nn::BatchNorm2dImpl& bn, DataParallel& group, double share,
                              const std::string& what) {
  return SyncBatchNorm::apply(x, bn.weight, bn.bias, &bn, &group, share, what);
}

}  // namespace pipeline::stages
