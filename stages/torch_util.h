// Internal LibTorch helpers shared by the torch stages (convbase, dense_head, train_base).
// Includes <torch/torch.h>: only files listed in PIPE_TORCH_SOURCES may include this header.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include <opencv2/core/mat.hpp>
#include <torch/torch.h>

#include "pipe/params.h"
#include "pipe/stage.h"
#include "pipe/tensor.h"
#include "files.h"
#include "torch_runtime.h"
#include "torch_schemas.h"  // the image_norm parameters

namespace pipeline::torchu {

// torch::save(value) to `path`, serialized in memory first: LibTorch's file writer throws
// from a destructor when a write fails (a full disk), which aborts the process with a stack
// trace. This throws std::runtime_error naming the file and the OS reason instead.
template <class T>
void save_file(const T& value, const std::string& path) {
  std::ostringstream out;
  torch::save(value, out);
  write_file(path, out.str());
}


// ---- devices
// "auto" (CUDA when torch::cuda::is_available(), else CPU), "cpu", "cuda", "cuda:N".
// Throws std::runtime_error for a malformed spec or a CUDA device this process cannot use.
torch::Device parse_device(const std::string& spec);

// ---- images -> tensors
// Pixel normalization: x = p * rescale when mean/std are empty, else
// x = (p * rescale - mean[c]) / std[c] (torchvision convention with rescale = 1/255).
struct ImageNorm {
  double rescale = 1.0 / 255.0;
  std::vector<double> mean, std;  // both empty or both of size 3 (RGB order)
};
// The normalization as one multiply-add per channel, x = p * scale[c] + shift[c], in float: the
// arithmetic every path that normalizes pixels does (CPU, CUDA, an exported model), so that
// they agree to the bit.
struct PixelAffine {
  std::array<float, 3> scale, shift;
};
PixelAffine pixel_affine(const ImageNorm& norm);
// Reads the params `rescale`, `mean`, `std` (declared in torch_schemas.h) and
// checks them; throws std::runtime_error naming `what` on inconsistent lists.
ImageNorm image_norm(const Params& p, const std::string& what);

// A batch of HxWx3 uint8 RGB images (all the same size) -> float32 (N, 3, H, W) on the CPU.
// `pinned` allocates page-locked memory (only valid when CUDA is available) so that a
// following .to(cuda, non_blocking=true) is truly asynchronous. Throws SampleError naming
// the sample for a wrong type or a size that differs from the first image.
torch::Tensor images_to_tensor(const std::vector<Sample>& samples, const ImageNorm& norm,
                               bool pinned = false);
// samples[begin, begin + count) as they are, uint8 (count, H, W, 3), for a device that
// converts and normalizes them itself: a quarter of float32's bytes to pack and copy. The same
// checks as images_to_tensor, against samples[0]'s size so that every slice of a batch agrees.
torch::Tensor images_to_uint8(const std::vector<Sample>& samples, size_t begin, size_t count,
                              bool pinned);

// ---- pipeline::Tensor <-> torch::Tensor
// Zero-copy, read-only view: the torch tensor keeps the pipe buffer alive. Never write
// through it (the buffer may be a memory-mapped cache file).
torch::Tensor to_torch(const Tensor& t);
// A pipeline::Tensor sharing the storage of `t` (made contiguous float32 on the CPU first).
// The pipe tensor keeps the torch storage alive, so a slice of a batch keeps the batch alive.
Tensor from_torch(const torch::Tensor& t);

// ---- builtin architectures
// "vgg16": VGG16's 13-conv feature base, module for module torchvision's `vgg16().features`
//   (indices 0..30, so parameter names match a torchvision state dict without the
//   "features." prefix). 512 x H/32 x W/32 features.
// "small_vgg": conv3x3-BN-ReLU x2 per block, channels [32, 32, M, 64, 64, M, 128, 128, M]
//   (M = 2x2 max-pool): 287k parameters, 128 x H/8 x W/8 features (128x4x4 at 32 px).
//   Sized for 28-64 px inputs on a CPU: measured about 380 img/s forward+backward+Adam and
//   1,000+ img/s forward at 32 px on 2 cores (~2 min per 44k-image epoch).
bool is_builtin(const std::string& name);  // name without the "builtin:" prefix
std::vector<std::string> builtin_names();
torch::nn::Sequential make_builtin(const std::string& name);
int64_t builtin_channels(const std::string& name);  // feature channels

// Deterministic initialization of every Conv2d/Linear/BatchNorm in `m` from `gen` (Kaiming
// normal fan-out for convs as torchvision's VGG, Glorot uniform + zero bias for linears as
// Keras' Dense, BN weight 1 / bias 0): no use of the global generator.
void init_module(torch::nn::Module& m, at::Generator& gen);
at::Generator make_generator(uint64_t seed);

// Loads a PyTorch state dict (what torch.save(model.state_dict()) writes, e.g. torchvision's
// vgg16-397923af.pth) into `m`: every parameter and buffer of `m` must be in the file with
// its shape, under its own name or under "features." + its name (torchvision's VGG keeps the
// conv base there; its "classifier.*" tensors are not part of a conv base and are skipped).
// Both torch.save formats load, zip (PyTorch >= 1.6) and legacy, with a dict or an
// OrderedDict, through torch_pickle.h's allow-listed reader (never Python's pickle).
// Throws std::runtime_error naming the file and the first missing or mismatched tensor, or
// the byte at which an unreadable file went wrong.
void load_state_dict(torch::nn::Module& m, const std::string& path, const std::string& what);
// A torch.save file of a dict rather than a torch::save()d module: legacy, or a zip archive
// with data.pkl and no TorchScript constants.
bool is_state_dict_file(const std::string& path);
// Every tensor of a state dict file, in the file's order, as saved (dtype, strides).
std::vector<std::pair<std::string, torch::Tensor>> read_state_dict(const std::string& path);

// Freezes a module: eval mode and requires_grad(false) on every parameter.
void freeze(torch::nn::Module& m);

// Deep copy of parameters and buffers (for best-epoch checkpoints kept in memory).
std::vector<torch::Tensor> snapshot(const torch::nn::Module& m);
void restore(torch::nn::Module& m, const std::vector<torch::Tensor>& snap);

}  // namespace pipeline::torchu
