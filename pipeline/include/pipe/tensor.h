// A dense host float32 tensor: the payload that crosses stage boundaries once an image
// has become features. Kept free of LibTorch so that the core, the cache and plugins that
// never touch torch compile in seconds; torch stages wrap it with torch::from_blob.
#pragma once

#include <cstdint>
#include <memory>
#include <numeric>
#include <string>
#include <vector>

namespace pipeline {

struct Tensor {
  std::vector<int64_t> shape;
  // Shared and const: a tensor may alias a memory-mapped cache file (the owner keeps the
  // mapping alive) or a slice of a batch, so writers must allocate a fresh one.
  std::shared_ptr<const float> data;

  bool defined() const { return data != nullptr; }
  int64_t numel() const {
    return std::accumulate(shape.begin(), shape.end(), int64_t{1}, std::multiplies<>());
  }
  const float* ptr() const { return data.get(); }

  // A zero-filled tensor whose buffer the caller may fill before sharing it.
  static Tensor zeros(std::vector<int64_t> shape, float** writable);
  static Tensor copy_of(const float* src, std::vector<int64_t> shape);
  std::string shape_string() const;
};

}  // namespace pipeline
