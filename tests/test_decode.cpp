// decode: channel order, resizing, payload sources and per-sample errors; the libjpeg fast
// path (stages/jpeg_decode.h) against cv::imdecode, pixel for pixel.
#include <catch2/catch.hpp>

#include <cstdio>  // jpeglib.h needs FILE and size_t declared first
#include <cstdlib>
#include <cstring>

#include <fmt/format.h>
#include <jpeglib.h>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include "jpeg_decode.h"
#include "jpeg_writer.h"
#include "pipe/source.h"
#include "pipe/stage.h"
#include "pipe/testing.h"
#include "stderr_capture.h"

using namespace pipeline;

namespace {

std::shared_ptr<const std::vector<uint8_t>> encode(const cv::Mat& m, const std::string& ext) {
  std::vector<uint8_t> buf;
  REQUIRE(cv::imencode(ext, m, buf));
  return std::make_shared<const std::vector<uint8_t>>(std::move(buf));
}

cv::Mat run(MapStage& stage, Sample& s) {
  Rng rng(1, 2, 3, 4, 5);
  stage.process(s, rng);
  return s.image;
}

cv::Mat decode_bytes(const std::string& yaml, std::shared_ptr<const std::vector<uint8_t>> b) {
  auto stage = testing::make<MapStage>(yaml);
  Sample s;
  s.bytes = std::move(b);
  cv::Mat out = run(*stage, s);
  CHECK_FALSE(s.bytes);  // released after decoding
  return out;
}

// --- for the libjpeg fast path

// What the decode stage made of JPEG bytes before the fast path: imdecode + BGR2RGB
// (empty when imdecode fails).
cv::Mat imdecode_rgb(const std::vector<uint8_t>& bytes) {
  const cv::Mat bgr = cv::imdecode(bytes, cv::IMREAD_COLOR);
  cv::Mat rgb;
  if (!bgr.empty()) cv::cvtColor(bgr, rgb, cv::COLOR_BGR2RGB);
  return rgb;
}

// Same type, same size and every byte of every row equal.
bool same_pixels(const cv::Mat& a, const cv::Mat& b) {
  if (a.type() != b.type() || a.size() != b.size()) return false;
  for (int r = 0; r < a.rows; ++r)
    if (std::memcmp(a.ptr(r), b.ptr(r), static_cast<size_t>(a.cols) * a.elemSize()) != 0) return false;
  return true;
}

cv::Mat noise(int rows, int cols, int type, uint64_t seed) {
  cv::Mat m(rows, cols, type);
  cv::RNG(seed).fill(m, cv::RNG::UNIFORM, 0, 256);
  return m;
}

// Smooth gradients and hard edges: chroma upsampling has something to interpolate.
cv::Mat picture(int rows, int cols) {
  cv::Mat m(rows, cols, CV_8UC3);
  for (int r = 0; r < rows; ++r)
    for (int c = 0; c < cols; ++c)
      m.at<cv::Vec3b>(r, c) = cv::Vec3b(uint8_t(255 * c / cols), uint8_t(255 * r / rows), uint8_t((r * c) % 256));
  cv::circle(m, cv::Point(cols / 2, rows / 2), std::min(rows, cols) / 3, cv::Scalar(20, 200, 240), -1);
  return m;
}

std::vector<uint8_t> imencode_jpg(const cv::Mat& m, const std::vector<int>& params = {}) {
  std::vector<uint8_t> buf;
  REQUIRE(cv::imencode(".jpg", m, buf, params));
  return buf;
}

using test::LibjpegOptions;
using test::libjpeg_encode;

// The JPEG without its `marker` segments before the first scan (0xC4: Huffman tables, as
// Motion-JPEG frames omit them; 0xDB: quantization tables).
std::vector<uint8_t> without_segments(std::vector<uint8_t> jpg, uint8_t marker) {
  size_t i = 2;
  while (i + 4 <= jpg.size() && jpg[i] == 0xFF && jpg[i + 1] != 0xDA) {
    const size_t length = 2 + ((size_t{jpg[i + 2]} << 8) | jpg[i + 3]);
    if (jpg[i + 1] == marker)
      jpg.erase(jpg.begin() + static_cast<long>(i), jpg.begin() + static_cast<long>(i + length));
    else
      i += length;
  }
  return jpg;
}

// The JPEG with an APP1 segment: the 6-byte `signature` ("Exif\\0\\0" for EXIF), then a TIFF
// header whose one tag is Orientation = `orientation`.
std::vector<uint8_t> with_app1(std::vector<uint8_t> jpg, const char (&signature)[7], uint8_t orientation) {
  const uint8_t tiff[] = {'I', 'I', 0x2A, 0, 8, 0, 0, 0,  // little-endian TIFF, first IFD at 8
                          1, 0,                           // one entry
                          0x12, 0x01, 3, 0, 1, 0, 0, 0,   // tag 0x0112 (Orientation), SHORT x1
                          orientation, 0, 0, 0,           // value
                          0, 0, 0, 0};                    // no next IFD
  std::vector<uint8_t> app1 = {0xFF, 0xE1, 0, 0};
  app1.insert(app1.end(), signature, signature + 6);
  app1.insert(app1.end(), std::begin(tiff), std::end(tiff));
  app1[2] = static_cast<uint8_t>((app1.size() - 2) >> 8);
  app1[3] = static_cast<uint8_t>((app1.size() - 2) & 0xFF);
  jpg.insert(jpg.begin() + 2, app1.begin(), app1.end());
  return jpg;
}

// The decode stage at the image's own size (no resize) on `bytes`.
cv::Mat stage_decode(const std::vector<uint8_t>& bytes, cv::Size size) {
  return decode_bytes(fmt::format("{{stage: decode, size: [{}, {}]}}", size.height, size.width),
                      std::make_shared<const std::vector<uint8_t>>(bytes));
}

bool fast_decode(const std::vector<uint8_t>& bytes, cv::Mat& out) {
  return stages::decode_jpeg_rgb(bytes.data(), bytes.size(), out);
}

}  // namespace

