// The fashion_mnist source's fixed pose (pose_rotation, pose_shift, pose_zoom, pose_flip):
// none gives the files' pixels byte for byte; a pose warps each image of every split by its
// own draws, the same in every source built with the same split_seed, within the ranges.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <string>

#include <opencv2/core.hpp>
#include <yaml-cpp/yaml.h>

#include "augment.h"
#include "fashion_mnist.h"
#include "gunzip.h"
#include "pipe/source.h"
#include "pipe/testing.h"
#include "spec.h"

using namespace pipeline;
using namespace pipeline::stages;

namespace {

const std::string kDir = "/usr/share/datasets/fashion-mnist/";
const std::string kPlain = "{source: fashion_mnist, per_class: [50, 20, 20]";
const std::string kPose = "pose: {rotation: 30, shift: 0.15, zoom: [0.75, 1.15], flip: true}";
const std::string kPosed = kPlain + ", " + kPose + "}";
const PoseRanges kRanges{30, 0.15, 0.75, 1.15, true};

int64_t file_index(const Sample& s) { return std::stoll(s.origin.substr(s.origin.find('#') + 1)); }

cv::Mat image(const Source& src, Split sp, int64_t i) {
  Sample s = src.describe(sp, i);
  src.load(s);
  return s.image;
}

bool same(const cv::Mat& a, const cv::Mat& b) { return a.size() == b.size() && cv::countNonZero(a != b) == 0; }

// The stored image `index` of the train (t10k = false) or t10k file.
struct Files {
  std::vector<uint8_t> train = gunzip(kDir + "train-images-idx3-ubyte.gz"), t10k = gunzip(kDir + "t10k-images-idx3-ubyte.gz");
  cv::Mat at(bool test, int64_t index) {
    uint8_t* p = (test ? t10k : train).data() + 16 + index * 784;
    return cv::Mat(28, 28, CV_8UC1, p).clone();
  }
};

}  // namespace

