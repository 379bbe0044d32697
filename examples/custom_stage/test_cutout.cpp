// Unit tests of the cutout stage with pipe's stage harness (<pipe/testing.h>): the plugin
// library itself is loaded as `pipe --plugin` loads it, each stage is built from a graph
// node string by pipe's own validator, and samples are pushed through it with the random
// stream the executor would give them.
//   cmake --build build && ctest --test-dir build      (CUTOUT_PLUGIN: see CMakeLists.txt)
#define CATCH_CONFIG_MAIN
#include <catch2/catch.hpp>

#include <set>
#include <tuple>

#include <opencv2/core.hpp>
#include <pipe/testing.h>

using namespace pipeline;

namespace {

// A cutout node with these parameters, e.g. "size: 8, p: 1".
testing::Harness cutout(const std::string& params, testing::HarnessOptions options = {}) {
  testing::load_plugin(CUTOUT_PLUGIN);  // once per process; later calls do nothing
  return testing::Harness("{stage: cutout, " + params + "}", options);
}

const cv::Mat kImage(32, 32, CV_8UC3, cv::Scalar::all(200));

// The pixels that differ between `before` and `after`, and their bounding box.
struct Erased {
  int64_t pixels = 0;
  int x0 = 1 << 30, y0 = 1 << 30, x1 = -1, y1 = -1;  // box [x0, x1) x [y0, y1)
  bool all = true;                                    // every changed pixel is the fill grey
  auto box() const { return std::make_tuple(x0, y0, x1, y1); }
};

Erased erased(const cv::Mat& before, const cv::Mat& after, int fill) {
  Erased e;
  for (int y = 0; y < after.rows; ++y)
    for (int x = 0; x < after.cols; ++x) {
      const cv::Vec3b a = after.at<cv::Vec3b>(y, x);
      if (a == before.at<cv::Vec3b>(y, x)) continue;
      ++e.pixels;
      e.all = e.all && a == cv::Vec3b(fill, fill, fill);
      e.x0 = std::min(e.x0, x);
      e.y0 = std::min(e.y0, y);
      e.x1 = std::max(e.x1, x + 1);
      e.y1 = std::max(e.y1, y + 1);
    }
  return e;
}

}  // namespace

TEST_CASE("cutout's parameters go through pipe's validator") {
  CHECK(cutout("").params().integer("size") == 8);  // defaults filled in
  CHECK_THROWS_WITH(cutout("p: 2"), Catch::Contains("parameter 'p' of stage 'cutout' is 2, out of range [0, 1]"));
  CHECK_THROWS_WITH(cutout("sze: 4"), Catch::Contains("unknown parameter 'sze' for stage 'cutout' (did you mean 'size'?)"));
}

TEST_CASE("p = 0 leaves every pixel as it was") {
  testing::Harness h = cutout("size: 8, p: 0");
  for (int64_t id = 0; id < 20; ++id) {
    const Sample out = h.process(testing::image_sample(kImage, id));
    CHECK(erased(kImage, out.image, 0).pixels == 0);
  }
}

TEST_CASE("p = 1 fills one size x size square, clipped at the borders, with the fill grey") {
  testing::Harness h = cutout("size: 8, p: 1, fill: 17");
  int whole = 0;
  for (int64_t id = 0; id < 50; ++id) {
    const Sample out = h.process(testing::image_sample(kImage, id));
    const Erased e = erased(kImage, out.image, 17);
    INFO("sample " << id);
    CHECK(e.all);
    CHECK(e.pixels == int64_t{e.x1 - e.x0} * (e.y1 - e.y0));  // a filled rectangle
    const bool clipped = e.x0 == 0 || e.y0 == 0 || e.x1 == 32 || e.y1 == 32;
    CHECK(e.x1 - e.x0 <= 8);
    CHECK(e.y1 - e.y0 <= 8);
    if (!clipped) {
      CHECK(e.x1 - e.x0 == 8);
      CHECK(e.y1 - e.y0 == 8);
      ++whole;
    }
  }
  CHECK(whole >= 10);  // about half the squares lie wholly inside a 32 x 32 image
  // The input's pixels (shared by every sample above) were never written: cutout erases a copy.
  CHECK(erased(cv::Mat(32, 32, CV_8UC3, cv::Scalar::all(200)), kImage, 0).pixels == 0);
}

TEST_CASE("the square is a function of (seed, node, epoch, sample, view)") {
  testing::Harness h = cutout("size: 8, p: 1");
  const auto square = [](testing::Harness& harness, int64_t id, int epoch, int view = 0) {
    Sample s = testing::image_sample(kImage, id, epoch);
    s.view = view;
    return erased(kImage, harness.process(s).image, 0).box();
  };
  CHECK(square(h, 3, 1) == square(h, 3, 1));  // the same key draws the same square
  std::set<std::tuple<int, int, int, int>> samples, epochs;
  for (int64_t id = 0; id < 20; ++id) samples.insert(square(h, id, 1));
  for (int epoch = 1; epoch <= 20; ++epoch) epochs.insert(square(h, 3, epoch));
  CHECK(samples.size() >= 15);  // different samples, different squares
  CHECK(epochs.size() >= 15);   // a fresh square every epoch
  CHECK(square(h, 3, 1, 1) != square(h, 3, 1, 0));

  testing::HarnessOptions other_seed;
  other_seed.seed = 2;
  testing::Harness h2 = cutout("size: 8, p: 1", other_seed);
  int same = 0;
  for (int64_t id = 0; id < 20; ++id) same += square(h, id, 1) == square(h2, id, 1);
  CHECK(same <= 5);
}

TEST_CASE("validation and test samples are never erased") {
  testing::Harness h = cutout("size: 8, p: 1");
  for (Split split : {Split::validation, Split::test})
    CHECK(erased(kImage, h.process(testing::image_sample(kImage, 0, 1, split)).image, 0).pixels == 0);
}
