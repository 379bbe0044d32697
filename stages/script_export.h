// A run's model.pt: what happens to an image at evaluation time, base and head together, as
// one TorchScript file that runs without pipe (torch::jit::load in C++, torch.jit.load in
// Python).
//
// forward(images) takes pictures as a uint8 or float tensor of pixel values 0..255, shaped
// (N, H, W, C) channels-last (the layout of decoded images in OpenCV, PIL and numpy), C = 3
// RGB (not OpenCV's BGR), 1 gray or 4 RGBA (alpha dropped), or (N, H, W) gray. It returns
// (N, classes) class probabilities: softmax, or [1 - p, p] from the sigmoid of a two-class
// head. Pictures of another size than the graph's input size are resized inside (bilinear,
// not antialiased, so that ONNX can express it: shrink large photos with an area filter
// first); `pipe predict` decodes and resizes as the run did, so it matches the run exactly.
// Attributes: classes (List[str]), input_size ([H, W]), pipe_prepare (the graph's decode and
// resize nodes as YAML, for `pipe predict`), pipe_version.
//
// The module is made from TorchScript source (torch::jit::Module::define) with the weights
// as buffers: there is no Python and no tracer in a C++-only LibTorch.
#pragma once

#include <string>
#include <vector>

#include <torch/script.h>
#include <torch/torch.h>

#include "pipe/stage.h"
#include "torch_util.h"

namespace pipeline::stages {

// A stage whose evaluation-time computation has a TorchScript form. Image stages (convbase)
// take float (N, 3, H, W) pixels in [0, 255]; others take what the stage before returned.
class Scriptable {
 public:
  virtual ~Scriptable() = default;
  virtual torch::jit::Module script() const = 0;
};

// One TorchScript module, written statement by statement: forward(self, x: Tensor) -> Tensor
// runs the lines in order and returns x. Tensors become buffers (the model is frozen).
class ScriptWriter {
 public:
  explicit ScriptWriter(const std::string& type);
  // Registers a CPU copy of `t` as buffer `name`; returns the expression that reads it.
  std::string tensor(const std::string& name, const torch::Tensor& t);
  // Registers `m` (moved to the CPU) as submodule `name`; returns the expression calling it.
  std::string module(const std::string& name, const torch::jit::Module& m);
  void line(const std::string& statement);
  torch::jit::Module finish();

 private:
  torch::jit::Module module_;
  std::string body_;
};

// The pixel normalization convbase and train_base apply (torch_util.h ImageNorm).
void script_norm(ScriptWriter& w, const torchu::ImageNorm& norm);
// The layers of a builtin base (Conv2d, BatchNorm2d, ReLU, MaxPool2d, in order), evaluation
// mode. Throws std::runtime_error naming a layer it has no form for.
void script_layers(ScriptWriter& w, const torch::nn::Sequential& layers, const std::string& prefix);

// Writes model.pt for `upstream` followed by `net` (the sink's network, returning logits).
// Returns "" when written, else why the path has no model form.
std::string write_model(const std::vector<PathStep>& upstream, const torch::jit::Module& net,
                        const std::vector<std::string>& classes, const std::string& file);

}  // namespace pipeline::stages
