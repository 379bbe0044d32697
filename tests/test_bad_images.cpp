// A folder tree that mixes good images with broken and odd ones: with on_error: skip the run
// completes and lists every broken file with its reason in summary.json while odd-but-valid
// images decode; with on_error: fail the run stops naming the file, and the CLI exits 1.
//
// The unreadable file (mode 000) is real even as root, who reads any file whatever its mode:
// the `pipe run` child drops CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH before exec and checks
// that the file is then unreadable. The CMYK JPEG is written with libjpeg (OpenCV cannot write
// one), Adobe-style: inverted ink values and an APP14 marker, as Photoshop writes them.
#include <catch2/catch.hpp>

#include <jpeglib.h>
#include <linux/capability.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <array>
#include <cstdio>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>

#include <fmt/format.h>
#include <opencv2/imgcodecs.hpp>

#include <nlohmann/json.hpp>

#include "pipe/stage.h"
#include "jpeg_writer.h"
#include "process.h"
#include "runner.h"
#include "spec.h"
#include "pipe/testing.h"

namespace fs = std::filesystem;
using namespace pipeline;
using pipeline::test::Child;
using pipeline::test::finish;
using pipeline::test::spawn;

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

// An Adobe CMYK JPEG, `cols` wide: left half stored as `left`, right half as `right`
// (c, m, y, k as stored: 255 - ink, the Adobe convention).
std::vector<uint8_t> cmyk_jpeg(int rows, int cols, std::array<uint8_t, 4> left, std::array<uint8_t, 4> right) {
  cv::Mat cmyk(rows, cols, CV_8UC4);
  for (int r = 0; r < rows; ++r)
    for (int c = 0; c < cols; ++c)
      for (int k = 0; k < 4; ++k) cmyk.ptr(r)[c * 4 + k] = (c < cols / 2 ? left : right)[static_cast<size_t>(k)];
  test::LibjpegOptions o;
  o.quality = 95;
  return test::libjpeg_encode(cmyk, o);
}

// The CMYK test picture: stored values and the RGB they stand for, R = (255 - C)(255 - K)/255
// in ink terms, i.e. c * k / 255 in stored terms.
constexpr std::array<uint8_t, 4> kCmykLeft{255, 128, 64, 200}, kCmykRight{51, 204, 255, 230};
constexpr std::array<int, 3> kRgbLeft{200, 100, 50}, kRgbRight{46, 184, 230};

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
    odd_file("cmyk.jpg", cmyk_jpeg(16, 32, kCmykLeft, kCmykRight));
    // Valid content: only the permission makes it bad (if the read got through, it would
    // decode and the skip list would not match).
    write(d / "unreadable.png", png);
    ::chmod((d / "unreadable.png").c_str(), 0);
    bad.insert("unreadable.png");
    ++train_total;
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

namespace {

// Root's reads ignore file modes: the child drops the capabilities that allow it from its
// bounding set (so that exec does not grant them back) and from its own sets, then makes sure
// the mode-000 file really cannot be opened (exit 125 otherwise). Async-signal-safe calls only.
void drop_read_override(const char* unreadable) {
  if (::geteuid() == 0) {
    for (int cap : {CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH})
      if (::prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0) ::_exit(124);
    __user_cap_header_struct h{_LINUX_CAPABILITY_VERSION_3, 0};
    __user_cap_data_struct d[2]{};
    if (::syscall(SYS_capget, &h, d) != 0) ::_exit(124);
    for (int cap : {CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH}) {
      const uint32_t bit = 1u << (cap % 32);
      d[cap / 32].effective &= ~bit;
      d[cap / 32].permitted &= ~bit;
      d[cap / 32].inheritable &= ~bit;
    }
    if (::syscall(SYS_capset, &h, d) != 0) ::_exit(124);
  }
  const int fd = ::open(unreadable, O_RDONLY);
  if (fd >= 0) ::_exit(125);
}

}  // namespace

