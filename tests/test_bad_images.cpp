// A folder tree that mixes good images with broken and odd ones: with on_error: skip the run
// completes and lists every broken file with its reason while odd-but-valid images decode;
// with on_error: fail the run stops naming the file, and the CLI exits 1.
//
// Not covered here, on purpose: an unreadable file (tests run as root, for whom permissions do
// not block reads) and a CMYK JPEG (OpenCV cannot write one; libjpeg reads them as such).
#include <catch2/catch.hpp>

#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>

#include <fmt/format.h>
#include <opencv2/imgcodecs.hpp>

#include "pipe/stage.h"
#include "runner.h"
#include "spec.h"
#include "testing.h"

namespace fs = std::filesystem;
using namespace pipeline;

namespace {

std::vector<uint8_t> encode(const std::string& ext, const cv::Mat& m) {
  std::vector<uint8_t> buf;
  REQUIRE(cv::imencode(ext, m, buf));
  return buf;
}

void write(const fs::path& p, const std::vector<uint8_t>& bytes) {
  std::ofstream(p, std::ios::binary).write(reinterpret_cast<const char*>(bytes.data()),
                                           static_cast<std::streamsize>(bytes.size()));
}

cv::Mat pattern(int rows, int cols, int type, int seed) {
  cv::Mat m(rows, cols, type);
  cv::randu(m, cv::Scalar::all(0), cv::Scalar::all(seed % 2 ? 255 : 120));
  return m;
}

// A JPEG with an EXIF APP1 segment carrying Orientation = `orientation`.
std::vector<uint8_t> exif_jpeg(const cv::Mat& m, uint16_t orientation) {
  std::vector<uint8_t> jpg = encode(".jpg", m);
  const uint8_t tiff[] = {'I', 'I', 0x2A, 0, 8, 0, 0, 0,                 // little-endian TIFF, IFD at 8
                          1, 0,                                          // one entry
                          0x12, 0x01, 3, 0, 1, 0, 0, 0,                  // tag 0x0112 SHORT x1
                          static_cast<uint8_t>(orientation), 0, 0, 0,    // value
                          0, 0, 0, 0};                                   // no next IFD
  std::vector<uint8_t> app1 = {0xFF, 0xE1, 0, 0, 'E', 'x', 'i', 'f', 0, 0};
  app1.insert(app1.end(), std::begin(tiff), std::end(tiff));
  const size_t len = app1.size() - 2;
  app1[2] = static_cast<uint8_t>(len >> 8);
  app1[3] = static_cast<uint8_t>(len & 0xFF);
  jpg.insert(jpg.begin() + 2, app1.begin(), app1.end());
  return jpg;
}

struct Tree {
  fs::path root;
  std::set<std::string> bad;   // file names that must be skipped
  std::set<std::string> odd;   // valid but unusual: must not be skipped
  int train_total = 0;

