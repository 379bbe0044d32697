// augment: pinned draws against an independent per-pixel implementation of Keras's pull
// mapping, and the stage's draw order / determinism through the YAML-built stage.
#include <catch2/catch.hpp>

#include <cmath>
#include <random>

#include <opencv2/core.hpp>

#include "augment.h"
#include "pipe/stage.h"
#include "pipe/testing.h"

using namespace pipeline;
using stages::AugmentDraws;
using stages::AugmentFill;
using stages::AugmentOptions;
using stages::AugmentSemantics;

namespace {

cv::Mat random_image(int rows, int cols, int seed = 7) {
  std::mt19937 gen(seed);
  cv::Mat m(rows, cols, CV_8UC3);
  for (size_t i = 0; i < m.total() * 3; ++i) m.data[i] = static_cast<uint8_t>(gen() & 0xff);
  return m;
}

// Keras 2.0.8 written out point by point: flip, move to the centre, zoom, shear, shift,
// rotate, move back; scipy order=0 rounding floor(x + 0.5); fill nearest clamps, constant
// fills coordinates outside [0, n-1], reflect mirrors about the edge (abc|cba).
cv::Mat reference(const cv::Mat& in, const AugmentDraws& d, AugmentFill fill, double cval) {
  const int H = in.rows, W = in.cols;
  const double orow = H / 2.0 + 0.5, ocol = W / 2.0 + 0.5;
  const double th = d.theta * M_PI / 180.0;
  cv::Mat out(H, W, CV_8UC3);
  auto index = [&](double x, int n) {
    if (fill == AugmentFill::constant && (x < 0 || x > n - 1)) return -1;
    int i = static_cast<int>(std::floor(x + 0.5));
    if (fill == AugmentFill::nearest) return std::min(std::max(i, 0), n - 1);
    if (i < 0) i = -i - 1;  // reflect (one bounce is enough here)
    if (i >= n) i = 2 * n - 1 - i;
    return i;
  };
  for (int r = 0; r < H; ++r)
    for (int c = 0; c < W; ++c) {
      double x = (d.flip_v ? H - 1 - r : r) - orow, y = (d.flip_h ? W - 1 - c : c) - ocol;
      x *= d.zx;
      y *= d.zy;
      x = x - std::sin(d.shear) * y;
      y = std::cos(d.shear) * y;
      x += d.tx;
      y += d.ty;
      const double xr = std::cos(th) * x - std::sin(th) * y, yr = std::sin(th) * x + std::cos(th) * y;
      const int ir = index(xr + orow, H), ic = index(yr + ocol, W);
      out.at<cv::Vec3b>(r, c) = ir < 0 || ic < 0 ? cv::Vec3b::all(static_cast<uint8_t>(cval))
                                                 : in.at<cv::Vec3b>(ir, ic);
    }
  return out;
}

bool same(const cv::Mat& a, const cv::Mat& b) {
  return a.size() == b.size() && a.type() == b.type() && cv::norm(a, b, cv::NORM_INF) == 0;
}

}  // namespace

TEST_CASE("augment: pinned draws match Keras 2.0.8's pull mapping pixel for pixel") {
  const cv::Mat img = random_image(17, 23);  // non-square: catches row/column swaps
  AugmentOptions o;  // keras-2.0.8, fill nearest
  AugmentDraws d;
  SECTION("identity") { d = AugmentDraws{}; }
  SECTION("rotation") { d.theta = 33.3; }
  SECTION("rotation 90") { d.theta = 90; }
  SECTION("shear (radians)") { d.shear = 0.37; }
  SECTION("zoom") { d.zx = 1.17; d.zy = 0.83; }
  SECTION("shift") { d.tx = 2.3; d.ty = -3.7; }
  SECTION("horizontal flip") { d.flip_h = true; }
  SECTION("both flips") { d.flip_h = d.flip_v = true; }
  SECTION("everything") {
    d = AugmentDraws{-27.1, 1.9, -2.2, 0.13, 0.91, 1.13, true, false};
  }
  SECTION("constant fill") {
    d.theta = 21.7;
    d.zx = 1.17;
    o.fill = AugmentFill::constant;
    o.cval = 7;
  }
  SECTION("reflect fill") {
    d.tx = 5.2;
    d.ty = -6.1;
    o.fill = AugmentFill::reflect;
  }
  const cv::Mat out = stages::augment_apply(img, d, o);
  const cv::Mat ref = reference(img, d, o.fill, o.cval);
  REQUIRE(out.isContinuous());
  REQUIRE(same(out, ref));
  if (d.theta != 0 || d.tx != 0 || d.zx != 1 || d.shear != 0 || d.flip_h)
    REQUIRE_FALSE(same(out, img));  // the section did transform something
}