TEST_CASE("bad images are skipped with reasons under on_error: skip, odd ones decode") {
  Tree tree;
  const fs::path cache = tree.root.string() + "-cache";
  const std::string unreadable = (tree.root / "train" / "cats" / "unreadable.png").string();
  {  // in process: exact reasons and the number of samples trained on
    // As root this process reads the mode-000 file; the CLI run below is where it is unreadable.
    std::set<std::string> expect = tree.bad;
    if (::geteuid() == 0) expect.erase("unreadable.png");
    setenv("PIPE_CACHE_DIR", cache.c_str(), 1);
    RunConfig cfg;
    cfg.write_outputs = false;
    cfg.quiet = true;
    const RunResult r = run_graph(spec_of(tree.graph("skip")), cfg);

    std::map<std::string, std::string> skipped;
    for (const SkippedSample& s : r.skipped) skipped[fs::path(s.sample).filename().string()] = s.reason;
    std::set<std::string> names;
    for (const auto& [n, _] : skipped) names.insert(n);
    CHECK(names == expect);
    CHECK(r.summary.at("skipped_count") == expect.size());
    CHECK(r.epochs.at(0).train.count == tree.train_total - static_cast<int64_t>(expect.size()));
    CHECK(skipped["zero.jpg"] == "cannot decode image (empty file)");
    CHECK(skipped["truncated.jpg"] == "cannot decode image (truncated JPEG: no end-of-image marker after the last scan)");
    CHECK(skipped["truncated.png"] == "cannot decode image (not a supported format or truncated)");
    CHECK(skipped["text.jpg"] == "cannot decode image (not a supported format or truncated)");
    CHECK(skipped["huge.png"] == "image has 10000000000 pixels, more than max_pixels = 100000000");
    CHECK_THAT(skipped["broken-link.png"], Catch::Contains("broken-link.png") && Catch::Contains("No such file or directory"));
  }
  {  // `pipe run` without the right to read the mode-000 file: summary.json lists every bad file
    const fs::path g = tree.root.string() + "-graph.yaml";
    std::ofstream(g) << tree.graph("skip");
    const fs::path run = tree.root.string() + "-run";
    Child c = spawn({std::string(PIPE_BINARY_DIR) + "/pipe", "run", g.string(), "--no-progress", "--out", run.string()},
                    cache.string(), [&] { drop_read_override(unreadable.c_str()); });
    std::string err;
    const int rc = finish(c, &err);
    INFO(err);
    REQUIRE(rc != 124);  // could not drop the capabilities
    REQUIRE(rc != 125);  // the mode-000 file was still readable: the case would test nothing
    REQUIRE(rc == 0);
    const auto s = nlohmann::json::parse(std::ifstream(run / "summary.json"));
    CHECK(s.at("skipped_count") == tree.bad.size());
    std::map<std::string, std::string> skipped;
    for (const auto& k : s.at("skipped")) skipped[fs::path(k.at("sample").get<std::string>()).filename().string()] = k.at("reason").get<std::string>();
    std::set<std::string> names;
    for (const auto& [n, _] : skipped) names.insert(n);
    CHECK(names == tree.bad);
    CHECK(skipped["unreadable.png"] == fmt::format("cannot open {}: Permission denied", unreadable));
    CHECK(skipped["huge.png"] == "image has 10000000000 pixels, more than max_pixels = 100000000");
    fs::remove(g);
    fs::remove_all(run);
  }
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

  // CMYK: each half decodes to its RGB colour (JPEG at quality 95 on flat 8x8 blocks is
  // within a few levels). Read as non-inverted CMYK, or with R and B swapped, it would not be.
  auto cmyk = testing::make<MapStage>("{stage: decode, size: [16, 32], interpolation: nearest}");
  Sample c;
  c.bytes = std::make_shared<std::vector<uint8_t>>(cmyk_jpeg(16, 32, kCmykLeft, kCmykRight));
  cmyk->process(c, rng);
  REQUIRE(c.image.type() == CV_8UC3);
  for (const auto& [col, rgb] : {std::pair{4, kRgbLeft}, std::pair{27, kRgbRight}})
    for (int k = 0; k < 3; ++k) {
      INFO("column " << col << " channel " << k);
      CHECK(std::abs(int{c.image.at<cv::Vec3b>(8, col)[k]} - rgb[static_cast<size_t>(k)]) <= 6);
    }
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
  // finish() also fails on a sanitizer report: exit 1 must be pipe's own.
  Child c = spawn({std::string(PIPE_BINARY_DIR) + "/pipe", "run", g.string(), "--no-progress", "--out",
                   tree.root.string() + "-run"},
                  cache.string());
  std::string text;
  CHECK(finish(c, &text) == 1);
  CHECK_THAT(text, Catch::Contains("pipe: error: node '") && Catch::Contains(tree.root.string() + "/train/cats/"));
  fs::remove_all(cache);
  fs::remove(g);
  fs::remove_all(tree.root.string() + "-run");
}
