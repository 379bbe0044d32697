// The pure part of the `augment` stage: Keras ImageDataGenerator's affine transform for
// given draws, so tests can pin draws and compare against an independent implementation.
#pragma once

#include <array>

#include <opencv2/core/mat.hpp>

#include "pipe/rng.h"

namespace pipeline::stages {

enum class AugmentSemantics {
  keras_2_0_8,  // the book's: shear in radians, nearest, centre offset H/2 + 0.5
  keras,        // keras_preprocessing: shear in degrees, bilinear, centre offset H/2 - 0.5
};
enum class AugmentFill { nearest, constant, reflect, wrap };  // scipy.ndimage modes

// One sample's random draws, in Keras's order. Zero / one / false = transform not applied.
struct AugmentDraws {
  double theta = 0;  // rotation, degrees
  double tx = 0;     // shift along rows, pixels (height_shift * H)
  double ty = 0;     // shift along columns, pixels (width_shift * W)
  double shear = 0;  // radians (keras_2_0_8) or degrees (keras)
  double zx = 1;     // zoom of the row coordinate
  double zy = 1;     // zoom of the column coordinate
  bool flip_h = false;
  bool flip_v = false;
};

struct AugmentOptions {
  AugmentSemantics semantics = AugmentSemantics::keras_2_0_8;
  AugmentFill fill = AugmentFill::nearest;
  double cval = 0;
};

// Row-major 2x3 matrix A mapping an output (row, col) to input coordinates:
// in_row = A[0]*row + A[1]*col + A[2], in_col = A[3]*row + A[4]*col + A[5].
// It is O * R * T * Sh * Z * O^-1 with the flips folded in (they act after the warp).
std::array<double, 6> augment_matrix(const AugmentDraws& d, int rows, int cols,
                                     AugmentSemantics semantics);

// A fixed pose of an image (variation of the data itself, not augmentation): rotation
// U(+-rotation) degrees, row and column shifts U(+-shift) * side, one zoom factor U(zoom_lo,
// zoom_hi) for both axes (Keras' zoom: input pixels per output pixel, > 1 shrinks the
// object), a horizontal flip with p = 0.5 when `flip`.
struct PoseRanges {
  double rotation = 0, shift = 0, zoom_lo = 1, zoom_hi = 1;
  bool flip = false;
  bool none() const { return rotation == 0 && shift == 0 && zoom_lo == 1 && zoom_hi == 1 && !flip; }
};
// Every value is drawn, in the order above, whatever the ranges: widening one range leaves
// the other values of every image as they were.
AugmentDraws draw_pose(const PoseRanges& p, int rows, int cols, Rng& rng);

// Applies the draws to an 8-bit image (any channel count); returns a fresh continuous Mat.
// Nearest sampling rounds like scipy's map_coordinates(order=0): floor(x + 0.5).
cv::Mat augment_apply(const cv::Mat& src, const AugmentDraws& d, const AugmentOptions& o);

}  // namespace pipeline::stages
