// The parameters and schemas of the LibTorch stages (convbase, dense_head, train_base), kept
// out of their torch translation units so that code built without LibTorch (the clang fuzz
// targets in tests/fuzz/) validates graphs against the real schemas, not copies that could
// drift. The stages read their values through these same declarations.
#pragma once

#include <string>
#include <vector>

#include "pipe/schema.h"

namespace pipeline::stages {

// `rescale`, `mean`, `std`: what torchu::image_norm() reads (convbase and train_base).
namespace image_norm {
inline const auto kRescale =
    param::number("rescale", 1.0 / 255.0, "pixel scale: x = pixel * rescale (Keras' rescale=1./255)").min(0);
inline const auto kMean = param::numbers("mean", {}, "per-channel RGB mean subtracted after rescale; [] = none");
inline const auto kStd =
    param::numbers("std", {}, "per-channel RGB std dividing after the mean; [] = none (give with mean)").min(0);
}  // namespace image_norm

namespace convbase {
inline const auto kModel = param::string(
    "model", param::required, "builtin:vgg16, builtin:small_vgg, or a TorchScript file (relative to the graph)").path(true);
inline const auto kWeights = param::string("weights", "",
                                           "weights for a builtin: a torch::save(module) file (e.g. by "
                                           "train_base) or a PyTorch state dict (torchvision's vgg16-397923af.pth); "
                                           "\"\" = random init from init_seed, only useful for tests").path(true);
inline const auto kInitSeed = param::integer("init_seed", 0, "seed of the random init (weights: \"\")").min(0);
inline const auto kDevice = param::string("device", "auto", "auto (CUDA when available), cpu, cuda, cuda:N");
inline const auto kBatch =
    param::integer("batch", 0, "images per forward pass; 0 = chosen for the device (64 on the CPU, 256 on CUDA)")
        .range(0, 65536);
inline const auto kBf16 = param::boolean(
    "bf16", false, "CUDA only: forward under bfloat16 autocast (float16 on a device without bfloat16 convolutions)");
enum class Optimize { automatic, off };
inline const auto kOptimize = param::choice(
    "optimize", {{"auto", Optimize::automatic}, {"off", Optimize::off}}, Optimize::automatic,
    "auto: on the CPU, the base runs as frozen TorchScript optimized for inference (BatchNorm folded "
    "into the convolutions, conv+ReLU fused, weights prepacked); features agree with eager within "
    "1e-4 of their largest value. off: the eager forward");
}  // namespace convbase

namespace dense_head {
enum class Optimizer { rmsprop, adam, sgd };
inline const auto kHidden = param::integer("hidden", 256, "units of the hidden Dense layer").range(1, 1048576);
inline const auto kDropout = param::number("dropout", 0.5, "dropout rate after the hidden layer, in [0, 1)").range(0, 1);
inline const auto kOptimizer =
    param::choice("optimizer",
                  {{"rmsprop", Optimizer::rmsprop}, {"adam", Optimizer::adam}, {"sgd", Optimizer::sgd}},
                  Optimizer::rmsprop, "rmsprop (Keras defaults: rho 0.9, eps 1e-7), adam (eps 1e-7) or sgd");
inline const auto kLr = param::number("lr", 1e-4, "learning rate").range(0, 10);
inline const auto kWeightDecay = param::number("weight_decay", 0, "L2 penalty added to the gradient").min(0);
inline const auto kMomentum = param::number("momentum", 0, "momentum (sgd only)").range(0, 1);
}  // namespace dense_head

namespace train_base {
enum class Classifier { gap, flatten };
inline const auto kModel = param::string("model", "builtin:small_vgg", "builtin:small_vgg or builtin:vgg16");
inline const auto kClassifier =
    param::choice("classifier", {{"gap", Classifier::gap}, {"flatten", Classifier::flatten}}, Classifier::gap,
                  "gap (global average pool) or flatten, then Linear(C)");
inline const auto kLr = param::number("lr", 1e-3, "Adam learning rate").range(0, 10);
inline const auto kWeightDecay = param::number("weight_decay", 0, "L2 penalty added to the gradient").min(0);
inline const auto kDevice = param::string("device", "auto", "auto (CUDA when available), cpu, cuda, cuda:N");
inline const auto kOut = param::string("out", "models/small_vgg_fmnist.pt",
                                       "where save() writes the base's weights (relative to the graph file)").path();
inline const auto kThreads =
    param::integer("threads", 2,
                   "intra-op threads while training, fixed whatever --threads says: convolution "
                   "reductions split by thread count, so metrics repeat exactly only at a fixed count")
        .range(1, 1024);
}  // namespace train_base

Schema convbase_schema();
Schema dense_head_schema();
Schema train_base_schema();

}  // namespace pipeline::stages
