// The folder source's layouts: val/ for validation/, the flat ROOT/<class>/ tree split by
// validation_split and test_split, warnings for what the layout has no place for, and
// errors for empty splits and parameters of the other layout.
#include <catch2/catch.hpp>

#include <filesystem>
#include <map>
#include <set>

#include <unistd.h>

#include <fmt/format.h>
#include <opencv2/imgcodecs.hpp>

#include "pipe/source.h"
#include "pipe/testing.h"
#include "stderr_capture.h"

using namespace pipeline;
namespace fs = std::filesystem;

namespace {

struct Tree {
  fs::path root = fs::temp_directory_path() / fmt::format("pipe-layouts-{}", ::getpid());
  Tree() { fs::remove_all(root); }
  ~Tree() { fs::remove_all(root); }
  void img(const std::string& rel) const {
    fs::create_directories((root / rel).parent_path());
    REQUIRE(cv::imwrite((root / rel).string(), cv::Mat(4, 4, CV_8UC3, cv::Scalar::all(rel.size()))));
  }
  void images(const std::string& dir, int n) const {
    for (int i = 0; i < n; ++i) img(fmt::format("{}/{:02}.png", dir, i));
  }
  std::unique_ptr<Source> source(const std::string& more = "") const {
    return testing::make_source(fmt::format("{{source: folder, path: \"{}\"{}}}", root.string(), more));
  }
};

// Per split: the files (relative to the root) and the class counts.
std::set<std::string> files(const Tree& t, const Source& s, Split sp) {
  std::set<std::string> out;
  for (int64_t i = 0; i < s.size(sp); ++i) out.insert(fs::relative(s.describe(sp, i).origin, t.root).string());
  return out;
}
std::map<int, int> counts(const Source& s, Split sp) {
  std::map<int, int> out;
  for (int64_t i = 0; i < s.size(sp); ++i) ++out[s.describe(sp, i).label];
  return out;
}

}  // namespace

TEST_CASE("folder reads val as validation and refuses both") {
  Tree t;
  for (const char* split : {"train", "val", "test"})
    for (const char* cls : {"ants", "bees"}) t.images(fmt::format("{}/{}", split, cls), 2);
  auto src = t.source();
  CHECK(src->classes() == std::vector<std::string>{"ants", "bees"});
  CHECK(files(t, *src, Split::validation) == std::set<std::string>{"val/ants/00.png", "val/ants/01.png",
                                                                   "val/bees/00.png", "val/bees/01.png"});
  CHECK(src->size(Split::train) == 4);
  t.img("validation/ants/x.png");
  CHECK_THROWS_WITH(t.source(), Catch::Contains("has both " + (t.root / "val").string() + "/ and " +
                                                (t.root / "validation").string() + "/"));
}

TEST_CASE("folder splits a flat tree per class, by split_seed") {
  Tree t;
  t.images("ants", 10);
  t.images("bees", 5);
  const std::string fractions = ", validation_split: 0.2, test_split: 0.1";
  auto a = t.source(fractions);
  // ants: round(1.0) test, round(2.0) validation, 7 train; bees: round(0.5) = 1 test, 1, 3.
  CHECK(counts(*a, Split::test) == std::map<int, int>{{0, 1}, {1, 1}});
  CHECK(counts(*a, Split::validation) == std::map<int, int>{{0, 2}, {1, 1}});
  CHECK(counts(*a, Split::train) == std::map<int, int>{{0, 7}, {1, 3}});
  std::set<std::string> all;
  for (Split sp : kAllSplits)
    for (const std::string& f : files(t, *a, sp)) CHECK(all.insert(f).second);  // disjoint
  CHECK(all.size() == 15);

  auto again = t.source(fractions);
  for (Split sp : kAllSplits) CHECK(files(t, *again, sp) == files(t, *a, sp));
  CHECK(again->identity() == a->identity());
  std::set<std::set<std::string>> held_out;  // another seed holds out other files
  for (int seed = 1; seed <= 4; ++seed)
    held_out.insert(files(t, *t.source(fractions + fmt::format(", split_seed: {}", seed)), Split::validation));
  CHECK(held_out.size() > 1);
  CHECK(t.source(fractions + ", split_seed: 2")->identity() != a->identity());
  CHECK(t.source(", validation_split: 0.3")->identity() != a->identity());

  SECTION("defaults: 20% validation, no test") {
    auto d = t.source();
    CHECK(counts(*d, Split::validation) == std::map<int, int>{{0, 2}, {1, 1}});
    CHECK(d->size(Split::test) == 0);
  }
  SECTION("a new class moves no other class's files") {
    t.images("aardvarks", 3);  // sorts first: every other class's label moves
    auto b = t.source(fractions);
    CHECK(b->classes() == std::vector<std::string>{"aardvarks", "ants", "bees"});
    const auto without_new = [&](Split sp) {
      std::set<std::string> f = files(t, *b, sp);
      for (auto it = f.begin(); it != f.end();) it = it->rfind("aardvarks/", 0) == 0 ? f.erase(it) : std::next(it);
      return f;
    };
    for (Split sp : kAllSplits) CHECK(without_new(sp) == files(t, *a, sp));
  }
  SECTION("errors") {
    CHECK_THROWS_WITH(t.source(", validation_split: 0.5, test_split: 0.5"), Catch::Contains("must be below 1"));
    CHECK_THROWS_WITH(t.source(", splits: [train]"), Catch::Contains("splits names the split directories"));
    Tree one;
    one.images("ants", 1);
    CHECK_THROWS_WITH(one.source(), Catch::Contains("validation_split gives the validation split no images"));
    CHECK(one.source(", validation_split: 0")->size(Split::train) == 1);
  }
}

