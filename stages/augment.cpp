// augment: random affine augmentation with Keras ImageDataGenerator semantics.
//
// Per-sample map, parallel, random (the framework applies it to the training split only).
// Consumes and produces `image` (8-bit, any channel count; RGB in practice).
//
// Draws, in Keras's order and only for enabled transforms (as Keras 2.0.8 does):
// theta = U(+-rotation) degrees, tx = U(+-height_shift) * H (rows), ty = U(+-width_shift) * W
// (cols), shear = U(+-shear), zx, zy = two independent U(1 - zoom, 1 + zoom); then a
// horizontal flip with p = 0.5 and a vertical flip with p = 0.5. M = R * T * Sh * Z, centred
// as O * M * O^-1, maps output (row, col) to input coordinates. The flips are folded into the
// same 2x3 matrix, so each image is warped exactly once.
//   semantics: keras-2.0.8 (the book's; shear in radians, nearest, offset H/2 + 0.5) or
//              keras (keras_preprocessing; shear in degrees, bilinear, offset H/2 - 0.5).
//   fill: scipy.ndimage mode: nearest (repeat edge, cv BORDER_REPLICATE), constant (cval,
//         BORDER_CONSTANT), reflect (abc|cba, BORDER_REFLECT), wrap (abc|abc, BORDER_WRAP).
// Nearest sampling is computed here in double precision with scipy's rounding
// (floor(x + 0.5); `constant` fills any coordinate outside [0, n-1], as scipy does), because
// cv::warpAffine's 10-bit fixed point rounds differently near half pixels. Bilinear sampling
// uses cv::warpAffine(WARP_INVERSE_MAP) (1/32 pixel interpolation steps).
//
// Example config:
//   augment: {stage: augment, rotation: 40, width_shift: 0.2, height_shift: 0.2, shear: 0.2,
//             zoom: 0.2, horizontal_flip: true, fill: nearest}
#include "augment.h"

#include <cmath>
#include <memory>

#include <opencv2/imgproc.hpp>

#include "builtin.h"

