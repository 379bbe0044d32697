// decode: channel order, resizing, payload sources and per-sample errors.
#include <catch2/catch.hpp>

#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include "pipe/source.h"
#include "pipe/stage.h"
#include "pipe/testing.h"

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
