#include "torch_util.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <caffe2/serialize/inline_container.h>
#include <torch/version.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <set>
#include <stdexcept>

#include <fmt/format.h>

namespace pipeline {

namespace torchu {

// ---------------------------------------------------------------- devices

torch::Device parse_device(const std::string& spec) {
  const bool cuda_ok = torch::cuda::is_available();
  if (spec == "auto") return cuda_ok ? torch::Device(torch::kCUDA, 0) : torch::Device(torch::kCPU);
  if (spec == "cpu") return torch::Device(torch::kCPU);
  int index = 0;
  if (spec == "cuda") {
    index = 0;
  } else if (spec.rfind("cuda:", 0) == 0 && spec.size() > 5 &&
             spec.find_first_not_of("0123456789", 5) == std::string::npos) {
    index = std::stoi(spec.substr(5));
  } else {
    throw std::runtime_error(
        fmt::format("unknown device '{}' (expected auto, cpu, cuda or cuda:N)", spec));
  }
  if (!cuda_ok)
    throw std::runtime_error(fmt::format(
        "device '{}' requested but CUDA is not available to this process (LibTorch {}, {} "
        "CUDA device(s) visible); use device: cpu or auto",
        spec, TORCH_VERSION, torch::cuda::device_count()));
  const auto count = static_cast<int>(torch::cuda::device_count());
  if (index >= count)
    throw std::runtime_error(
        fmt::format("device '{}' requested but only {} CUDA device(s) exist", spec, count));
  return torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(index));
}

// ---------------------------------------------------------------- images

ImageNorm image_norm(const Params& p, const std::string& what) {
  ImageNorm n;
  n.rescale = p.get(stages::image_norm::kRescale);
  n.mean = p.get(stages::image_norm::kMean);
  n.std = p.get(stages::image_norm::kStd);
  if (n.mean.empty() != n.std.empty())
    throw std::runtime_error(fmt::format("{}: give both 'mean' and 'std', or neither", what));
  if (!n.mean.empty() && (n.mean.size() != 3 || n.std.size() != 3))
    throw std::runtime_error(
        fmt::format("{}: 'mean' and 'std' need 3 values (R, G, B), got {} and {}", what,
                    n.mean.size(), n.std.size()));
  for (double s : n.std)
    if (!(s > 0)) throw std::runtime_error(fmt::format("{}: 'std' values must be > 0", what));
  return n;
}

torch::Tensor images_to_tensor(const std::vector<Sample>& samples, const ImageNorm& norm,
                               bool pinned) {
  if (samples.empty()) throw std::logic_error("images_to_tensor: empty batch");
  const cv::Mat& first = samples.front().image;
  const int h = first.rows, w = first.cols;
  for (const Sample& s : samples) {
    if (s.image.empty())
      throw SampleError(fmt::format("sample {} has no image", s.describe()));
    if (s.image.type() != CV_8UC3)
      throw SampleError(fmt::format("sample {}: expected an 8-bit 3-channel RGB image, got "
                                    "{} channel(s) of depth {}",
                                    s.describe(), s.image.channels(), s.image.depth()));
    if (s.image.rows != h || s.image.cols != w)
      throw SampleError(fmt::format("sample {} is {}x{} but the batch's first image is {}x{}; "
                                    "resize earlier in the graph (decode size: [H, W])",
                                    s.describe(), s.image.cols, s.image.rows, w, h));
  }
  float scale[3], shift[3];
  for (int c = 0; c < 3; ++c) {
    const double sd = norm.std.empty() ? 1.0 : norm.std[c];
    const double mu = norm.mean.empty() ? 0.0 : norm.mean[c];
    scale[c] = static_cast<float>(norm.rescale / sd);
    shift[c] = static_cast<float>(-mu / sd);
  }
  const auto n = static_cast<int64_t>(samples.size());
  torch::Tensor out =
      torch::empty({n, 3, h, w}, torch::TensorOptions().dtype(torch::kFloat).pinned_memory(pinned));
  float* base = out.data_ptr<float>();
  const int64_t plane = int64_t{h} * w;
  at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const cv::Mat& m = samples[static_cast<size_t>(i)].image;
      float* dst = base + i * 3 * plane;
      for (int y = 0; y < h; ++y) {
        const uint8_t* row = m.ptr<uint8_t>(y);
        for (int c = 0; c < 3; ++c) {
          float* d = dst + c * plane + int64_t{y} * w;
          for (int x = 0; x < w; ++x) d[x] = static_cast<float>(row[3 * x + c]) * scale[c] + shift[c];
        }
      }
    }
  });
  return out;
}

