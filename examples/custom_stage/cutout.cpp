// cutout: random erasing (DeVries & Taylor, 2017, "Improved Regularization of Convolutional
// Neural Networks with Cutout"), as a pipe plugin.
//
// With probability `p`, fills a `size` x `size` square, centred on a uniformly drawn pixel and
// clipped at the image borders, with the grey level `fill`. Random: the framework applies it
// to the training split only, and every draw comes from the sample's own counter-based
// stream, so a seeded run gives the same result at any thread count.
//
// Input:  image (H x W x C uint8, e.g. after decode/augment).  Output: the same image, erased.
// Params: size (8, pixels, 1..4096), p (0.5, 0..1), fill (0, 0..255).
//
// Example config:
//   cut: {stage: cutout, size: 8, p: 0.5, fill: 0}
#include <algorithm>
#include <memory>
#include <stdexcept>
#include <string>

#include <opencv2/core.hpp>
#include <pipe/plugin.h>

namespace {

using namespace pipeline;

// The parameters, declared once: the schema lists them (pipe stages, pipe validate) and the
// constructor reads the validated values back through them.
const auto kSize = param::integer("size", 8, "side of the square, pixels").range(1, 4096);
const auto kP = param::number("p", 0.5, "probability that a sample is erased").range(0, 1);
const auto kFill = param::number("fill", 0, "grey level of the square").range(0, 255);

class Cutout : public MapStage {  // MapStage: registered as a per-sample map
 public:
  explicit Cutout(const Params& p)
      : size_(static_cast<int>(p.get(kSize))), p_(p.get(kP)), fill_(p.get(kFill)) {}

  // Called concurrently on different samples (Concurrency::parallel): it only reads members.
  void process(Sample& s, Rng& rng) override {
    if (s.image.empty()) throw SampleError("cutout: the sample has no image (put cutout after decode)");
    // A configuration error, not bad data: it fails the run (see docs/plugins.md, Errors).
    if (size_ > std::min(s.image.rows, s.image.cols))
      throw std::runtime_error("cutout size " + std::to_string(size_) + " exceeds the " +
                               std::to_string(s.image.rows) + "x" + std::to_string(s.image.cols) + " image");
    // Every value comes from `rng`, this sample's own stream for this node, epoch and view.
    // Always draw all three, in this order, so the stream is used the same way whether or
    // not this sample is erased.
    const bool erase = rng.bernoulli(p_);
    const int cy = static_cast<int>(rng.below(s.image.rows));
    const int cx = static_cast<int>(rng.below(s.image.cols));
    if (!erase) return;
    const int y0 = std::max(0, cy - size_ / 2), x0 = std::max(0, cx - size_ / 2);
    const int y1 = std::min(s.image.rows, cy - size_ / 2 + size_), x1 = std::min(s.image.cols, cx - size_ / 2 + size_);
    // The source image may be shared with other views: erase a private copy.
    cv::Mat out = s.image.clone();
    out(cv::Rect(x0, y0, x1 - x0, y1 - y0)).setTo(cv::Scalar::all(fill_));
    s.image = out;
  }

 private:
  int size_;
  double p_, fill_;
};

void register_stages(Registry& r) {
  // The kind (per-sample map) comes from Cutout's base class; each node gets Cutout(params).
  r.add<Cutout>(Schema("cutout", "Random erasing: with probability p, fills a size x size square at a random "
                                 "position with a constant grey level (DeVries & Taylor 2017); training split only.")
                    .random()  // draws from the per-sample stream: training split only
                    .consumes(Payload::image)
                    .produces(Payload::image)
                    .param(kSize)
                    .param(kP)
                    .param(kFill)
                    .example("{stage: cutout, size: 8, p: 0.5, fill: 0}"));
}

}  // namespace

PIPE_PLUGIN("cutout", "1.0.0", register_stages)
