// Sources: fashion_mnist (Debian's gzipped IDX files) and folder (a class-folder tree).
#include <catch2/catch.hpp>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>

#include <unistd.h>

#include <opencv2/imgcodecs.hpp>

#include "gunzip.h"
#include "pipe/source.h"
#include "pipe/stage.h"
#include "pipe/testing.h"

using namespace pipeline;
namespace fs = std::filesystem;

namespace {

const std::string kDir = "/usr/share/datasets/fashion-mnist/";

int64_t file_index(const Sample& s) { return std::stoll(s.origin.substr(s.origin.find('#') + 1)); }

std::vector<std::string> origins(const Source& src, Split sp) {
  std::vector<std::string> v;
  for (int64_t i = 0; i < src.size(sp); ++i) v.push_back(src.describe(sp, i).origin);
  return v;
}

}  // namespace

TEST_CASE("fashion_mnist source") {
  auto src = testing::make_source("{source: fashion_mnist}");  // shirt, t-shirt; 1000/500/500
  REQUIRE(src->classes() == std::vector<std::string>{"shirt", "t-shirt"});
  REQUIRE(src->size(Split::train) == 2000);
  REQUIRE(src->size(Split::validation) == 1000);
  REQUIRE(src->size(Split::test) == 1000);

  SECTION("labels balanced, ids are indices, files right, train and validation disjoint") {
    const std::vector<uint8_t> train_labels = gunzip(kDir + "train-labels-idx1-ubyte.gz");
    const std::vector<uint8_t> test_labels = gunzip(kDir + "t10k-labels-idx1-ubyte.gz");
    std::set<int64_t> seen_train;
    for (Split sp : kAllSplits) {
      std::map<int, int> count;
      for (int64_t i = 0; i < src->size(sp); ++i) {
        const Sample s = src->describe(sp, i);
        CHECK(s.id == i);
        CHECK(s.split == sp);
        ++count[s.label];
        const bool test = sp == Split::test;
        REQUIRE(s.origin.rfind(test ? "fashion-mnist:t10k-images-idx3-ubyte.gz#"
                                    : "fashion-mnist:train-images-idx3-ubyte.gz#", 0) == 0);
        // Fashion-MNIST label ids: shirt = 6, t-shirt = 0.
        const uint8_t raw = (test ? test_labels : train_labels)[8 + file_index(s)];
        REQUIRE(int(raw) == (s.label == 0 ? 6 : 0));
        if (sp == Split::train) seen_train.insert(file_index(s));
        if (sp == Split::validation) REQUIRE(seen_train.count(file_index(s)) == 0);
      }
      const int want = sp == Split::train ? 1000 : 500;
      CHECK(count == std::map<int, int>{{0, want}, {1, want}});
    }
    std::vector<int> first;  // classes are interleaved, not in blocks
    for (int i = 0; i < 20; ++i) first.push_back(src->describe(Split::train, i).label);
    CHECK(std::count(first.begin(), first.end(), 0) > 2);
    CHECK(std::count(first.begin(), first.end(), 1) > 2);
  }
  SECTION("load gives the file's pixels as a fresh 28x28 gray Mat") {
    const std::vector<uint8_t> images = gunzip(kDir + "t10k-images-idx3-ubyte.gz");
    for (int64_t i : {0, 499, 999}) {
      Sample s = src->describe(Split::test, i);
      src->load(s);
      REQUIRE(s.image.type() == CV_8UC1);
      REQUIRE(s.image.size() == cv::Size(28, 28));
      const uint8_t* want = images.data() + 16 + file_index(s) * 784;
      CHECK(std::equal(want, want + 784, s.image.data));
    }
  }
  SECTION("deterministic, sensitive to split_seed, stable under count changes") {
    auto again = testing::make_source("{source: fashion_mnist}");
    CHECK(origins(*again, Split::train) == origins(*src, Split::train));
    CHECK(again->identity() == src->identity());
    auto other = testing::make_source("{source: fashion_mnist, split_seed: 2}");
    CHECK(origins(*other, Split::train) != origins(*src, Split::train));
    CHECK(other->identity() != src->identity());
    // Validation is taken from the other end of each class's permutation.
    auto fewer = testing::make_source("{source: fashion_mnist, per_class: [10, 500, 500]}");
    auto a = origins(*fewer, Split::validation), b = origins(*src, Split::validation);
    std::sort(a.begin(), a.end());
    std::sort(b.begin(), b.end());
    CHECK(a == b);
  }
  SECTION("class order sets labels; counts may be zero") {
    auto s = testing::make_source(
        "{source: fashion_mnist, classes: [bag, ankle-boot, trouser], per_class: [3, 2, 0]}");
    CHECK(s->classes() == std::vector<std::string>{"bag", "ankle-boot", "trouser"});
    CHECK(s->size(Split::train) == 9);
    CHECK(s->size(Split::validation) == 6);
    CHECK(s->size(Split::test) == 0);
  }
  SECTION("errors") {
    CHECK_THROWS_WITH(testing::make_source("{source: fashion_mnist, classes: [shirt, bogus]}"),
                      Catch::Contains("bogus") && Catch::Contains("ankle-boot"));
    CHECK_THROWS_WITH(
        testing::make_source("{source: fashion_mnist, classes: [bag], per_class: [6000, 1, 0]}"),
        Catch::Contains("fewer than"));
    CHECK_THROWS_WITH(testing::make_source("{source: fashion_mnist, path: /nonexistent}"),
                      Catch::Contains("/nonexistent/train-labels-idx1-ubyte.gz"));
  }
}