TEST_CASE("augment: conventions pinned on explicit pixels") {
  const cv::Mat img = random_image(17, 23, 3);
  AugmentOptions o;
  SECTION("tx shifts rows, ty shifts columns; M maps output to input") {
    AugmentDraws d;
    d.tx = 2;
    d.ty = -3;
    const cv::Mat out = stages::augment_apply(img, d, o);
    CHECK(out.at<cv::Vec3b>(5, 10) == img.at<cv::Vec3b>(7, 7));
    CHECK(out.at<cv::Vec3b>(16, 1) == img.at<cv::Vec3b>(16, 0));  // clamped at both edges
  }
  SECTION("horizontal flip reverses columns") {
    AugmentDraws d;
    d.flip_h = true;
    const cv::Mat out = stages::augment_apply(img, d, o);
    CHECK(out.at<cv::Vec3b>(4, 0) == img.at<cv::Vec3b>(4, 22));
    CHECK(out.at<cv::Vec3b>(4, 5) == img.at<cv::Vec3b>(4, 17));
  }
  SECTION("180 degrees: keras-2.0.8's H/2+0.5 centre lands one pixel off a flip") {
    AugmentDraws d;
    d.theta = 180;
    const cv::Mat out = stages::augment_apply(img, d, o);
    CHECK(out.at<cv::Vec3b>(3, 4) == img.at<cv::Vec3b>(17 + 1 - 3, 23 + 1 - 4));
    CHECK(out.at<cv::Vec3b>(0, 0) == img.at<cv::Vec3b>(16, 22));
  }
  SECTION("modern keras: H/2-0.5 centre makes 180 degrees an exact double flip, bilinear") {
    o.semantics = AugmentSemantics::keras;
    AugmentDraws d;
    d.theta = 180;
    cv::Mat flipped;
    cv::flip(img, flipped, -1);
    CHECK(same(stages::augment_apply(img, d, o), flipped));
    AugmentDraws s;  // integer shifts stay exact under bilinear sampling
    s.tx = 2;
    s.ty = -3;
    const cv::Mat out = stages::augment_apply(img, s, o);
    CHECK(out.at<cv::Vec3b>(5, 10) == img.at<cv::Vec3b>(7, 7));
    AugmentDraws sh;  // shear in degrees: 30 degrees, not 30 radians
    sh.shear = 30;
    const auto m = stages::augment_matrix(sh, 17, 23, AugmentSemantics::keras);
    CHECK(m[1] == Approx(-0.5));
    CHECK(m[4] == Approx(std::sqrt(3.0) / 2));
  }
}

TEST_CASE("augment stage: draws in Keras's order from the sample's stream") {
  auto stage = testing::make<MapStage>(
      "{stage: augment, rotation: 40, width_shift: 0.2, height_shift: 0.1, shear: 0.2, "
      "zoom: 0.2, horizontal_flip: true, fill: nearest}");
  const cv::Mat img = random_image(17, 23, 11);
  auto run = [&](int64_t id, int epoch, int view = 0, uint64_t seed = 1, const char* node = "node") {
    Sample s;
    s.id = id;
    s.image = img.clone();
    Rng rng = Rng::for_sample(seed, node, epoch, id, view);
    stage->process(s, rng);
    return s.image;
  };
  SECTION("same key, same output; any other key field (id, epoch, view, seed, node) differs") {
    const cv::Mat a = run(5, 1);
    CHECK(same(a, run(5, 1)));
    CHECK_FALSE(same(a, run(6, 1)));
    CHECK_FALSE(same(a, run(5, 2)));
    CHECK_FALSE(same(a, run(5, 1, 1)));  // the views a cache keeps are distinct augmentations
    CHECK_FALSE(same(a, run(5, 1, 0, 2)));
    CHECK_FALSE(same(a, run(5, 1, 0, 1, "other")));
  }
  SECTION("output equals pinned draws theta, tx, ty, shear, zx, zy, flip") {
    for (int64_t id = 0; id < 8; ++id) {
      Rng r = Rng::for_sample(1, "node", 1, id, 0);
      AugmentDraws d;
      d.theta = r.uniform(-40, 40);
      d.tx = r.uniform(-0.1, 0.1) * 17;
      d.ty = r.uniform(-0.2, 0.2) * 23;
      d.shear = r.uniform(-0.2, 0.2);
      d.zx = r.uniform(0.8, 1.2);
      d.zy = r.uniform(0.8, 1.2);
      d.flip_h = r.bernoulli(0.5);
      CHECK(same(run(id, 1), stages::augment_apply(img, d, AugmentOptions{})));
    }
  }
  SECTION("disabled transforms draw nothing: flip-only uses the first draw") {
    auto flip = testing::make<MapStage>("{stage: augment, horizontal_flip: true}");
    int flipped = 0;
    for (int64_t id = 0; id < 16; ++id) {
      Sample s;
      s.image = img.clone();
      Rng rng = Rng::for_sample(1, "node", 1, id, 0);
      flip->process(s, rng);
      Rng r = Rng::for_sample(1, "node", 1, id, 0);
      cv::Mat expect = img;
      if (r.bernoulli(0.5)) {
        cv::flip(img, expect, 1);
        ++flipped;
      }
      CHECK(same(s.image, expect));
    }
    CHECK(flipped > 0);
    CHECK(flipped < 16);
  }
  SECTION("schema rejects out-of-range and unknown values") {
    CHECK_THROWS_WITH(testing::make<MapStage>("{stage: augment, rotation: 400}"),
                      Catch::Contains("rotation"));
    CHECK_THROWS_WITH(testing::make<MapStage>("{stage: augment, fill: mirror}"),
                      Catch::Contains("mirror"));
  }
}