TEST_CASE("folder warns about what its layout has no place for") {
  Tree t;
  for (const char* split : {"train", "validation", "test"}) t.images(fmt::format("{}/ants", split), 1);
  const std::string clean = test::capture_stderr([&] { t.source(); });
  CHECK(clean.empty());
  t.images("misc", 1);                     // next to the split directories
  t.img("train/loose.png");                // outside any class
  t.images("train/ants/nested", 1);        // inside a class
  std::unique_ptr<Source> src;
  const std::string err = test::capture_stderr([&] { src = t.source(); });
  const std::string r = t.root.string();
  CHECK_THAT(err, Catch::Contains("pipe: warning: folder: " + r + "/misc/ ignored: not a split directory"));
  CHECK_THAT(err, Catch::Contains("pipe: warning: folder: 1 image(s) directly in " + r + "/train/ ignored"));
  CHECK_THAT(err, Catch::Contains("pipe: warning: folder: " + r + "/train/ants/nested/ ignored"));
  CHECK(src->size(Split::train) == 1);
  CHECK(src->classes() == std::vector<std::string>{"ants"});
  const std::string left_out = test::capture_stderr([&] { src = t.source(", splits: [train, validation]"); });
  CHECK_THAT(left_out, Catch::Contains(r + "/test/ ignored: splits is [train, validation]"));
  CHECK(src->size(Split::test) == 0);
}

TEST_CASE("folder refuses an empty split the graph did not declare") {
  Tree t;
  t.images("train/ants", 2);
  t.images("validation/ants", 1);
  const std::string r = t.root.string();
  CHECK_THROWS_WITH(t.source(), Catch::Contains("no images under " + r + "/test/ (no such directory): the test "
                                                "split of " + r + " is empty") &&
                                    Catch::Contains("splits: [train, validation]"));
  fs::create_directories(t.root / "test/ants");
  CHECK_THROWS_WITH(t.source(), Catch::Contains("no images under " + r + "/test/<class>/"));
  CHECK(t.source(", splits: [train, validation]")->size(Split::validation) == 1);
  CHECK_THROWS_WITH(t.source(", splits: [train, validation], validation_split: 0.3"),
                    Catch::Contains("validation_split and test_split split a tree"));
}

TEST_CASE("folder refuses split fractions that leave a split empty") {
  Tree t;
  t.images("ants", 1);  // train keeps its one image: validation_split cannot take any
  t.images("bees", 1);
  CHECK_THROWS_WITH(t.source(", validation_split: 0.2"),
                    Catch::Contains("folder: validation_split gives the validation split no images: every class under " +
                                    t.root.string() + " has too few images to spare one"));
  t.images("bees", 3);
  CHECK(t.source(", validation_split: 0.2")->size(Split::validation) == 1);  // bees spares one
}