namespace pipeline::stages {

std::array<double, 6> augment_matrix(const AugmentDraws& d, int rows, int cols,
                                     AugmentSemantics semantics) {
  using M3 = std::array<std::array<double, 3>, 3>;
  auto mul = [](const M3& a, const M3& b) {
    M3 c{};
    for (int i = 0; i < 3; ++i)
      for (int j = 0; j < 3; ++j)
        for (int k = 0; k < 3; ++k) c[i][j] += a[i][k] * b[k][j];
    return c;
  };
  const double th = d.theta * M_PI / 180.0;
  const double sh = semantics == AugmentSemantics::keras ? d.shear * M_PI / 180.0 : d.shear;
  const M3 R{{{std::cos(th), -std::sin(th), 0}, {std::sin(th), std::cos(th), 0}, {0, 0, 1}}};
  const M3 T{{{1, 0, d.tx}, {0, 1, d.ty}, {0, 0, 1}}};
  const M3 Sh{{{1, -std::sin(sh), 0}, {0, std::cos(sh), 0}, {0, 0, 1}}};
  const M3 Z{{{d.zx, 0, 0}, {0, d.zy, 0}, {0, 0, 1}}};
  const double half = semantics == AugmentSemantics::keras ? -0.5 : 0.5;
  const double orow = rows / 2.0 + half, ocol = cols / 2.0 + half;
  const M3 O{{{1, 0, orow}, {0, 1, ocol}, {0, 0, 1}}};
  const M3 Oinv{{{1, 0, -orow}, {0, 1, -ocol}, {0, 0, 1}}};
  // Flips act on the warped image: output (r, c) reads warped (r', c') = F (r, c).
  const M3 F{{{d.flip_v ? -1.0 : 1.0, 0, d.flip_v ? rows - 1.0 : 0.0},
              {0, d.flip_h ? -1.0 : 1.0, d.flip_h ? cols - 1.0 : 0.0},
              {0, 0, 1}}};
  const M3 A = mul(mul(mul(O, mul(mul(mul(R, T), Sh), Z)), Oinv), F);
  return {A[0][0], A[0][1], A[0][2], A[1][0], A[1][1], A[1][2]};
}

namespace {

int border_of(AugmentFill f) {
  switch (f) {
    case AugmentFill::nearest: return cv::BORDER_REPLICATE;
    case AugmentFill::constant: return cv::BORDER_CONSTANT;
    case AugmentFill::reflect: return cv::BORDER_REFLECT;
    case AugmentFill::wrap: return cv::BORDER_WRAP;
  }
  return cv::BORDER_REPLICATE;
}

// Index along one axis for coordinate x, or -1 for "use cval".
int nearest_index(double x, int n, AugmentFill fill) {
  if (fill == AugmentFill::constant && (x < 0 || x > n - 1)) return -1;
  const double r = std::floor(x + 0.5);
  if (r >= 0 && r <= n - 1) return static_cast<int>(r);
  if (fill == AugmentFill::nearest) return r < 0 ? 0 : n - 1;
  const double big = 1e9;  // keeps the cast defined for absurd zooms
  return cv::borderInterpolate(static_cast<int>(std::max(-big, std::min(big, r))), n,
                               border_of(fill));
}

cv::Mat warp_nearest(const cv::Mat& src, const std::array<double, 6>& a,
                     const AugmentOptions& o) {
  const int rows = src.rows, cols = src.cols, ch = src.channels();
  cv::Mat dst(rows, cols, src.type());
  const uint8_t fillv = cv::saturate_cast<uint8_t>(o.cval);
  for (int r = 0; r < rows; ++r) {
    uint8_t* out = dst.ptr<uint8_t>(r);
    for (int c = 0; c < cols; ++c, out += ch) {
      const int ir = nearest_index(a[0] * r + a[1] * c + a[2], rows, o.fill);
      const int ic = nearest_index(a[3] * r + a[4] * c + a[5], cols, o.fill);
      if (ir < 0 || ic < 0) {
        for (int k = 0; k < ch; ++k) out[k] = fillv;
      } else {
        const uint8_t* in = src.ptr<uint8_t>(ir) + static_cast<size_t>(ic) * ch;
        for (int k = 0; k < ch; ++k) out[k] = in[k];
      }
    }
  }
  return dst;
}

}  // namespace

cv::Mat augment_apply(const cv::Mat& src, const AugmentDraws& d, const AugmentOptions& o) {
  if (src.depth() != CV_8U) throw std::invalid_argument("augment: expects an 8-bit image");
  const std::array<double, 6> a = augment_matrix(d, src.rows, src.cols, o.semantics);
  if (o.semantics == AugmentSemantics::keras_2_0_8) return warp_nearest(src, a, o);
  // OpenCV works in (x = col, y = row): src_x = in_col, src_y = in_row.
  const cv::Matx23d m(a[4], a[3], a[5], a[1], a[0], a[2]);
  cv::Mat dst;
  cv::warpAffine(src, dst, m, src.size(), cv::INTER_LINEAR | cv::WARP_INVERSE_MAP,
                 border_of(o.fill), cv::Scalar::all(o.cval));
  return dst;
}

AugmentDraws draw_pose(const PoseRanges& p, int rows, int cols, Rng& rng) {
  AugmentDraws d;
  d.theta = rng.uniform(-p.rotation, p.rotation);
  d.tx = rng.uniform(-p.shift, p.shift) * rows;
  d.ty = rng.uniform(-p.shift, p.shift) * cols;
  d.zx = d.zy = rng.uniform(p.zoom_lo, p.zoom_hi);
  d.flip_h = rng.bernoulli(0.5) && p.flip;
  return d;
}

namespace {

const auto kRotation = param::number("rotation", 0, "max rotation, degrees (theta ~ U(-r, r))").range(0, 180);
const auto kWidthShift = param::number("width_shift", 0, "max column shift, fraction of width").range(0, 1);
const auto kHeightShift = param::number("height_shift", 0, "max row shift, fraction of height").range(0, 1);
const auto kShear =
    param::number("shear", 0, "max shear angle (radians in keras-2.0.8, degrees in keras)").range(0, 360);
const auto kZoom =
    param::number("zoom", 0, "zoom range [1-z, 1+z]; row and column drawn independently").range(0, 1);
const auto kHorizontalFlip = param::boolean("horizontal_flip", false, "flip columns with p = 0.5");
const auto kVerticalFlip = param::boolean("vertical_flip", false, "flip rows with p = 0.5");
const auto kFill = param::choice("fill",
                                 {{"nearest", AugmentFill::nearest}, {"constant", AugmentFill::constant},
                                  {"reflect", AugmentFill::reflect}, {"wrap", AugmentFill::wrap}},
                                 AugmentFill::nearest, "points outside the input (scipy mode)");
const auto kCval = param::number("cval", 0, "fill value for fill: constant").range(0, 255);
const auto kSemantics = param::choice(
    "semantics", {{"keras-2.0.8", AugmentSemantics::keras_2_0_8}, {"keras", AugmentSemantics::keras}},
    AugmentSemantics::keras_2_0_8,
    "keras-2.0.8: shear radians, nearest, offset H/2+0.5; keras: shear degrees, bilinear, offset H/2-0.5");

class Augment : public MapStage {
 public:
  explicit Augment(const Params& p)
      : rotation_(p.get(kRotation)), width_shift_(p.get(kWidthShift)),
        height_shift_(p.get(kHeightShift)), shear_(p.get(kShear)), zoom_(p.get(kZoom)),
        hflip_(p.get(kHorizontalFlip)), vflip_(p.get(kVerticalFlip)) {
    opt_.semantics = p.get(kSemantics);
    opt_.fill = p.get(kFill);
    opt_.cval = p.get(kCval);
  }