// ---------------------------------------------------------------- pipe::Tensor <-> torch

torch::Tensor to_torch(const Tensor& t) {
  if (!t.defined()) throw std::logic_error("to_torch: undefined tensor");
  std::shared_ptr<const float> keep = t.data;
  return torch::from_blob(const_cast<float*>(t.ptr()), t.shape,
                          [keep](void*) mutable { keep.reset(); }, torch::kFloat);
}

Tensor from_torch(const torch::Tensor& t) {
  torch::Tensor c = t.detach().to(torch::kCPU, torch::kFloat).contiguous();
  Tensor out;
  out.shape.assign(c.sizes().begin(), c.sizes().end());
  const float* p = c.data_ptr<float>();
  out.data = std::shared_ptr<const float>(p, [c](const float*) {});
  return out;
}

// ---------------------------------------------------------------- architectures

namespace nn = torch::nn;

bool is_builtin(const std::string& name) { return name == "vgg16" || name == "small_vgg"; }
std::vector<std::string> builtin_names() { return {"small_vgg", "vgg16"}; }

int64_t builtin_channels(const std::string& name) { return name == "vgg16" ? 512 : 128; }

namespace {
constexpr int kPool = 0;
// torchvision's make_layers: conv3x3(pad 1) [+ BN] + ReLU(inplace) per entry, M = maxpool 2x2.
nn::Sequential make_vgg(const std::vector<int>& cfg, bool batch_norm) {
  nn::Sequential s;
  int64_t in = 3;
  for (int c : cfg) {
    if (c == kPool) {
      s->push_back(nn::MaxPool2d(nn::MaxPool2dOptions(2).stride(2)));
      continue;
    }
    s->push_back(nn::Conv2d(nn::Conv2dOptions(in, c, 3).padding(1).bias(!batch_norm)));
    if (batch_norm) s->push_back(nn::BatchNorm2d(c));
    s->push_back(nn::ReLU(nn::ReLUOptions(true)));
    in = c;
  }
  return s;
}
}  // namespace

nn::Sequential make_builtin(const std::string& name) {
  const int M = kPool;
  if (name == "vgg16")  // torchvision cfg "D", no batch norm: features.0 ... features.30
    return make_vgg({64, 64, M, 128, 128, M, 256, 256, 256, M, 512, 512, 512, M, 512, 512, 512, M},
                    false);
  if (name == "small_vgg") return make_vgg({32, 32, M, 64, 64, M, 128, 128, M}, true);
  throw std::runtime_error(fmt::format("unknown builtin model '{}' (builtins: {})", name,
                                       fmt::join(builtin_names(), ", ")));
}

at::Generator make_generator(uint64_t seed) {
  return at::make_generator<at::CPUGeneratorImpl>(seed);
}

void init_module(nn::Module& m, at::Generator& gen) {
  torch::NoGradGuard no_grad;
  for (const auto& mod : m.modules(/*include_self=*/true)) {
    if (auto* conv = mod->as<nn::Conv2d>()) {
      const auto& w = conv->weight;
      const double fan_out = static_cast<double>(w.size(0) * w.size(2) * w.size(3));
      w.normal_(0.0, std::sqrt(2.0 / fan_out), gen);
      if (conv->bias.defined()) conv->bias.zero_();
    } else if (auto* lin = mod->as<nn::Linear>()) {
      const auto& w = lin->weight;
      const double limit = std::sqrt(6.0 / static_cast<double>(w.size(0) + w.size(1)));
      w.uniform_(-limit, limit, gen);
      if (lin->bias.defined()) lin->bias.zero_();
    } else if (auto* bn = mod->as<nn::BatchNorm2d>()) {
      bn->weight.fill_(1.0);
      bn->bias.zero_();
    }
  }
}

