// decode: encoded file bytes (or a raw image) -> H x W x 3 RGB uint8 image.
//
// Per-sample map, parallel, deterministic. Consumes `bytes` (from the folder source) or an
// already-present `image` (the fashion_mnist source's 28x28 gray pixels; 1 channel = gray,
// 3 = RGB, 4 = RGBA); produces `image`: a continuous CV_8UC3 RGB Mat of `size` [H, W].
// Bytes are decoded as cv::imdecode(IMREAD_COLOR) + cvtColor(BGR2RGB) decodes them, which
// applies the EXIF orientation tag (OpenCV's default: IMREAD_IGNORE_ORIENTATION is not set);
// 16-bit files become 8-bit. Two paths, one result:
//   - plain JPEGs (8-bit gray or YCbCr, Huffman-coded, no APP1/EXIF segment, no libjpeg
//     warning) are decoded by libjpeg straight to RGB (jpeg_decode.h): 30% less time than
//     imdecode + cvtColor at 150 px, 11% at 28 px. The same library with the same settings as
//     OpenCV's JPEG codec, so the same pixels, bit for bit (jpeg_decode.cpp explains;
//     tests/test_decode.cpp compares them);
//   - everything else (PNG, BMP, WebP, CMYK, EXIF-rotated, corrupt or odd JPEGs) goes to
//     cv::imdecode, which also prints libjpeg's warnings and gives today's error messages.
// Other formats are refused before decoding (see supported_format()).
// Before decoding, the PNG, JPEG, BMP and WebP headers are read for their dimensions so that
// an image declaring more than `max_pixels` is refused without decoding it; the decoded size
// is checked again. `bytes` is released after decoding (the encoded file is no longer needed).
// Errors are per-sample (pipeline::SampleError): undecodable data, too many pixels, no payload.
// Params:
//   size: [H, W]                                   output size (default [32, 32])
//   interpolation: nearest|bilinear|area|bicubic   resize filter (default bilinear)
//   max_pixels: N                                  refuse larger images (default 1e8)
//
// Example config:
//   decode: {stage: decode, size: [150, 150], interpolation: area}
#include <cstring>
#include <memory>

#include <fmt/format.h>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#include <webp/decode.h>

#include "builtin.h"
#include "jpeg_decode.h"