TEST_CASE("decode: channel order, alpha, gray and resizing") {
  // 5x7 BGR image with distinct pixels: OpenCV's order in memory.
  cv::Mat bgr(5, 7, CV_8UC3);
  for (int r = 0; r < 5; ++r)
    for (int c = 0; c < 7; ++c)
      bgr.at<cv::Vec3b>(r, c) = cv::Vec3b(uint8_t(10 * r + c), uint8_t(100 + c), uint8_t(200 + r));
  const std::string same_size = "{stage: decode, size: [5, 7]}";

  SECTION("BGR PNG decodes to RGB, pixel exact") {
    const cv::Mat out = decode_bytes(same_size, encode(bgr, ".png"));
    REQUIRE(out.type() == CV_8UC3);
    REQUIRE(out.isContinuous());
    REQUIRE(out.rows == 5);
    REQUIRE(out.cols == 7);
    CHECK(out.at<cv::Vec3b>(2, 3) == cv::Vec3b(202, 103, 23));
    CHECK(out.at<cv::Vec3b>(4, 6) == cv::Vec3b(204, 106, 46));
  }
  SECTION("RGBA (BGRA in memory) PNG: alpha dropped, RGB order") {
    cv::Mat bgra;
    cv::cvtColor(bgr, bgra, cv::COLOR_BGR2BGRA);
    bgra.at<cv::Vec4b>(1, 1)[3] = 17;
    const cv::Mat out = decode_bytes(same_size, encode(bgra, ".png"));
    CHECK(out.at<cv::Vec3b>(1, 1) == cv::Vec3b(201, 101, 11));
  }
  SECTION("gray PNG: three equal channels") {
    cv::Mat gray(5, 7, CV_8UC1);
    for (int i = 0; i < 35; ++i) gray.data[i] = uint8_t(i * 7);
    const cv::Mat out = decode_bytes(same_size, encode(gray, ".png"));
    CHECK(out.at<cv::Vec3b>(3, 2) == cv::Vec3b(161, 161, 161));
  }
  SECTION("resize to [H, W] with the chosen interpolation") {
    const cv::Mat out = decode_bytes("{stage: decode, size: [3, 11]}", encode(bgr, ".png"));
    CHECK(out.rows == 3);
    CHECK(out.cols == 11);
    CHECK(out.type() == CV_8UC3);
    cv::Mat two(2, 2, CV_8UC3, cv::Scalar(0, 0, 0));
    two.at<cv::Vec3b>(0, 1) = cv::Vec3b(1, 2, 3);  // BGR
    const cv::Mat big =
        decode_bytes("{stage: decode, size: [4, 4], interpolation: nearest}", encode(two, ".png"));
    CHECK(big.at<cv::Vec3b>(1, 3) == cv::Vec3b(3, 2, 1));
    CHECK(big.at<cv::Vec3b>(1, 1) == cv::Vec3b(0, 0, 0));
    CHECK(big.at<cv::Vec3b>(0, 2) == cv::Vec3b(3, 2, 1));
  }
  SECTION("an image already present: gray, RGB kept as RGB, RGBA") {
    auto stage = testing::make<MapStage>(same_size);
    Sample s;
    s.image = bgr.clone();  // a present 3-channel image is RGB by contract: no swap
    CHECK(run(*stage, s).at<cv::Vec3b>(2, 3) == bgr.at<cv::Vec3b>(2, 3));
    cv::Mat rgba(5, 7, CV_8UC4, cv::Scalar(1, 2, 3, 4));
    s.image = rgba;
    CHECK(run(*stage, s).at<cv::Vec3b>(0, 0) == cv::Vec3b(1, 2, 3));
    s.image = cv::Mat(5, 7, CV_8UC1, cv::Scalar(9));
    CHECK(run(*stage, s).at<cv::Vec3b>(4, 4) == cv::Vec3b(9, 9, 9));
  }
}

