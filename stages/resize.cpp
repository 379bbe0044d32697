// resize: image -> the same image at another size.
//
// Per-sample map, parallel, deterministic. Consumes and produces `image` (CV_8UC3 RGB). The
// usual use is a second, smaller view of one decoded image on another branch of a graph
// (graphs/multiscale.yaml: decode at 48 px feeds the base directly and through a resize to
// 32 px; a concat joins both feature sets).
// Params:
//   size: [H, W]                                   output size
//   interpolation: nearest|bilinear|area|bicubic   filter (default area: the right one to shrink)
//
// Example config:
//   small: {stage: resize, size: [32, 32]}
#include <fmt/format.h>
#include <opencv2/imgproc.hpp>

#include "builtin.h"

namespace pipeline::stages {
namespace {

int interpolation(const std::string& name) {
  if (name == "nearest") return cv::INTER_NEAREST;
  if (name == "area") return cv::INTER_AREA;
  if (name == "bicubic") return cv::INTER_CUBIC;
  return cv::INTER_LINEAR;
}

class Resize : public MapStage {
 public:
  explicit Resize(const Params& p) : interp_(interpolation(p.string("interpolation"))) {
    const std::vector<int64_t> size = p.integers("size");
    size_ = cv::Size(static_cast<int>(size[1]), static_cast<int>(size[0]));
  }

  void process(Sample& sample, Rng&) override {
    if (sample.image.empty()) throw SampleError("resize: the sample has no image (put a decode node before it)");
    if (sample.image.size() == size_) return;
    cv::Mat out;
    cv::resize(sample.image, out, size_, 0, 0, interp_);
    sample.image = out;  // a new Mat: the input's pixels, perhaps shared with a branch, stay as they were
  }

 private:
  cv::Size size_;
  int interp_;
};

}  // namespace

void register_resize(Registry& r) {
  StageSchema s;
  s.name = "resize";
  s.doc = "Resizes an RGB image to `size` (a second scale of one decoded image on another branch).";
  s.kind = StageKind::map;
  s.consumes = Payload::image;
  s.produces = Payload::image;
  ParamSpec size{"size", ParamType::integer_list, "output [height, width], pixels", std::nullopt, 1, 4096, {}, 2};
  ParamSpec interp{"interpolation", ParamType::string, "resize filter", ParamValue{std::string("area")}, {}, {},
                   {"nearest", "bilinear", "area", "bicubic"}, -1};
  s.param(size).param(interp);
  s.example = "{stage: resize, size: [32, 32]}";
  r.add(std::move(s), [](const Params& p, const StageContext&) -> std::unique_ptr<Stage> {
    return std::make_unique<Resize>(p);
  });
}

}  // namespace pipeline::stages