  Tree() : root(fs::temp_directory_path() / fmt::format("pipe-bad-images-{}", ::getpid())) {
    fs::remove_all(root);
    for (const char* split : {"train", "validation", "test"})
      for (const char* cls : {"cats", "dogs"}) {
        fs::create_directories(root / split / cls);
        const int n = std::string(split) == "train" ? 6 : 2;
        for (int i = 0; i < n; ++i)
          write(root / split / cls / fmt::format("good{}.png", i), encode(".png", pattern(20, 24, CV_8UC3, i + (cls[0] == 'd'))));
        if (std::string(split) == "train") train_total += n;
      }
    const fs::path d = root / "train" / "cats";
    const auto bad_file = [&](const std::string& name, const std::vector<uint8_t>& bytes) {
      write(d / name, bytes);
      bad.insert(name);
      ++train_total;
    };
    const auto odd_file = [&](const std::string& name, const std::vector<uint8_t>& bytes) {
      write(d / name, bytes);
      odd.insert(name);
      ++train_total;
    };
    const std::vector<uint8_t> jpg = encode(".jpg", pattern(40, 40, CV_8UC3, 3));
    const std::vector<uint8_t> png = encode(".png", pattern(40, 40, CV_8UC3, 5));
    bad_file("zero.jpg", {});
    bad_file("truncated.jpg", std::vector<uint8_t>(jpg.begin(), jpg.begin() + static_cast<long>(jpg.size() / 2)));
    bad_file("truncated.png", std::vector<uint8_t>(png.begin(), png.begin() + static_cast<long>(png.size() / 2)));
    const std::string text = "this is not an image\n";
    bad_file("text.jpg", std::vector<uint8_t>(text.begin(), text.end()));
    std::vector<uint8_t> noise(3000);
    for (size_t i = 0; i < noise.size(); ++i) noise[i] = static_cast<uint8_t>((i * 2654435761u) >> 13);
    bad_file("random.png", noise);
    std::vector<uint8_t> huge = png;  // IHDR width and height (big-endian) at bytes 16..23
    for (int k : {16, 20}) {
      huge[static_cast<size_t>(k)] = 0x00;
      huge[static_cast<size_t>(k) + 1] = 0x01;
      huge[static_cast<size_t>(k) + 2] = 0x86;
      huge[static_cast<size_t>(k) + 3] = 0xA0;  // 100000
    }
    bad_file("huge.png", huge);
    fs::create_symlink(root / "nowhere.png", d / "broken-link.png");
    bad.insert("broken-link.png");
    ++train_total;

    odd_file("one-pixel.png", encode(".png", pattern(1, 1, CV_8UC3, 1)));
    odd_file("sixteen-bit.png", encode(".png", pattern(30, 30, CV_16UC3, 1)));
    odd_file("rgba.png", encode(".png", pattern(30, 30, CV_8UC4, 1)));
    odd_file("gray.jpg", encode(".jpg", pattern(30, 30, CV_8UC1, 1)));
    odd_file("exif-rotated.jpg", exif_jpeg(pattern(20, 40, CV_8UC3, 1), 6));
    odd_file("with space \xC3\xBC\xE6\x97\xA5.png", encode(".png", pattern(25, 25, CV_8UC3, 1)));
  }
  ~Tree() { fs::remove_all(root); }

  std::string graph(const std::string& on_error) const {
    return fmt::format(R"(
data: {{source: folder, path: "{}"}}
nodes:
  decode:   {{stage: decode, size: [16, 16]}}
  features: {{stage: convbase, model: "builtin:small_vgg", batch: 8}}
  head:     {{stage: dense_head, hidden: 8}}
edges: [decode -> features -> head]
train: {{epochs: 1, batch: 4}}
on_error: {}
)", root.string(), on_error);
  }
};

GraphSpec spec_of(const std::string& yaml) {
  Diagnostics diag("bad.yaml");
  GraphSpec g = parse_graph(yaml, "bad.yaml", {}, Registry::global(), diag);
  if (!diag.ok()) FAIL(diag.str());
  return g;
}

}  // namespace

TEST_CASE("bad images are skipped with reasons under on_error: skip, odd ones decode") {
  Tree tree;
  const fs::path cache = tree.root.string() + "-cache";
  setenv("PIPE_CACHE_DIR", cache.c_str(), 1);
  RunConfig cfg;
  cfg.write_outputs = false;
  cfg.quiet = true;
  const RunResult r = run_graph(spec_of(tree.graph("skip")), cfg);

  std::map<std::string, std::string> skipped;
  for (const SkippedSample& s : r.skipped) skipped[fs::path(s.sample).filename().string()] = s.reason;
  std::set<std::string> names;
  for (const auto& [n, _] : skipped) names.insert(n);
  CHECK(names == tree.bad);
  CHECK(r.summary.dump().find("\"skipped_count\": 7") != std::string::npos);
  CHECK(r.epochs.at(0).train.count == tree.train_total - static_cast<int64_t>(tree.bad.size()));
  CHECK(skipped["zero.jpg"] == "cannot decode image (empty file)");
  CHECK(skipped["truncated.jpg"] == "cannot decode image (truncated JPEG: no end-of-image marker after the last scan)");
  CHECK(skipped["truncated.png"] == "cannot decode image (not a supported format or truncated)");
  CHECK(skipped["text.jpg"] == "cannot decode image (not a supported format or truncated)");
  CHECK(skipped["huge.png"] == "image has 10000000000 pixels, more than max_pixels = 100000000");
  CHECK_THAT(skipped["broken-link.png"], Catch::Contains("broken-link.png") && Catch::Contains("No such file or directory"));
  fs::remove_all(cache);
}

