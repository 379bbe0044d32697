// Sample and Batch: what flows through a pipe graph.
#pragma once
// NOTE: the C++ namespace is `pipeline`, not `pipe`: POSIX <unistd.h> declares ::pipe(),
// which makes a global `namespace pipe` a compile error in any file that includes it.

#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include <opencv2/core/mat.hpp>

#include "pipe/tensor.h"

namespace pipeline {

enum class Split { train = 0, validation = 1, test = 2 };
const char* split_name(Split s);
constexpr Split kAllSplits[] = {Split::train, Split::validation, Split::test};

// One image on its way through the graph. The payload fills in as it flows:
// `bytes` (encoded file or raw pixels) -> `image` (HxWx3 uint8 RGB) -> `features`.
struct Sample {
  int64_t id = 0;         // index within its split; stable across runs
  int label = -1;         // class index into the source's class list
  Split split = Split::train;
  int epoch = 0;          // 1-based training epoch (0 for extraction passes outside training)
  int view = 0;           // which augmented view of the sample (cache `views: K`)
  std::string origin;     // file path, or "<source>:<file>#<index>", used in messages

  std::shared_ptr<const std::vector<uint8_t>> bytes;
  cv::Mat image;
  Tensor features;

  // "train#12 (path)" for diagnostics.
  std::string describe() const;
  // The same sample's metadata (id, label, split, epoch, view, origin) with no payload: where
  // a join writes its output.
  Sample metadata() const {
    Sample m;
    m.id = id;
    m.label = label;
    m.split = split;
    m.epoch = epoch;
    m.view = view;
    m.origin = origin;
    return m;
  }
};

// An ordered group of samples; built by the framework, never by stages.
struct Batch {
  Split split = Split::train;
  int epoch = 0;
  std::vector<Sample> samples;

  std::size_t size() const { return samples.size(); }
  // Stacks every sample's features into one (N, ...) tensor; all shapes must agree.
  Tensor stack_features() const;
  std::vector<int64_t> labels() const;
};

// Thrown by a stage for a problem with one sample's data (undecodable file, wrong size...).
// The graph's on_error policy decides whether the run fails or the sample is skipped.
class SampleError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
  // `node`: the node the failure belongs to when it is not the one that throws (a cache read
  // replaying a failure recorded at extraction names the node that failed then).
  SampleError(const std::string& what, std::string node) : std::runtime_error(what), node_(std::move(node)) {}
  const std::string& node() const { return node_; }

 private:
  std::string node_;
};

}  // namespace pipeline
