#include "torch_util.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <caffe2/serialize/inline_container.h>
#include <torch/version.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <set>
#include <stdexcept>

#include <fmt/format.h>

#include "torch_pickle.h"

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

namespace {
// Every image of samples[begin, begin + count) is 8-bit RGB and of samples[0]'s size.
void check_images(const std::vector<Sample>& samples, size_t begin, size_t count) {
  const cv::Mat& first = samples.front().image;
  const int h = first.rows, w = first.cols;
  for (size_t i = begin; i < begin + count; ++i) {
    const Sample& s = samples[i];
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
}
}  // namespace

PixelAffine pixel_affine(const ImageNorm& norm) {
  PixelAffine a;
  for (size_t c = 0; c < 3; ++c) {
    const double sd = norm.std.empty() ? 1.0 : norm.std[c];
    const double mu = norm.mean.empty() ? 0.0 : norm.mean[c];
    a.scale[c] = static_cast<float>(norm.rescale / sd);
    a.shift[c] = static_cast<float>(-mu / sd);
  }
  return a;
}

torch::Tensor images_to_tensor(const std::vector<Sample>& samples, const ImageNorm& norm,
                               bool pinned) {
  if (samples.empty()) throw std::logic_error("images_to_tensor: empty batch");
  check_images(samples, 0, samples.size());
  const int h = samples.front().image.rows, w = samples.front().image.cols;
  const auto [scale, shift] = pixel_affine(norm);
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

torch::Tensor images_to_uint8(const std::vector<Sample>& samples, size_t begin, size_t count,
                              bool pinned) {
  if (count == 0 || begin + count > samples.size())
    throw std::logic_error("images_to_uint8: empty or out-of-range slice");
  check_images(samples, begin, count);
  const int h = samples.front().image.rows, w = samples.front().image.cols;
  const int64_t bytes = int64_t{h} * w * 3;
  torch::Tensor out = torch::empty({static_cast<int64_t>(count), h, w, 3},
                                   torch::TensorOptions().dtype(torch::kUInt8).pinned_memory(pinned));
  uint8_t* base = out.data_ptr<uint8_t>();
  at::parallel_for(0, static_cast<int64_t>(count), 1, [&](int64_t from, int64_t to) {
    for (int64_t i = from; i < to; ++i) {
      const cv::Mat& m = samples[begin + static_cast<size_t>(i)].image;
      uint8_t* dst = base + i * bytes;
      if (m.isContinuous()) {
        std::memcpy(dst, m.data, static_cast<size_t>(bytes));
      } else {  // a ROI of a larger image: row by row
        for (int y = 0; y < h; ++y) std::memcpy(dst + int64_t{y} * w * 3, m.ptr<uint8_t>(y), size_t{3} * w);
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

at::ScalarType scalar_type(torchpk::DType t) {
  using D = torchpk::DType;
  switch (t) {
    case D::Float32: return at::kFloat;
    case D::Float64: return at::kDouble;
    case D::Float16: return at::kHalf;
    case D::BFloat16: return at::kBFloat16;
    case D::Int64: return at::kLong;
    case D::Int32: return at::kInt;
    case D::Int16: return at::kShort;
    case D::Int8: return at::kChar;
    case D::UInt8: return at::kByte;
    case D::Bool: return at::kBool;
  }
  return at::kFloat;
}

std::string file_head(const std::string& path, size_t n) {
  std::ifstream in(path, std::ios::binary);
  std::string head(n, '\0');
  in.read(head.data(), static_cast<std::streamsize>(n));
  head.resize(static_cast<size_t>(in.gcount()));
  return head;
}

// Pre-0.1.10 torch.save wrote a tar archive (its "ustar" magic at byte 257).
bool is_tar(const std::string& path) {
  const std::string head = file_head(path, 262);
  return head.size() == 262 && head.compare(257, 5, "ustar") == 0;
}

std::string read_whole(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::string bytes(std::filesystem::file_size(path), '\0');
  if (!in.read(bytes.data(), static_cast<std::streamsize>(bytes.size())))
    throw std::runtime_error(fmt::format("cannot read it: {}", std::strerror(errno)));
  return bytes;
}

// A torch.save file's tensors: the index from the pickle first, each storage made only when
// a tensor of it is asked for (of a zip archive only those records are read: a conv base
// needs 58 of VGG16's 528 MB; a legacy file is read whole, its layout being sequential).
class StateDictFile {
 public:
  explicit StateDictFile(const std::string& path) {
    if (torchpk::is_legacy(file_head(path, 16))) {
      bytes_ = read_whole(path);
      legacy_ = torchpk::parse_legacy(bytes_);
      index_ = legacy_.dict;
      return;
    }
    if (is_tar(path))
      throw std::runtime_error("it is a tar archive (torch.save before PyTorch 0.1.10), which pipe does not read; "
                               "load and save it again with a current PyTorch");
    zip_ = std::make_unique<caffe2::serialize::PyTorchStreamReader>(path);
    if (zip_->hasRecord("byteorder")) {
      auto [data, size] = zip_->getRecord("byteorder");
      if (std::string(static_cast<const char*>(data.get()), size) != "little")
        throw std::runtime_error("it was written on a big-endian machine");
    }
    auto [data, size] = zip_->getRecord("data.pkl");
    index_ = torchpk::parse_state_dict(std::string_view(static_cast<const char*>(data.get()), size), "data.pkl");
  }

  const torchpk::StateDict& index() const { return index_; }

  torch::Tensor tensor(const torchpk::TensorInfo& t) {
    return storage(t.storage).as_strided(t.sizes, t.strides, t.offset);  // checked by torchpk
  }

 private:
  // The storage as a 1-D tensor of its dtype.
  torch::Tensor storage(const std::string& key) {
    if (const auto it = storages_.find(key); it != storages_.end()) return it->second;
    const torchpk::StorageInfo& info = index_.storages.at(key);
    const auto options = torch::TensorOptions().dtype(scalar_type(info.dtype));
    const auto element = static_cast<size_t>(torchpk::element_size(info.dtype));
    if (!zip_) {
      // Copied out: a storage's bytes in a legacy file need not be aligned for its dtype.
      torch::Tensor s = torch::empty({info.numel}, options);
      std::memcpy(s.data_ptr(), bytes_.data() + legacy_.data.at(key), static_cast<size_t>(info.numel) * element);
      return storages_[key] = s;  // parse_legacy checked that the bytes are in the file
    }
    auto [data, size] = zip_->getRecord("data/" + key);
    if (size % element != 0 || size / element != static_cast<uint64_t>(info.numel))  // no overflow
      throw std::runtime_error(fmt::format("record data/{} holds {} bytes, its tensors' pickle says {} x {}", key,
                                           size, info.numel, element));
    auto keep = std::make_shared<at::DataPtr>(std::move(data));  // freed with the last tensor of it
    return storages_[key] = torch::from_blob(keep->get(), {info.numel}, [keep](void*) {}, options);
  }

  std::unique_ptr<caffe2::serialize::PyTorchStreamReader> zip_;
  std::string bytes_;  // a legacy file, whole
  torchpk::Legacy legacy_;
  torchpk::StateDict index_;
  std::map<std::string, torch::Tensor> storages_;
};

}  // namespace

bool is_state_dict_file(const std::string& path) {
  if (torchpk::is_legacy(file_head(path, 16))) return true;
  try {
    caffe2::serialize::PyTorchStreamReader reader(path);
    return reader.hasRecord("data.pkl") && !reader.hasRecord("constants.pkl");
  } catch (const std::exception&) {
    return false;
  }
}

std::vector<std::pair<std::string, torch::Tensor>> read_state_dict(const std::string& path) {
  StateDictFile file(path);
  std::vector<std::pair<std::string, torch::Tensor>> out;
  for (const torchpk::TensorInfo& t : file.index().tensors) out.emplace_back(t.name, file.tensor(t));
  return out;
}

namespace {

// The file's tensors under the module's names: "features.<name>" when the file has any.
std::map<std::string, const torchpk::TensorInfo*> base_tensors(const torchpk::StateDict& all) {
  std::map<std::string, const torchpk::TensorInfo*> every, features;
  for (const torchpk::TensorInfo& t : all.tensors) {
    every[t.name] = &t;
    if (t.name.rfind("features.", 0) == 0) features[t.name.substr(9)] = &t;
  }
  return features.empty() ? every : features;
}

std::string first_line(const std::string& s) { return s.substr(0, s.find('\n')); }

}  // namespace

void load_state_dict(nn::Module& m, const std::string& path, const std::string& what) {
  auto fail = [&](const std::exception& e) {
    return std::runtime_error(fmt::format("{}: cannot read state dict '{}': {}", what, path, first_line(e.what())));
  };
  std::unique_ptr<StateDictFile> file;
  std::map<std::string, const torchpk::TensorInfo*> named;
  try {
    file = std::make_unique<StateDictFile>(path);
    named = base_tensors(file->index());
  } catch (const std::exception& e) {
    throw fail(e);
  }
  // Every name and shape first, so that a wrong file is refused before any data is read.
  std::vector<std::pair<torch::Tensor, const torchpk::TensorInfo*>> plan;
  auto check = [&](const std::string& name, const torch::Tensor& dst) {
    const auto it = named.find(name);
    if (it == named.end())
      throw std::runtime_error(fmt::format("{}: state dict '{}' has no tensor '{}' (nor 'features.{}')", what, path, name, name));
    if (it->second->sizes != dst.sizes().vec())
      throw std::runtime_error(fmt::format("{}: state dict '{}': tensor '{}' has shape [{}], the model needs [{}]", what,
                                           path, name, fmt::join(it->second->sizes, ", "), fmt::join(dst.sizes(), ", ")));
    plan.emplace_back(dst, it->second);
  };
  for (auto& p : m.named_parameters()) check(p.key(), p.value());
  for (auto& b : m.named_buffers()) check(b.key(), b.value());
  torch::NoGradGuard no_grad;
  try {
    for (auto& [dst, info] : plan) dst.copy_(file->tensor(*info));
  } catch (const std::exception& e) {
    throw fail(e);
  }
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