TEST_CASE("decode: per-sample errors and the Fashion-MNIST path") {
  auto stage = testing::make<MapStage>("{stage: decode, size: [32, 32], max_pixels: 3000}");
  Sample s;
  SECTION("corrupt bytes: SampleError with the reason") {
    s.bytes = std::make_shared<const std::vector<uint8_t>>(std::vector<uint8_t>{1, 2, 3, 4, 5});
    CHECK_THROWS_MATCHES(run(*stage, s), SampleError,
                         Catch::Matchers::Message(
                             "cannot decode image (not a supported format or truncated)"));
  }
  SECTION("no payload") {
    CHECK_THROWS_AS(run(*stage, s), SampleError);
  }
  SECTION("max_pixels is checked from the header, before decoding") {
    auto png = encode(cv::Mat(10, 10, CV_8UC3, cv::Scalar::all(5)), ".png");
    std::vector<uint8_t> huge(png->begin(), png->begin() + 33);  // signature + IHDR only
    huge[18] = 0x4e;  // width 20000 (0x4e20), height 20000
    huge[19] = 0x20;
    huge[22] = 0x4e;
    huge[23] = 0x20;
    s.bytes = std::make_shared<const std::vector<uint8_t>>(huge);
    CHECK_THROWS_WITH(run(*stage, s), Catch::Contains("400000000 pixels"));
    // A truncated JPEG whose frame header declares 64 x 48 = 3072 pixels.
    auto jpg = encode(cv::Mat(48, 64, CV_8UC3, cv::Scalar::all(90)), ".jpg");
    size_t sof = 2;
    while (!((*jpg)[sof] == 0xFF && (*jpg)[sof + 1] == 0xC0)) ++sof;
    s.bytes = std::make_shared<const std::vector<uint8_t>>(jpg->begin(), jpg->begin() + sof + 12);
    CHECK_THROWS_WITH(run(*stage, s), Catch::Contains("3072 pixels"));
    s.bytes = encode(cv::Mat(48, 62, CV_8UC3, cv::Scalar::all(90)), ".jpg");  // 2976: fine
    CHECK(run(*stage, s).size() == cv::Size(32, 32));
    // WebP, lossy (VP8) and lossless (VP8L): the size libwebp reads from the first 32 bytes.
    for (const std::vector<int>& params : {std::vector<int>{cv::IMWRITE_WEBP_QUALITY, 90},
                                           std::vector<int>{cv::IMWRITE_WEBP_QUALITY, 101}}) {
      INFO("webp quality " << params[1]);
      std::vector<uint8_t> webp;
      REQUIRE(cv::imencode(".webp", cv::Mat(48, 64, CV_8UC3, cv::Scalar::all(90)), webp, params));
      s.bytes = std::make_shared<const std::vector<uint8_t>>(webp.begin(), webp.begin() + 32);
      CHECK_THROWS_WITH(run(*stage, s), Catch::Contains("3072 pixels"));
      REQUIRE(cv::imencode(".webp", cv::Mat(48, 62, CV_8UC3, cv::Scalar::all(90)), webp, params));
      s.bytes = std::make_shared<const std::vector<uint8_t>>(webp);
      CHECK(run(*stage, s).size() == cv::Size(32, 32));
    }
  }
  SECTION("each supported format decodes to its pixels") {
    // Four colour blocks (RGB order after decoding); lossy codecs get a tolerance.
    cv::Mat rgb(32, 32, CV_8UC3);
    rgb(cv::Rect(0, 0, 16, 16)).setTo(cv::Scalar(200, 30, 40));
    rgb(cv::Rect(16, 0, 16, 16)).setTo(cv::Scalar(20, 180, 60));
    rgb(cv::Rect(0, 16, 16, 16)).setTo(cv::Scalar(10, 40, 220));
    rgb(cv::Rect(16, 16, 16, 16)).setTo(cv::Scalar(250, 250, 250));
    cv::Mat bgr;
    cv::cvtColor(rgb, bgr, cv::COLOR_RGB2BGR);
    const struct { const char* ext; std::vector<int> params; double tolerance; } formats[] = {
        {".png", {}, 0}, {".bmp", {}, 0}, {".webp", {cv::IMWRITE_WEBP_QUALITY, 101}, 0},
        {".jpg", {cv::IMWRITE_JPEG_QUALITY, 100}, 12}, {".webp", {cv::IMWRITE_WEBP_QUALITY, 95}, 12}};
    for (const auto& f : formats) {
      INFO(f.ext << " " << (f.params.empty() ? 0 : f.params[1]));
      std::vector<uint8_t> buf;
      REQUIRE(cv::imencode(f.ext, bgr, buf, f.params));
      s.bytes = std::make_shared<const std::vector<uint8_t>>(std::move(buf));
      const cv::Mat out = run(*stage, s);
      REQUIRE(out.type() == CV_8UC3);
      // Compare block interiors: resampling and lossy codecs blur the block edges.
      for (const cv::Rect r : {cv::Rect(2, 2, 12, 12), cv::Rect(18, 2, 12, 12), cv::Rect(2, 18, 12, 12),
                               cv::Rect(18, 18, 12, 12)})
        CHECK(cv::norm(out(r), rgb(r), cv::NORM_INF) <= f.tolerance);
    }
  }
  SECTION("a raw Fashion-MNIST image (28x28 gray) becomes 32x32 RGB") {
    auto src = testing::make_source("{source: fashion_mnist, classes: [bag], per_class: [2, 0, 0]}");
    Sample in = src->describe(Split::train, 1);
    src->load(in);
    REQUIRE(in.image.type() == CV_8UC1);
    REQUIRE(in.image.size() == cv::Size(28, 28));
    cv::Mat expect;
    cv::cvtColor(in.image, expect, cv::COLOR_GRAY2RGB);
    cv::resize(expect, expect, cv::Size(32, 32), 0, 0, cv::INTER_LINEAR);
    const cv::Mat out = run(*stage, in);
    REQUIRE(out.type() == CV_8UC3);
    CHECK(cv::norm(out, expect, cv::NORM_INF) == 0);
    CHECK(cv::norm(out, cv::NORM_INF) > 0);  // not an empty picture
  }
}

