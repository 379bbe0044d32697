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

const auto kSize = param::integers("size", param::required, "output [height, width], pixels").range(1, 4096).length(2);
const auto kInterp = interpolation_param(cv::INTER_AREA);

class Resize : public MapStage {
 public:
  explicit Resize(const Params& p) : interp_(p.get(kInterp)) {
    const std::vector<int64_t> size = p.get(kSize);
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
  r.add<Resize>(Schema("resize", "Resizes an RGB image to `size` (a second scale of one decoded image on another branch).")
                    .consumes(Payload::image)
                    .produces(Payload::image)
                    .param(kSize)
                    .param(kInterp)
                    .example("{stage: resize, size: [32, 32]}"));
}

}  // namespace pipeline::stages
