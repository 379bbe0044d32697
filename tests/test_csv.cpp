// The csv source: a header line (path, label, optional split), RFC 4180 quoting, paths
// relative to the CSV's directory, the flat split without a split column, and errors that
// name FILE:LINE:COL.
#include <catch2/catch.hpp>

#include <filesystem>
#include <fstream>
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

struct Dir {
  fs::path root = fs::temp_directory_path() / fmt::format("pipe-csv-{}", ::getpid());
  Dir() { fs::remove_all(root); }
  ~Dir() { fs::remove_all(root); }
  void img(const std::string& rel, int value = 7) const {
    fs::create_directories((root / rel).parent_path());
    REQUIRE(cv::imwrite((root / rel).string(), cv::Mat(3, 5, CV_8UC3, cv::Scalar::all(value))));
  }
  std::string csv(const std::string& text, const std::string& name = "data.csv") const {
    fs::create_directories(root);
    std::ofstream(root / name, std::ios::binary) << text;
    return (root / name).string();
  }
  std::unique_ptr<Source> source(const std::string& more = "", const std::string& name = "data.csv") const {
    return testing::make_source(fmt::format("{{source: csv, path: \"{}\"{}}}", (root / name).string(), more));
  }
};

std::map<std::string, std::pair<std::string, Split>> samples(const Source& s) {  // origin -> (class, split)
  std::map<std::string, std::pair<std::string, Split>> out;
  for (Split sp : kAllSplits)
    for (int64_t i = 0; i < s.size(sp); ++i) {
      const Sample x = s.describe(sp, i);
      CHECK(x.id == i);
      out[x.origin] = {s.classes()[static_cast<size_t>(x.label)], sp};
    }
  return out;
}

}  // namespace

TEST_CASE("csv source with a split column") {
  Dir d;
  d.img("imgs/dog, big.png", 1);
  d.img("imgs/cat 1.png", 2);
  d.img("imgs/ant.png", 3);
  d.img("other/cat2.png", 4);
  const std::string r = d.root.string();
  // A BOM, CRLF line ends, a quoted comma, an escaped quote, a blank line, an absolute path.
  d.csv("\xEF\xBB\xBFpath,label,split\r\n\"imgs/dog, big.png\",dog,train\r\nimgs/cat 1.png,cat,val\r\n\r\n"
        "imgs/ant.png,ant,test\r\n" + r + "/other/cat2.png,cat,train\r\n\"imgs/\"\"gone\"\".png\",dog,validation\r\n");
  auto src = d.source();
  CHECK(src->classes() == std::vector<std::string>{"ant", "cat", "dog"});  // sorted, not first-seen
  using P = std::pair<std::string, Split>;
  CHECK(samples(*src) == std::map<std::string, P>{{r + "/imgs/dog, big.png", {"dog", Split::train}},
                                                  {r + "/other/cat2.png", {"cat", Split::train}},
                                                  {r + "/imgs/cat 1.png", {"cat", Split::validation}},
                                                  {r + "/imgs/\"gone\".png", {"dog", Split::validation}},
                                                  {r + "/imgs/ant.png", {"ant", Split::test}}});
  for (int64_t i = 0; i < src->size(Split::validation); ++i) {
    Sample s = src->describe(Split::validation, i);
    if (s.origin.find("gone") == std::string::npos) {
      src->load(s);
      std::ifstream f(s.origin, std::ios::binary);
      CHECK(*s.bytes == std::vector<uint8_t>((std::istreambuf_iterator<char>(f)), {}));
    } else {  // listed but missing: a per-sample error when loaded, as in folder
      CHECK_THROWS_MATCHES(src->load(s), SampleError,
                           Catch::Matchers::Message("cannot open " + s.origin + ": No such file or directory"));
    }
  }
  SECTION("relative to the graph file, identity follows the data") {
    auto rel = testing::make_source("{source: csv, path: " + d.root.filename().string() + "/data.csv}",
                                    d.root.parent_path().string());
    CHECK(rel->identity() == src->identity());
    d.img("imgs/ant.png", 200);  // same name and shape, other bytes: the size differs
    fs::last_write_time(d.root / "imgs/ant.png", fs::last_write_time(d.root / "imgs/ant.png") + std::chrono::hours(1));
    CHECK(d.source()->identity() != src->identity());
  }
  SECTION("splits") {
    CHECK_THROWS_WITH(d.source(", validation_split: 0.5"), Catch::Contains("has a split column"));
    std::unique_ptr<Source> two;
    const std::string err = test::capture_stderr([&] { two = d.source(", splits: [train, validation]"); });
    CHECK_THAT(err, Catch::Contains("pipe: warning: csv: " + r + "/data.csv: 1 row(s) of split test ignored"));
    CHECK(two->size(Split::test) == 0);
    d.csv("path,label,split\nimgs/ant.png,ant,train\nimgs/cat 1.png,cat,val\n", "two.csv");
    CHECK_THROWS_WITH(d.source("", "two.csv"), Catch::Contains(r + "/two.csv has no rows of the test split") &&
                                                   Catch::Contains("splits: [train, validation]"));
  }
}