TEST_CASE("folder source") {
  const fs::path root = fs::temp_directory_path() / ("pipe-folder-test-" + std::to_string(::getpid()));
  fs::remove_all(root);
  auto img = [&](const fs::path& rel, int value) {
    fs::create_directories((root / rel).parent_path());
    REQUIRE(cv::imwrite((root / rel).string(), cv::Mat(4, 6, CV_8UC3, cv::Scalar::all(value))));
  };
  img("train/dogs/b.png", 10);
  img("train/dogs/a.JPG", 20);
  img("train/cats/z.jpeg", 30);
  img("train/cats/.hidden.png", 40);
  img("train/.hiddendir/x.png", 50);
  img("validation/cats/v.bmp", 60);
  img("validation/birds/w.png", 70);
  std::ofstream(root / "train/cats/notes.txt") << "not an image";

  // This tree has no test/: the graph says so.
  const std::string two = ", splits: [train, validation]}";
  SECTION("classes, counts, labels, bytes") {
    auto src = testing::make_source("{source: folder, path: " + root.string() + two);
    REQUIRE(src->classes() == std::vector<std::string>{"birds", "cats", "dogs"});
    REQUIRE(src->size(Split::train) == 3);
    REQUIRE(src->size(Split::validation) == 2);
    REQUIRE(src->size(Split::test) == 0);  // no test dir, as splits says
    std::map<std::string, int> label;
    for (Split sp : kAllSplits)
      for (int64_t i = 0; i < src->size(sp); ++i) {
        const Sample s = src->describe(sp, i);
        CHECK(s.id == i);
        label[fs::relative(s.origin, root).string()] = s.label;
      }
    CHECK(label == std::map<std::string, int>{{"train/dogs/b.png", 2}, {"train/dogs/a.JPG", 2},
                                             {"train/cats/z.jpeg", 1}, {"validation/cats/v.bmp", 1},
                                             {"validation/birds/w.png", 0}});
    Sample s = src->describe(Split::train, 0);
    src->load(s);
    REQUIRE(s.bytes);
    std::ifstream f(s.origin, std::ios::binary);
    const std::vector<uint8_t> want((std::istreambuf_iterator<char>(f)), {});
    CHECK(*s.bytes == want);
    // A file that vanished: SampleError naming the path and the reason.
    fs::remove(s.origin);
    CHECK_THROWS_MATCHES(src->load(s), SampleError,
                         Catch::Matchers::Message("cannot open " + s.origin +
                                                  ": No such file or directory"));
  }
  SECTION("relative path, identity, seeded order") {
    auto a = testing::make_source("{source: folder, path: " + root.filename().string() + two,
                                  root.parent_path().string());
    auto b = testing::make_source("{source: folder, path: " + root.string() + two);
    CHECK(a->identity() == b->identity());
    CHECK(origins(*a, Split::train) == origins(*b, Split::train));
    std::set<std::vector<std::string>> orders;
    for (int seed = 1; seed <= 6; ++seed)
      orders.insert(origins(*testing::make_source("{source: folder, split_seed: " +
                                                  std::to_string(seed) + ", path: " +
                                                  root.string() + two),
                            Split::train));
    CHECK(orders.size() > 1);
    const std::string before = b->identity();
    img("train/dogs/c.png", 80);
    CHECK(testing::make_source("{source: folder, path: " + root.string() + two)->identity() != before);
  }
  SECTION("errors name the path") {
    CHECK_THROWS_WITH(testing::make_source("{source: folder, path: /no/such/tree}"),
                      Catch::Contains("/no/such/tree"));
    fs::create_directories(root / "empty/train/cats");
    CHECK_THROWS_WITH(testing::make_source("{source: folder, path: " + (root / "empty").string() + "}"),
                      Catch::Contains("no images under " + (root / "empty").string()));
  }
  fs::remove_all(root);
}