  void process(Sample& sample, Rng& rng) override {
    if (sample.image.empty()) throw SampleError("augment: sample has no image (decode first)");
    const cv::Mat& img = sample.image;
    AugmentDraws d;
    if (rotation_ != 0) d.theta = rng.uniform(-rotation_, rotation_);
    if (height_shift_ != 0) d.tx = rng.uniform(-height_shift_, height_shift_) * img.rows;
    if (width_shift_ != 0) d.ty = rng.uniform(-width_shift_, width_shift_) * img.cols;
    if (shear_ != 0) d.shear = rng.uniform(-shear_, shear_);
    if (zoom_ != 0) {
      d.zx = rng.uniform(1 - zoom_, 1 + zoom_);
      d.zy = rng.uniform(1 - zoom_, 1 + zoom_);
    }
    if (hflip_) d.flip_h = rng.bernoulli(0.5);
    if (vflip_) d.flip_v = rng.bernoulli(0.5);
    sample.image = augment_apply(img, d, opt_);
  }

 private:
  double rotation_, width_shift_, height_shift_, shear_, zoom_;
  bool hflip_, vflip_;
  AugmentOptions opt_;
};

}  // namespace

void register_augment(Registry& r) {
  r.add<Augment>(Schema("augment", "Random affine augmentation (rotation, shift, shear, zoom, flips) with Keras "
                                   "ImageDataGenerator semantics, warped once per image; training split only.")
                     .random()
                     .consumes(Payload::image)
                     .produces(Payload::image)
                     .param(kRotation)
                     .param(kWidthShift)
                     .param(kHeightShift)
                     .param(kShear)
                     .param(kZoom)
                     .param(kHorizontalFlip)
                     .param(kVerticalFlip)
                     .param(kFill)
                     .param(kCval)
                     .param(kSemantics)
                     .example("{stage: augment, rotation: 40, width_shift: 0.2, height_shift: 0.2, shear: 0.2, "
                              "zoom: 0.2, horizontal_flip: true, fill: nearest}"));
}

}  // namespace pipeline::stages