namespace pipeline::stages {
namespace {

uint32_t be16(const uint8_t* p) { return (uint32_t{p[0]} << 8) | p[1]; }
uint32_t be32(const uint8_t* p) { return (be16(p) << 16) | be16(p + 2); }
uint32_t le16(const uint8_t* p) { return (uint32_t{p[1]} << 8) | p[0]; }
uint32_t le24(const uint8_t* p) { return (uint32_t{p[2]} << 16) | le16(p); }
uint32_t le32(const uint8_t* p) { return (uint32_t{p[3]} << 24) | le24(p); }

// Pixels the file's header declares, or 0 when the format is not recognised here (the
// decoded size is checked anyway).
// The WebP header as OpenCV 4.6 reads it: libwebp's WebPGetFeatures() on the first 32 bytes
// decides both whether its WebP decoder claims the bytes and the size it decodes.
constexpr size_t kWebPHeaderSize = 32;
bool webp_header(const std::vector<uint8_t>& b, WebPBitstreamFeatures& f) {
  return b.size() >= kWebPHeaderSize && std::memcmp(b.data(), "RIFF", 4) == 0 &&
         std::memcmp(b.data() + 8, "WEBP", 4) == 0 &&
         WebPGetFeatures(b.data(), kWebPHeaderSize, &f) == VP8_STATUS_OK;
}

uint64_t header_pixels(const std::vector<uint8_t>& b) {
  const size_t n = b.size();
  const uint8_t* p = b.data();
  if (n >= 24 && std::memcmp(p, "\x89PNG\r\n\x1a\n", 8) == 0 && std::memcmp(p + 12, "IHDR", 4) == 0)
    return uint64_t{be32(p + 16)} * be32(p + 20);
  if (n >= 26 && p[0] == 'B' && p[1] == 'M') {
    const int64_t w = static_cast<int32_t>(le32(p + 18)), h = static_cast<int32_t>(le32(p + 22));
    return static_cast<uint64_t>(std::abs(w)) * static_cast<uint64_t>(std::abs(h));
  }
  if (WebPBitstreamFeatures f; webp_header(b, f)) return uint64_t(f.width) * uint64_t(f.height);
  if (n >= 4 && p[0] == 0xFF && p[1] == 0xD8) {  // JPEG: walk segments to the frame header
    size_t i = 2;
    while (i + 4 <= n) {
      // libjpeg skips stray bytes before a marker ("extraneous bytes before marker") and
      // decodes the frame it then finds, so this walk must find it too: returning 0 here let
      // a 14368x22096 frame past max_pixels (fuzz_decode, tests/fuzz/regressions/decode/).
      if (p[i] != 0xFF) { ++i; continue; }
      const uint8_t m = p[i + 1];
      if (m == 0xFF) { ++i; continue; }  // fill byte
      // FF 00 is no marker: libjpeg's next_marker() discards it as stuffed data and scans on
      // (a second out-of-memory of fuzz_decode, where reading a length after it skipped the frame).
      if (m == 0x00) { i += 2; continue; }
      if (m == 0x01 || (m >= 0xD0 && m <= 0xD7)) { i += 2; continue; }
      const bool sof = m >= 0xC0 && m <= 0xCF && m != 0xC4 && m != 0xC8 && m != 0xCC;
      if (sof && i + 9 <= n) return uint64_t{be16(p + i + 5)} * be16(p + i + 7);
      if (m == 0xD9 || m == 0xDA) return 0;  // end of image / start of scan before a frame
      i += 2 + be16(p + i + 2);
    }
  }
  return 0;
}

// imdecode hands the bytes to the first codec whose signature check accepts them, out of
// every codec Debian's OpenCV links (DICOM via GDCM, OpenEXR, JPEG 2000, HDR, TIFF, ...), and
// some of those abort the process on crafted input (GDCM asserts on a "DICM" tag at offset
// 128: found by fuzz_decode, tests/fuzz/regressions/decode/). Only bytes that the PNG, JPEG,
// BMP or WebP codec itself will claim reach imdecode, so this check must be exactly as strict
// as theirs: a RIFF/WEBP file that libwebp rejects fell through to GDCM (second finding).
// No codec ahead of these four in OpenCV's list accepts their signatures.
bool supported_format(const std::vector<uint8_t>& b) {
  const size_t n = b.size();
  const uint8_t* p = b.data();
  if (n >= 8 && std::memcmp(p, "\x89PNG\r\n\x1a\n", 8) == 0) return true;
  if (n >= 3 && p[0] == 0xFF && p[1] == 0xD8 && p[2] == 0xFF) return true;
  if (n >= 2 && p[0] == 'B' && p[1] == 'M') return true;
  WebPBitstreamFeatures f;
  return webp_header(b, f);
}

const auto kSize = param::integers("size", {32, 32}, "output [height, width], pixels").range(1, 4096).length(2);
const auto kInterp = interpolation_param(cv::INTER_LINEAR);
const auto kMaxPixels = param::integer("max_pixels", 100000000,
                                       "refuse images with more pixels (checked from the header when possible)")
                            .min(1);

class Decode : public MapStage {
 public:
  explicit Decode(const Params& p)
      : interp_(p.get(kInterp)), max_pixels_(static_cast<uint64_t>(p.get(kMaxPixels))) {
    const std::vector<int64_t> size = p.get(kSize);
    size_ = cv::Size(static_cast<int>(size[1]), static_cast<int>(size[0]));
  }

  void process(Sample& sample, Rng&) override {
    cv::Mat rgb = sample.bytes ? decode_bytes(*sample.bytes) : to_rgb(sample.image);
    check_pixels(static_cast<uint64_t>(rgb.rows) * static_cast<uint64_t>(rgb.cols));
    if (rgb.size() != size_) {
      cv::Mat out;
      cv::resize(rgb, out, size_, 0, 0, interp_);
      rgb = out;
    }
    if (!rgb.isContinuous()) rgb = rgb.clone();
    sample.image = rgb;
    sample.bytes.reset();
  }