TEST_CASE("fashion_mnist pose is fixed per image, the same in every source, within its ranges") {
  SECTION("no pose: the files' pixels byte for byte, and the identity of today") {
    auto plain = testing::make_source(kPlain + "}");
    auto zero = testing::make_source(kPlain + ", pose: {rotation: 0, shift: 0, zoom: [1, 1], flip: false}}");
    CHECK(zero->identity() == plain->identity());
    CHECK(plain->identity().find("pose") == std::string::npos);
    Files files;
    for (Split sp : kAllSplits)
      for (int64_t i = 0; i < zero->size(sp); ++i) {
        const Sample s = zero->describe(sp, i);
        REQUIRE(same(image(*zero, sp, i), files.at(sp == Split::test, file_index(s))));
      }
  }
  SECTION("a pose: each image of every split is its stored image warped by its own draws") {
    auto src = testing::make_source(kPosed);
    Files files;
    int changed = 0, total = 0;
    for (Split sp : kAllSplits)
      for (int64_t i = 0; i < src->size(sp); ++i) {
        const bool test = sp == Split::test;
        const int64_t k = file_index(src->describe(sp, i));
        const cv::Mat stored = files.at(test, k);
        const cv::Mat want = augment_apply(stored, fashion_mnist_pose(kRanges, 1, test, k), {});
        const cv::Mat got = image(*src, sp, i);
        REQUIRE(same(got, want));
        changed += !same(got, stored);
        ++total;
      }
    CHECK(changed > total * 9 / 10);
  }
  SECTION("the same pose in every source with the split seed, whatever the counts; the identity names it") {
    auto a = testing::make_source(kPosed), b = testing::make_source(kPosed);
    for (Split sp : kAllSplits)
      for (int64_t i = 0; i < a->size(sp); ++i) REQUIRE(same(image(*a, sp, i), image(*b, sp, i)));
    auto more = testing::make_source("{source: fashion_mnist, per_class: [80, 20, 20], " + kPose + "}");
    std::map<int64_t, cv::Mat> by_file;
    for (int64_t i = 0; i < more->size(Split::train); ++i) by_file[file_index(more->describe(Split::train, i))] = image(*more, Split::train, i);
    for (int64_t i = 0; i < a->size(Split::train); ++i) {
      const int64_t k = file_index(a->describe(Split::train, i));
      REQUIRE(by_file.count(k));
      REQUIRE(same(by_file[k], image(*a, Split::train, i)));
    }
    auto plain = testing::make_source(kPlain + "}");
    auto other = testing::make_source(kPlain + ", pose: {rotation: 20}}");
    CHECK(a->identity().find(";pose=") != std::string::npos);
    CHECK(a->identity() != plain->identity());
    CHECK(other->identity() != a->identity());
    // Another split seed draws other poses for the same stored image.
    int differ = 0;
    for (int64_t k = 0; k < 100; ++k)
      differ += fashion_mnist_pose(kRanges, 1, false, k).theta != fashion_mnist_pose(kRanges, 2, false, k).theta;
    CHECK(differ == 100);
  }
  SECTION("drawn poses: uniform within the ranges, half flipped, one zoom for both axes") {
    constexpr int n = 4000;
    double lo = 1e9, hi = -1e9, sum = 0, zsum = 0, shift = 0;
    int flips = 0;
    for (int64_t k = 0; k < n; ++k) {
      const AugmentDraws d = fashion_mnist_pose(kRanges, 1, k % 2 == 1, k);
      lo = std::min(lo, d.theta), hi = std::max(hi, d.theta), sum += d.theta;
      REQUIRE(std::abs(d.theta) <= 30);
      REQUIRE(std::abs(d.tx) <= 0.15 * 28);
      REQUIRE(std::abs(d.ty) <= 0.15 * 28);
      shift = std::max({shift, std::abs(d.tx), std::abs(d.ty)});
      REQUIRE(d.zx == d.zy);
      REQUIRE(d.zx >= 0.75);
      REQUIRE(d.zx <= 1.15);
      REQUIRE(d.shear == 0);
      REQUIRE_FALSE(d.flip_v);
      zsum += d.zx;
      flips += d.flip_h;
      // Narrowing one range leaves the other draws as they were.
      const AugmentDraws upright = fashion_mnist_pose({0, 0.15, 0.75, 1.15, true}, 1, k % 2 == 1, k);
      REQUIRE(upright.theta == 0);
      REQUIRE(upright.tx == d.tx);
      REQUIRE(upright.zx == d.zx);
      REQUIRE(upright.flip_h == d.flip_h);
    }
    CHECK(lo < -29);
    CHECK(hi > 29);
    CHECK(std::abs(sum / n) < 1.5);  // U(-30, 30): sd of the mean 0.27
    CHECK(shift > 0.14 * 28);
    CHECK(std::abs(zsum / n - 0.95) < 0.01);  // U(0.75, 1.15): sd of the mean 0.0018
    CHECK(flips > n * 0.45);
    CHECK(flips < n * 0.55);
  }
}

TEST_CASE("a source's parameter group is a map in the graph, a dotted key in --set") {
  const std::string graph = std::string(PIPE_SOURCE_DIR) + "/graphs/cached.yaml";
  Diagnostics diag(graph);
  const GraphSpec g = load_graph(graph, {"data.pose.rotation=30", "data.pose.zoom=[0.8, 1.2]"}, Registry::global(), diag);
  REQUIRE(diag.ok());
  CHECK(g.source_params.number("pose.rotation") == 30);
  CHECK(g.source_params.numbers("pose.zoom") == std::vector<double>{0.8, 1.2});
  CHECK_FALSE(g.source_params.boolean("pose.flip"));  // defaults fill the rest of the group
  CHECK(g.resolved["data"]["pose"]["rotation"].as<double>() == 30);
  CHECK(g.resolved["data"]["pose"]["flip"].as<bool>() == false);
  // The resolved graph reads back to the same parameters (RUN/graph.yaml reruns a run).
  Diagnostics again("<resolved>");
  const GraphSpec r = parse_graph(YAML::Dump(g.resolved), graph, {}, Registry::global(), again);
  REQUIRE(again.ok());
  CHECK(r.source_params.canonical() == g.source_params.canonical());

  Diagnostics bad(graph);
  load_graph(graph, {"data.pose.rotaton=30"}, Registry::global(), bad);
  CHECK_FALSE(bad.ok());
  CHECK(bad.str().find("unknown parameter 'pose.rotaton'") != std::string::npos);
  CHECK(bad.str().find("did you mean 'pose.rotation'") != std::string::npos);
}