TEST_CASE("decode: the libjpeg fast path takes plain JPEGs and gives imdecode's exact pixels") {
  const cv::Mat odd = noise(23, 37, CV_8UC3, 1);  // 37 x 23: partial MCUs in both directions
  const struct {
    const char* name;
    std::vector<uint8_t> bytes;
  } files[] = {
      {"4:2:0 (imencode's default), 32x32 noise", imencode_jpg(noise(32, 32, CV_8UC3, 2))},
      {"4:2:0, 150x150 noise", imencode_jpg(noise(150, 150, CV_8UC3, 3))},
      {"4:2:0, 37x23 noise", imencode_jpg(odd)},
      {"4:2:0, 37x23 picture, quality 100", imencode_jpg(picture(23, 37), {cv::IMWRITE_JPEG_QUALITY, 100})},
      {"progressive, 37x23", imencode_jpg(odd, {cv::IMWRITE_JPEG_PROGRESSIVE, 1})},
      {"a restart marker after every MCU, 37x23", imencode_jpg(odd, {cv::IMWRITE_JPEG_RST_INTERVAL, 1})},
      {"optimized Huffman tables, 37x23", imencode_jpg(odd, {cv::IMWRITE_JPEG_OPTIMIZE, 1})},
      {"grayscale, 37x23", imencode_jpg(noise(23, 37, CV_8UC1, 4))},
      {"4:2:2 (libjpeg), 37x23", libjpeg_encode(odd, {2, 1})},
      {"4:4:4 (libjpeg), 37x23 picture", libjpeg_encode(picture(23, 37), {1, 1})},
      {"4:4:0 (libjpeg), 37x23", libjpeg_encode(odd, {1, 2})},
      {"4:1:1 (libjpeg), 37x23", libjpeg_encode(odd, {4, 1})},
      {"progressive 4:2:2 (libjpeg), 37x23 picture", libjpeg_encode(picture(23, 37), {2, 1, true})},
  };
  for (const auto& f : files) {
    INFO(f.name);
    const cv::Mat expected = imdecode_rgb(f.bytes);
    REQUIRE(expected.type() == CV_8UC3);
    cv::Mat fast;
    REQUIRE(fast_decode(f.bytes, fast));  // taken, not declined
    CHECK(fast.isContinuous());
    CHECK(same_pixels(fast, expected));
    CHECK(same_pixels(stage_decode(f.bytes, expected.size()), expected));
    // The comparison sees one flipped bit in the last byte.
    cv::Mat off = expected.clone();
    off.data[off.total() * off.elemSize() - 1] ^= 1;
    CHECK_FALSE(same_pixels(fast, off));
  }
  SECTION("then resized, as the 28 px images of the extraction benchmark are to 32 px") {
    const std::vector<uint8_t> small = imencode_jpg(noise(28, 28, CV_8UC3, 9));
    cv::Mat expected;
    cv::resize(imdecode_rgb(small), expected, cv::Size(32, 32), 0, 0, cv::INTER_LINEAR);
    CHECK(same_pixels(decode_bytes("{stage: decode}", std::make_shared<const std::vector<uint8_t>>(small)), expected));
  }
}

