#include "pipe/sample.h"
#include "pipe/tensor.h"

#include <cstring>
#include <stdexcept>

#include <fmt/format.h>

namespace pipeline {

Tensor Tensor::zeros(std::vector<int64_t> shape, float** writable) {
  Tensor t;
  t.shape = std::move(shape);
  const int64_t n = t.numel();
  std::shared_ptr<float> buf(new float[static_cast<size_t>(n)](), std::default_delete<float[]>());
  if (writable) *writable = buf.get();
  t.data = std::move(buf);
  return t;
}

Tensor Tensor::copy_of(const float* src, std::vector<int64_t> shape) {
  float* dst = nullptr;
  Tensor t = zeros(std::move(shape), &dst);
  std::memcpy(dst, src, static_cast<size_t>(t.numel()) * sizeof(float));
  return t;
}

std::string Tensor::shape_string() const {
  return fmt::format("({})", fmt::join(shape, ", "));
}

const char* split_name(Split s) {
  switch (s) {
    case Split::train: return "train";
    case Split::validation: return "validation";
    case Split::test: return "test";
  }
  return "?";
}

std::string Sample::describe() const {
  std::string d = fmt::format("{}#{}", split_name(split), id);
  if (!origin.empty()) d += fmt::format(" ({})", origin);
  return d;
}

Tensor Batch::stack_features() const {
  if (samples.empty()) throw std::logic_error("stack_features on an empty batch");
  const Tensor& first = samples.front().features;
  if (!first.defined())
    throw std::runtime_error(fmt::format("sample {} has no features", samples.front().describe()));
  const int64_t per = first.numel();
  std::vector<int64_t> shape{static_cast<int64_t>(samples.size())};
  shape.insert(shape.end(), first.shape.begin(), first.shape.end());
  float* dst = nullptr;
  Tensor out = Tensor::zeros(shape, &dst);
  for (const Sample& s : samples) {
    if (!s.features.defined() || s.features.shape != first.shape)
      throw std::runtime_error(fmt::format("sample {} has features {} but the batch has {}",
                                           s.describe(), s.features.shape_string(),
                                           first.shape_string()));
    std::memcpy(dst, s.features.ptr(), static_cast<size_t>(per) * sizeof(float));
    dst += per;
  }
  return out;
}

std::vector<int64_t> Batch::labels() const {
  std::vector<int64_t> y;
  y.reserve(samples.size());
  for (const Sample& s : samples) y.push_back(s.label);
  return y;
}

}  // namespace pipeline
