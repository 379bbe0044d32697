// No LibTorch here: see torch_schemas.h.
#include "torch_schemas.h"

namespace pipeline::stages {

namespace {
Schema& image_norm_params(Schema& s) {
  return s.param(image_norm::kRescale).param(image_norm::kMean).param(image_norm::kStd);
}
}  // namespace

Schema convbase_schema() {
  using namespace convbase;
  Schema s("convbase",
           "Frozen convolutional base (eval mode, no gradients): a batch of RGB images -> "
           "per-sample float feature maps (C, H', W'). Builtin architectures (vgg16 as "
           "torchvision's features, small_vgg for 28-64 px) or a TorchScript file.");
  // A batch stage: serial, owns the model and the device; batches internally.
  s.device().consumes(Payload::image).produces(Payload::features);
  s.param(kModel).param(kWeights).param(kInitSeed).param(kDevice).param(kBatch);
  image_norm_params(s).param(kBf16).param(kOptimize);
  s.example("{stage: convbase, model: \"builtin:small_vgg\", weights: ../models/small_vgg_fmnist.pt, "
            "device: auto}");
  return s;
}

Schema dense_head_schema() {
  using namespace dense_head;
  // A sink: serial, one model, optimizer steps in batch order.
  return Schema("dense_head",
                "Trainable classifier on frozen features: Flatten -> Dense(hidden, ReLU) -> Dropout -> "
                "Dense(1)+sigmoid for 2 classes, Dense(C)+softmax otherwise. Trains on the train "
                "split (one optimizer step per batch), evaluates on validation/test; writes <node>.pt "
                "(head.pt for a node named head).")
      .consumes(Payload::features)
      .produces(Payload::any)
      .param(kHidden)
      .param(kDropout)
      .param(kOptimizer)
      .param(kLr)
      .param(kWeightDecay)
      .param(kMomentum)
      .example("{stage: dense_head, hidden: 256, dropout: 0.5, optimizer: rmsprop, lr: 2.0e-5}");
}

Schema train_base_schema() {
  using namespace train_base;
  // A sink: serial, one model, optimizer steps in batch order.
  Schema s("train_base",
           "Trains a builtin conv base end to end (+ global-average-pool or flatten + linear "
           "classifier, Adam) on image batches and saves the base's weights for convbase.");
  s.device().consumes(Payload::image).produces(Payload::any);
  s.param(kModel).param(kClassifier).param(kLr).param(kWeightDecay).param(kDevice).param(kOut).param(kThreads);
  image_norm_params(s);
  s.example("{stage: train_base, model: \"builtin:small_vgg\", out: ../models/small_vgg_fmnist.pt}");
  return s;
}

}  // namespace pipeline::stages
