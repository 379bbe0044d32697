// model.pt: see script_export.h.
#include "script_export.h"

#include <sstream>

#include <fmt/format.h>

#include "files.h"

namespace pipeline::stages {
namespace {

namespace nn = torch::nn;

// A TorchScript int list literal from a LibTorch option such as ExpandingArray<2>.
template <typename A>
std::string ints(const A& a) {
  return fmt::format("[{}]", fmt::join(a->begin(), a->end(), ", "));
}

std::string conv_padding(const nn::detail::ConvNdOptions<2>& o, const std::string& what) {
  if (const auto* p = c10::get_if<torch::ExpandingArray<2>>(&o.padding())) return ints(*p);
  throw std::runtime_error(fmt::format("{}: padding 'valid'/'same' has no TorchScript form here", what));
}

void script_conv(ScriptWriter& w, const nn::Conv2dImpl& c, const std::string& name) {
  const auto& o = c.options;
  if (o.padding_mode().index() != 0)  // kZeros is the variant's first alternative
    throw std::runtime_error(fmt::format("layer {}: only zero padding has a TorchScript form here", name));
  const std::string bias = c.bias.defined() ? w.tensor(name + "_bias", c.bias) : "None";
  w.line(fmt::format("x = torch.conv2d(x, {}, {}, {}, {}, {}, {})", w.tensor(name + "_weight", c.weight), bias,
                     ints(o.stride()), conv_padding(o, name), ints(o.dilation()), o.groups()));
}

void script_batch_norm(ScriptWriter& w, const nn::BatchNorm2dImpl& b, const std::string& name) {
  const auto opt = [&](const torch::Tensor& t, const char* part) {
    return t.defined() ? w.tensor(name + "_" + part, t) : std::string("None");
  };
  if (!b.options.track_running_stats())
    throw std::runtime_error(fmt::format("layer {}: batch norm without running statistics", name));
  w.line(fmt::format("x = torch.batch_norm(x, {}, {}, {}, {}, False, 0.0, {:.9g}, False)", opt(b.weight, "weight"),
                     opt(b.bias, "bias"), opt(b.running_mean, "mean"), opt(b.running_var, "var"), b.options.eps()));
}

void script_max_pool(ScriptWriter& w, const nn::MaxPool2dImpl& p) {
  const auto& o = p.options;
  w.line(fmt::format("x = torch.max_pool2d(x, {}, {}, {}, {}, {})", ints(o.kernel_size()), ints(o.stride()),
                     ints(o.padding()), ints(o.dilation()), o.ceil_mode() ? "True" : "False"));
}

// The input size model.pt expects, from the last decode/resize on the path (0 x 0: none).
struct Prepare {
  int64_t height = 0, width = 0;
  std::string yaml;  // the decode/resize nodes, for `pipe predict`
};

std::string step_yaml(const PathStep& s) {
  std::string out = fmt::format("- {{stage: {}", s.stage);
  for (const auto& [name, value] : s.params->values()) out += fmt::format(", {}: {}", name, param_value_string(value));
  return out + "}\n";
}

// Splits the path into the image preparation (decode, resize), which pipe predict redoes
// with the same stages, and the Scriptable parts; cache nodes compute nothing.
std::string split_path(const std::vector<PathStep>& upstream, Prepare& prep, std::vector<const Scriptable*>& parts) {
  for (const PathStep& s : upstream) {
    if (s.stage == "cache") continue;
    if (s.stage == "decode" || s.stage == "resize") {
      if (!parts.empty()) return fmt::format("node '{}' ({}) comes after the conv base", s.node, s.stage);
      const std::vector<int64_t> size = s.params->integers("size");
      prep.height = size.at(0);
      prep.width = size.at(1);
      prep.yaml += step_yaml(s);
    } else if (const auto* part = dynamic_cast<const Scriptable*>(s.impl)) {
      parts.push_back(part);
    } else {
      return fmt::format("node '{}' (stage {}) has no TorchScript form", s.node, s.stage);
    }
  }
  if (prep.yaml.empty()) return "no decode node on the path";
  return "";
}

// Channels-last pictures of any size -> float (N, 3, H, W) pixels at the graph's size.
void script_prepare(ScriptWriter& w, const Prepare& p) {
  w.line("if x.dim() == 3:\n        x = x.unsqueeze(3)");
  w.line("assert x.dim() == 4, 'model.pt: expected images as (N, H, W, C) or (N, H, W)'");
  w.line("c = x.size(3)");
  w.line("assert c == 1 or c == 3 or c == 4, 'model.pt: expected 1 (gray), 3 (RGB) or 4 (RGBA) channels last'");
  w.line("if c == 1:\n        x = x.expand(-1, -1, -1, 3)");
  w.line("if c == 4:\n        x = x[:, :, :, :3]");
  w.line("x = x.permute(0, 3, 1, 2).float()");
  w.line(fmt::format("if x.size(2) != {0} or x.size(3) != {1}:\n        x = torch.upsample_bilinear2d(x, [{0}, {1}], False, None, None)",
                     p.height, p.width));
}

}  // namespace

ScriptWriter::ScriptWriter(const std::string& type) : module_("__torch__.pipe." + type) {}

std::string ScriptWriter::tensor(const std::string& name, const torch::Tensor& t) {
  module_.register_buffer(name, t.detach().to(torch::kCPU).contiguous().clone());
  return "self." + name;
}

std::string ScriptWriter::module(const std::string& name, const torch::jit::Module& m) {
  torch::jit::Module copy = m.clone();
  copy.to(torch::kCPU);
  copy.eval();
  module_.register_module(name, copy);
  return "self." + name + ".forward";
}

void ScriptWriter::line(const std::string& statement) { body_ += "    " + statement + "\n"; }

torch::jit::Module ScriptWriter::finish() {
  module_.define("def forward(self, x: Tensor) -> Tensor:\n" + body_ + "    return x\n");
  module_.eval();
  return module_;
}

void script_norm(ScriptWriter& w, const torchu::ImageNorm& norm) {
  const torchu::PixelAffine a = torchu::pixel_affine(norm);  // as images_to_tensor computes them
  w.line(fmt::format("x = x * {} + {}", w.tensor("pixel_scale", torch::tensor(at::ArrayRef<float>(a.scale)).view({1, 3, 1, 1})),
                     w.tensor("pixel_shift", torch::tensor(at::ArrayRef<float>(a.shift)).view({1, 3, 1, 1}))));
}

void script_layers(ScriptWriter& w, const nn::Sequential& layers, const std::string& prefix) {
  size_t i = 0;
  for (const auto& layer : layers->children()) {
    const std::string name = fmt::format("{}{}", prefix, i++);
    if (const auto* c = layer->as<nn::Conv2d>()) script_conv(w, *c, name);
    else if (const auto* b = layer->as<nn::BatchNorm2d>()) script_batch_norm(w, *b, name);
    else if (layer->as<nn::ReLU>()) w.line("x = torch.relu(x)");
    else if (const auto* p = layer->as<nn::MaxPool2d>()) script_max_pool(w, *p);
    else throw std::runtime_error(fmt::format("layer {} ({}) has no TorchScript form here", name, layer->name()));
  }
}

std::string write_model(const std::vector<PathStep>& upstream, const torch::jit::Module& net,
                        const std::vector<std::string>& classes, const std::string& file) {
  Prepare prep;
  std::vector<const Scriptable*> parts;
  if (std::string why = split_path(upstream, prep, parts); !why.empty()) return why;
  ScriptWriter w("Model");
  script_prepare(w, prep);
  for (size_t i = 0; i < parts.size(); ++i)
    w.line(fmt::format("x = {}(x)", w.module(fmt::format("part{}", i), parts[i]->script())));
  w.line(fmt::format("x = {}(x)", w.module("head", net)));
  // Logits -> probabilities: one logit is a two-class sigmoid head.
  w.line("if x.size(1) == 1:\n        p = torch.sigmoid(x)\n        x = torch.cat([1.0 - p, p], 1)\n    else:\n        x = torch.softmax(x, 1)");
  torch::jit::Module model = w.finish();
  model.register_attribute("classes", c10::ListType::ofStrings(), c10::List<std::string>(classes));
  model.register_attribute("input_size", c10::ListType::ofInts(), c10::List<int64_t>({prep.height, prep.width}));
  model.register_attribute("pipe_prepare", c10::StringType::get(), prep.yaml);
  model.register_attribute("pipe_version", c10::StringType::get(), std::string(PIPE_VERSION_STRING));
  std::ostringstream bytes;
  model.save(bytes);
  write_file_atomic(file, bytes.str());
  return "";
}

}  // namespace pipeline::stages