TEST_CASE("decode: JPEGs the fast path leaves to imdecode decode exactly as before") {
  SECTION("an APP1 segment: EXIF orientation applied as before, whatever the signature") {
    const cv::Mat m = noise(20, 40, CV_8UC3, 5);
    const std::vector<uint8_t> exif = with_app1(imencode_jpg(m), "Exif\0\0", 6);
    // OpenCV 4.6 reads the first APP1 segment as EXIF without checking its signature.
    const std::vector<uint8_t> other = with_app1(imencode_jpg(m), "XMP\0\0\0", 6);
    for (const std::vector<uint8_t>* bytes : {&exif, &other}) {
      const cv::Mat expected = imdecode_rgb(*bytes);
      REQUIRE(expected.size() == cv::Size(20, 40));  // 40 wide x 20 tall, turned 90 degrees
      cv::Mat fast;
      CHECK_FALSE(fast_decode(*bytes, fast));
      CHECK(same_pixels(stage_decode(*bytes, expected.size()), expected));
    }
  }
  SECTION("arithmetic coding, RGB stored without the YCbCr transform, not a JPEG") {
    const cv::Mat m = picture(23, 37);
    for (const LibjpegOptions& o : {LibjpegOptions{2, 2, false, true}, LibjpegOptions{1, 1, false, false, true}}) {
      INFO("arithmetic " << o.arithmetic << ", stored as RGB " << o.stored_as_rgb);
      const std::vector<uint8_t> bytes = libjpeg_encode(m, o);
      const cv::Mat expected = imdecode_rgb(bytes);
      REQUIRE(expected.type() == CV_8UC3);
      cv::Mat fast;
      CHECK_FALSE(fast_decode(bytes, fast));
      CHECK(same_pixels(stage_decode(bytes, expected.size()), expected));
    }
    cv::Mat fast;
    CHECK_FALSE(fast_decode(*encode(m, ".png"), fast));
    CHECK(fast.empty());  // untouched when declined
  }
  SECTION("corrupt scan data before the end-of-image marker: the same pixels and libjpeg warning") {
    std::vector<uint8_t> bytes = imencode_jpg(noise(64, 64, CV_8UC3, 6));
    size_t sos = 2;
    while (!(bytes[sos] == 0xFF && bytes[sos + 1] == 0xDA)) ++sos;
    for (size_t i = sos + 200; i < sos + 260; ++i) bytes[i] = static_cast<uint8_t>(i * 37);
    REQUIRE(bytes[bytes.size() - 2] == 0xFF);
    REQUIRE(bytes[bytes.size() - 1] == 0xD9);
    cv::Mat expected;
    const std::string imdecode_says = test::capture_stderr([&] { expected = imdecode_rgb(bytes); });
    REQUIRE_FALSE(expected.empty());
    CHECK(imdecode_says.find("Corrupt JPEG data") != std::string::npos);
    cv::Mat fast, out;
    CHECK(test::capture_stderr([&] { CHECK_FALSE(fast_decode(bytes, fast)); }) == "");
    CHECK(test::capture_stderr([&] { out = stage_decode(bytes, expected.size()); }) == imdecode_says);
    CHECK(same_pixels(out, expected));
  }
  SECTION("input that ends early: declined, silently") {
    // (jpeg_mem_src would warn and feed libjpeg a fake end-of-image marker; OpenCV's source
    // would suspend instead. The stage refuses these before decoding anyway.)
    const std::vector<uint8_t> bytes = imencode_jpg(noise(64, 64, CV_8UC3, 7));
    for (const size_t keep : {size_t{3}, bytes.size() / 2, bytes.size() - 2}) {
      INFO("first " << keep << " of " << bytes.size() << " bytes");
      const std::vector<uint8_t> cut(bytes.begin(), bytes.begin() + static_cast<long>(keep));
      cv::Mat fast;
      CHECK(test::capture_stderr([&] { CHECK_FALSE(fast_decode(cut, fast)); }) == "");
    }
  }
  SECTION("tables never carry over from the previous file (a fresh decompressor per call)") {
    const cv::Mat m = noise(23, 37, CV_8UC3, 8);
    cv::Mat fast;
    // No Huffman tables (as in Motion-JPEG): libjpeg-turbo's standard ones, as in imdecode,
    // also right after a file with other (optimized) tables.
    REQUIRE(fast_decode(libjpeg_encode(m, {2, 2, false, false, false, true}), fast));
    const std::vector<uint8_t> no_dht = without_segments(libjpeg_encode(m, {}), 0xC4);
    REQUIRE(fast_decode(no_dht, fast));
    CHECK(same_pixels(fast, imdecode_rgb(no_dht)));
    // No quantization tables: imdecode fails, and so does the fast path, also right after a
    // file that had them.
    const std::vector<uint8_t> no_dqt = without_segments(imencode_jpg(m), 0xDB);
    REQUIRE(fast_decode(imencode_jpg(m), fast));
    CHECK_FALSE(fast_decode(no_dqt, fast));
    CHECK(imdecode_rgb(no_dqt).empty());
    CHECK_THROWS_WITH(stage_decode(no_dqt, cv::Size(37, 23)),
                      "cannot decode image (not a supported format or truncated)");
  }
}