TEST_CASE("csv source without a split column splits like a flat folder") {
  Dir d;
  std::string text = "label,path,source\n";  // any column order; an extra column is unused
  for (int i = 0; i < 10; ++i) text += fmt::format("ants,a/{:02}.png,web\n", i);
  for (int i = 0; i < 5; ++i) text += fmt::format("bees,b/{:02}.png,web\n", i);
  d.csv(text);  // the images need not exist: listing opens none
  std::unique_ptr<Source> src;
  const std::string err = test::capture_stderr([&] { src = d.source(", test_split: 0.1"); });
  CHECK_THAT(err, Catch::Contains(d.root.string() + "/data.csv:1:12: column 'source' is not used"));
  std::map<std::pair<std::string, Split>, int> n;
  for (const auto& [origin, cs] : samples(*src)) ++n[cs];
  using K = std::pair<std::string, Split>;
  CHECK(n == std::map<K, int>{{{"ants", Split::train}, 7}, {{"ants", Split::validation}, 2}, {{"ants", Split::test}, 1},
                              {{"bees", Split::train}, 3}, {{"bees", Split::validation}, 1}, {{"bees", Split::test}, 1}});
  auto again = d.source(", test_split: 0.1");
  CHECK(samples(*again) == samples(*src));
  std::set<std::map<std::string, std::pair<std::string, Split>>> assignments;
  for (int seed = 1; seed <= 4; ++seed)
    assignments.insert(samples(*d.source(fmt::format(", test_split: 0.1, split_seed: {}", seed))));
  CHECK(assignments.size() > 1);
  CHECK_THROWS_WITH(d.source(", splits: [train]"), Catch::Contains("has no split column"));
}

TEST_CASE("csv errors name the file, line and column") {
  Dir d;
  const std::string f = d.root.string() + "/data.csv";
  const auto error = [&](const std::string& text) {
    d.csv(text);
    try {
      d.source();
    } catch (const std::exception& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  CHECK(error("") == f + ":1:1: empty file: want a header line path,label[,split]");
  CHECK_THAT(error("file,label\na.png,x\n"), Catch::StartsWith(f + ":1:1: no 'path' column in the header line "
                                                                    "(want path,label[,split]; found 'file', 'label')"));
  CHECK(error("path,label,path\na.png,x,b.png\n") == f + ":1:12: column 'path' appears twice in the header");
  CHECK(error("path,label\n") == f + ":2: no rows after the header");
  CHECK(error("path,label\na.png,x\nb.png\n") == f + ":3: 1 field(s), the header has 2");
  CHECK(error("path,label\na.png,x\n,y\n") == f + ":3:1: empty path");
  CHECK(error("path,label\na.png,\n") == f + ":2:7: empty label");
  CHECK(error("path,label,split\na.png,x,train\nb.png,y,tst\n") ==
        f + ":3:9: unknown split 'tst' (want train, validation or val, test)");
  CHECK(error("path,label\na.png,x\n./a.png,y\n") == f + ":3:1: ./a.png is already listed on line 2");
  CHECK(error("path,label\n\"a\nb.png\",x\nc\"d.png,y\n") == f + ":4:2: a quote inside an unquoted field "
                                                                   "(quote the whole field: \"a, b.jpg\")");
  CHECK(error("path,label\n\"a.png\"x,y\n") == f + ":2:8: text after a closing quote (a quote inside a field "
                                                   "is written \"\")");
  CHECK(error("path,label\na.png,x\n\"b.png,y\n") == f + ":3:1: a quoted field that never closes (a quote "
                                                         "inside one is written \"\")");
}