 private:
  // libjpeg decodes a truncated file with a warning and grey rows, and OpenCV returns that
  // as a valid image. Entropy-coded data stuffs every 0xFF as FF 00, so FF D9 after the last
  // start-of-scan (FF DA) can only be the end-of-image marker; data appended after it (some
  // cameras do) is fine.
  static bool truncated_jpeg(const std::vector<uint8_t>& b) {
    if (b.size() < 4 || b[0] != 0xFF || b[1] != 0xD8) return false;
    size_t last_sos = 0;
    for (size_t i = 2; i + 1 < b.size(); ++i)
      if (b[i] == 0xFF && b[i + 1] == 0xDA) last_sos = i;
    if (last_sos == 0) return true;  // no scan at all
    for (size_t i = last_sos + 2; i + 1 < b.size(); ++i)
      if (b[i] == 0xFF && b[i + 1] == 0xD9) return false;
    return true;
  }

  void check_pixels(uint64_t pixels) const {
    if (pixels > max_pixels_)
      throw SampleError(fmt::format("image has {} pixels, more than max_pixels = {}", pixels,
                                    max_pixels_));
  }

  cv::Mat decode_bytes(const std::vector<uint8_t>& bytes) const {
    if (bytes.empty()) throw SampleError("cannot decode image (empty file)");
    if (!supported_format(bytes))
      throw SampleError("cannot decode image (not a supported format or truncated)");
    check_pixels(header_pixels(bytes));
    if (truncated_jpeg(bytes))
      throw SampleError("cannot decode image (truncated JPEG: no end-of-image marker after the last scan)");
    // The fast path declines (false) whatever it cannot decode exactly as imdecode would.
    if (cv::Mat rgb; decode_jpeg_rgb(bytes.data(), bytes.size(), rgb)) return rgb;
    const cv::Mat raw(1, static_cast<int>(bytes.size()), CV_8UC1,
                      const_cast<uint8_t*>(bytes.data()));
    cv::Mat bgr;
    try {
      bgr = cv::imdecode(raw, cv::IMREAD_COLOR);
    } catch (const cv::Exception& e) {
      throw SampleError(fmt::format("cannot decode image: {}", e.what()));
    }
    if (bgr.empty())
      throw SampleError("cannot decode image (not a supported format or truncated)");
    cv::Mat rgb;
    cv::cvtColor(bgr, rgb, cv::COLOR_BGR2RGB);
    return rgb;
  }

  static cv::Mat to_rgb(const cv::Mat& img) {
    if (img.empty()) throw SampleError("decode: sample has neither bytes nor an image");
    if (img.depth() != CV_8U)
      throw SampleError(fmt::format("decode: image depth {} is not 8-bit", img.depth()));
    cv::Mat rgb;
    switch (img.channels()) {
      case 1: cv::cvtColor(img, rgb, cv::COLOR_GRAY2RGB); break;
      case 3: rgb = img; break;
      case 4: cv::cvtColor(img, rgb, cv::COLOR_RGBA2RGB); break;
      default:
        throw SampleError(fmt::format("decode: image has {} channels (want 1, 3 or 4)",
                                      img.channels()));
    }
    return rgb;
  }

  cv::Size size_;
  int interp_;
  uint64_t max_pixels_;
};

}  // namespace

Choice<int> interpolation_param(int default_filter) {
  return param::choice<int>("interpolation",
                            {{"nearest", cv::INTER_NEAREST}, {"bilinear", cv::INTER_LINEAR},
                             {"area", cv::INTER_AREA}, {"bicubic", cv::INTER_CUBIC}},
                            default_filter, "resize filter");
}

void register_decode(Registry& r) {
  r.add<Decode>(Schema("decode", "Decodes encoded image bytes (JPEG, PNG, BMP, WebP; EXIF orientation applied) or "
                                 "converts a gray/RGB/RGBA image to RGB uint8, resized to `size`.")
                    // encoded bytes, or raw pixels as an image (the validator accepts both)
                    .consumes(Payload::bytes)
                    .produces(Payload::image)
                    .param(kSize)
                    .param(kInterp)
                    .param(kMaxPixels)
                    .example("{stage: decode, size: [150, 150], interpolation: area}"));
}

}  // namespace pipeline::stages
