// No LibTorch here: see torch_schemas.h.
#include "torch_schemas.h"

namespace pipeline::torchu {

ParamSpec param(std::string name, ParamType type, std::string doc,
                std::optional<ParamValue> def, std::optional<double> min,
                std::optional<double> max) {
  ParamSpec p;
  p.name = std::move(name);
  p.type = type;
  p.doc = std::move(doc);
  p.default_value = std::move(def);
  p.min = min;
  p.max = max;
  return p;
}

std::vector<ParamSpec> image_norm_params() {
  return {
      param("rescale", ParamType::number,
            "pixel scale: x = pixel * rescale (Keras' rescale=1./255)", 1.0 / 255.0, 0.0),
      param("mean", ParamType::number_list,
            "per-channel RGB mean subtracted after rescale; [] = none",
            std::vector<double>{}),
      param("std", ParamType::number_list,
            "per-channel RGB std dividing after the mean; [] = none (give with mean)",
            std::vector<double>{}, 0.0),
  };
}

}  // namespace pipeline::torchu

namespace pipeline::stages {

using torchu::param;

StageSchema convbase_schema() {
  StageSchema s;
  s.name = "convbase";
  s.doc = "Frozen convolutional base (eval mode, no gradients): a batch of RGB images -> "
          "per-sample float feature maps (C, H', W'). Builtin architectures (vgg16 as "
          "torchvision's features, small_vgg for 28-64 px) or a TorchScript file.";
  s.kind = StageKind::batch_map;
  s.concurrency = Concurrency::serial;  // owns the model and the device; batches internally
  s.has_device = true;
  s.consumes = Payload::image;
  s.produces = Payload::features;
  s.param(param("model", ParamType::string,
                "builtin:vgg16, builtin:small_vgg, or a TorchScript file (relative to the graph)",
                std::nullopt));
  s.param(param("weights", ParamType::string,
                "weights for a builtin, written by torch::save(module) (e.g. by train_base); "
                "\"\" = random init from init_seed, only useful for tests",
                std::string()));
  s.param(param("init_seed", ParamType::integer, "seed of the random init (weights: \"\")",
                int64_t{0}, 0.0));
  s.param(param("device", ParamType::string, "auto (CUDA when available), cpu, cuda, cuda:N",
                std::string("auto")));
  s.param(param("batch", ParamType::integer,
                "images per forward pass; 0 = chosen for the device (64 on the CPU, 256 on CUDA)",
                int64_t{0}, 0.0, 65536.0));
  for (ParamSpec& p : torchu::image_norm_params()) s.param(std::move(p));
  s.param(param("bf16", ParamType::boolean, "CUDA only: forward under bfloat16 autocast", false));
  s.example = "{stage: convbase, model: \"builtin:small_vgg\", weights: ../models/small_vgg_fmnist.pt, "
              "device: auto}";
  return s;
}

StageSchema dense_head_schema() {
  StageSchema s;
  s.name = "dense_head";
  s.doc = "Trainable classifier on frozen features: Flatten -> Dense(hidden, ReLU) -> Dropout -> "
          "Dense(1)+sigmoid for 2 classes, Dense(C)+softmax otherwise. Trains on the train "
          "split (one optimizer step per batch), evaluates on validation/test; writes <node>.pt (head.pt for a node named head).";
  s.kind = StageKind::sink;
  s.concurrency = Concurrency::serial;  // one model, optimizer steps in batch order
  s.consumes = Payload::features;
  s.produces = Payload::any;
  s.param(param("hidden", ParamType::integer, "units of the hidden Dense layer", int64_t{256}, 1.0,
                1048576.0));
  s.param(param("dropout", ParamType::number, "dropout rate after the hidden layer, in [0, 1)",
                0.5, 0.0, 1.0));
  ParamSpec opt = param("optimizer", ParamType::string,
                        "rmsprop (Keras defaults: rho 0.9, eps 1e-7), adam (eps 1e-7) or sgd",
                        std::string("rmsprop"));
  opt.choices = {"rmsprop", "adam", "sgd"};
  s.param(opt);
  s.param(param("lr", ParamType::number, "learning rate", 1e-4, 0.0, 10.0));
  s.param(param("weight_decay", ParamType::number, "L2 penalty added to the gradient", 0.0, 0.0));
  s.param(param("momentum", ParamType::number, "momentum (sgd only)", 0.0, 0.0, 1.0));
  s.example = "{stage: dense_head, hidden: 256, dropout: 0.5, optimizer: rmsprop, lr: 2.0e-5}";
  return s;
}

StageSchema train_base_schema() {
  StageSchema s;
  s.name = "train_base";
  s.doc = "Trains a builtin conv base end to end (+ global-average-pool or flatten + linear "
          "classifier, Adam) on image batches and saves the base's weights for convbase.";
  s.kind = StageKind::sink;
  s.concurrency = Concurrency::serial;  // one model, optimizer steps in batch order
  s.has_device = true;
  s.consumes = Payload::image;
  s.produces = Payload::any;
  s.param(param("model", ParamType::string, "builtin:small_vgg or builtin:vgg16",
                std::string("builtin:small_vgg")));
  ParamSpec cls = param("classifier", ParamType::string,
                        "gap (global average pool) or flatten, then Linear(C)", std::string("gap"));
  cls.choices = {"gap", "flatten"};
  s.param(cls);
  s.param(param("lr", ParamType::number, "Adam learning rate", 1e-3, 0.0, 10.0));
  s.param(param("weight_decay", ParamType::number, "L2 penalty added to the gradient", 0.0, 0.0));
  s.param(param("device", ParamType::string, "auto (CUDA when available), cpu, cuda, cuda:N",
                std::string("auto")));
  s.param(param("out", ParamType::string,
                "where save() writes the base's weights (relative to the graph file)",
                std::string("models/small_vgg_fmnist.pt")));
  for (ParamSpec& p : torchu::image_norm_params()) s.param(std::move(p));
  s.example = "{stage: train_base, model: \"builtin:small_vgg\", out: ../models/small_vgg_fmnist.pt}";
  return s;
}

}  // namespace pipeline::stages