TEST_CASE("odd but valid images decode to the right shape and orientation") {
  Tree tree;
  auto decode = testing::make<MapStage>("{stage: decode, size: [20, 10], interpolation: nearest}");
  Rng rng(1, 2, 3, 4, 5);
  for (const std::string& name : tree.odd) {
    INFO(name);
    Sample s;
    std::ifstream in(tree.root / "train" / "cats" / name, std::ios::binary);
    s.bytes = std::make_shared<std::vector<uint8_t>>((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    decode->process(s, rng);
    CHECK(s.image.rows == 20);
    CHECK(s.image.cols == 10);
    CHECK(s.image.type() == CV_8UC3);
  }
  // EXIF orientation 6 (rotate 90 degrees clockwise): a 20x40 (rows x cols) picture decodes
  // as 40x20. Decode it at its own size to see the rotation.
  auto same = testing::make<MapStage>("{stage: decode, size: [40, 20], interpolation: nearest}");
  cv::Mat src(20, 40, CV_8UC3, cv::Scalar::all(0));
  src(cv::Rect(0, 0, 20, 20)).setTo(cv::Scalar::all(255));  // left half white
  Sample s;
  s.bytes = std::make_shared<std::vector<uint8_t>>(exif_jpeg(src, 6));
  same->process(s, rng);
  REQUIRE(s.image.rows == 40);
  REQUIRE(s.image.cols == 20);
  // Clockwise: the left half becomes the top half.
  CHECK(s.image.at<cv::Vec3b>(5, 10)[0] > 200);
  CHECK(s.image.at<cv::Vec3b>(35, 10)[0] < 50);
}

TEST_CASE("on_error: fail stops the run naming the file, and the CLI exits 1") {
  Tree tree;
  const fs::path cache = tree.root.string() + "-cache";
  setenv("PIPE_CACHE_DIR", cache.c_str(), 1);
  RunConfig cfg;
  cfg.write_outputs = false;
  cfg.quiet = true;
  try {
    run_graph(spec_of(tree.graph("fail")), cfg);
    FAIL("the run did not fail");
  } catch (const std::exception& e) {
    const std::string what = e.what();
    CHECK_THAT(what, Catch::StartsWith("node '"));
    bool names_a_bad_file = false;
    for (const std::string& b : tree.bad) names_a_bad_file |= what.find(b) != std::string::npos;
    CHECK(names_a_bad_file);
  }
  const fs::path g = tree.root.string() + "-graph.yaml";
  std::ofstream(g) << tree.graph("fail");
  const fs::path err = tree.root.string() + "-stderr.txt";
  const std::string cmd = fmt::format("'{}/pipe' run '{}' --no-progress --out '{}-run' > /dev/null 2> '{}'",
                                      PIPE_BINARY_DIR, g.string(), tree.root.string(), err.string());
  const int status = std::system(cmd.c_str());
  CHECK(WEXITSTATUS(status) == 1);
  std::ifstream in(err);
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  CHECK_THAT(text, Catch::Contains("pipe: error: node '") && Catch::Contains(tree.root.string() + "/train/cats/"));
  fs::remove_all(cache);
  fs::remove(g);
  fs::remove(err);
  fs::remove_all(tree.root.string() + "-run");
}
