// BatchNorm over the global batch of a data-parallel training step (train_base on several
// processes): the batch statistics one process computes over the whole batch, not those of
// this rank's rows, so that the ranks train the network one process trains (PyTorch's
// SyncBatchNorm). Training mode only: evaluation normalizes by the running statistics, which
// this keeps as nn::BatchNorm2d does (momentum, unbiased variance), the same on every rank.
//
// Gradients follow SupervisedSink's convention (all_reduce_gradients): a rank back-propagates
// the gradient of the mean loss over its own rows, which is the global batch's mean-loss
// gradient divided by the rank's share `share` = rows / global rows. The input gradient
// returned is in those units; the weight and bias gradients are such that the share-weighted
// sum over the ranks (what the sink's all-reduce makes) is the global batch's.
//
// Every rank calls it for every BatchNorm of every step, in the same order, also with no
// rows (share 0), and runs backward through it: each call is one all-reduce forward and one
// backward.
#pragma once

#include <string>

#include <torch/nn/modules/batchnorm.h>

#include "pipe/stage.h"

namespace pipeline::stages {

torch::Tensor sync_batch_norm(const torch::Tensor& x, torch::nn::BatchNorm2dImpl& bn, DataParallel& group, double share,
                              const std::string& what);

}  // namespace pipeline::stages