// ---------------------------------------------------------------- modules

namespace {

// torch.save(model.state_dict()) pickles a collections.OrderedDict (and sets its _metadata
// with SETITEM and BUILD), none of which LibTorch 1.13's unpickler reads: it turns
// OrderedDict into None. A plain dict of the same tensors loads.
bool ordered_dict_pickle(const std::string& path) {
  caffe2::serialize::PyTorchStreamReader reader(path);
  auto [data, size] = reader.getRecord("data.pkl");
  const std::string head = std::string("\x80\x02", 2) + "ccollections\nOrderedDict\n";
  return size >= head.size() && std::string(static_cast<const char*>(data.get()), head.size()) == head;
}

std::map<std::string, torch::Tensor> read_state_dict(const std::string& path) {
  if (ordered_dict_pickle(path))
    throw std::runtime_error(
        "it pickles a collections.OrderedDict (torch.save(model.state_dict()) does), which LibTorch 1.13 cannot "
        "read; save it once as a plain dict, e.g. with Debian's python3-torch: python3 -c 'import torch; "
        "torch.save(dict(torch.load(\"IN.pth\")), \"OUT.pth\")' (docs/models.md)");
  std::ifstream in(path, std::ios::binary);
  const std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const c10::IValue v = torch::pickle_load(bytes);
  if (!v.isGenericDict()) throw std::runtime_error(fmt::format("holds a {}, not a state dict", v.tagKind()));
  std::map<std::string, torch::Tensor> out;
  for (const auto& e : v.toGenericDict())
    if (e.key().isString() && e.value().isTensor()) out[e.key().toStringRef()] = e.value().toTensor();
  return out;
}

// The file's tensors under the module's names: "features.<name>" when the file has any.
std::map<std::string, torch::Tensor> base_tensors(std::map<std::string, torch::Tensor> all) {
  std::map<std::string, torch::Tensor> features;
  for (const auto& [k, t] : all)
    if (k.rfind("features.", 0) == 0) features[k.substr(9)] = t;
  return features.empty() ? all : features;
}

}  // namespace

void load_state_dict(nn::Module& m, const std::string& path, const std::string& what) {
  std::map<std::string, torch::Tensor> file;
  try {
    file = base_tensors(read_state_dict(path));
  } catch (const std::exception& e) {
    const std::string msg = e.what();
    throw std::runtime_error(fmt::format("{}: '{}' is neither a torch::save()d module nor a state dict: {}", what,
                                         path, msg.substr(0, msg.find('\n'))));
  }
  torch::NoGradGuard no_grad;
  auto assign = [&](const std::string& name, torch::Tensor& dst) {
    const auto it = file.find(name);
    if (it == file.end())
      throw std::runtime_error(fmt::format("{}: state dict '{}' has no tensor '{}' (nor 'features.{}')", what, path, name, name));
    if (it->second.sizes() != dst.sizes())
      throw std::runtime_error(fmt::format("{}: state dict '{}': tensor '{}' has shape [{}], the model needs [{}]", what,
                                           path, name, fmt::join(it->second.sizes(), ", "), fmt::join(dst.sizes(), ", ")));
    dst.copy_(it->second);
  };
  for (auto& p : m.named_parameters()) assign(p.key(), p.value());
  for (auto& b : m.named_buffers()) assign(b.key(), b.value());
}


void freeze(nn::Module& m) {
  m.eval();
  for (auto& p : m.parameters()) p.set_requires_grad(false);
}

std::vector<torch::Tensor> snapshot(const nn::Module& m) {
  std::vector<torch::Tensor> out;
  for (const auto& p : m.parameters()) out.push_back(p.detach().clone());
  for (const auto& b : m.buffers()) out.push_back(b.detach().clone());
  return out;
}

void restore(nn::Module& m, const std::vector<torch::Tensor>& snap) {
  torch::NoGradGuard no_grad;
  size_t i = 0;
  for (auto& p : m.parameters()) p.copy_(snap.at(i++));
  for (auto& b : m.buffers()) b.copy_(snap.at(i++));
}

}  // namespace torchu
}  // namespace pipeline
