// Writes the decode fuzzer's seed images (tests/fuzz/corpus/decode/): tiny files of every
// format and variant decode handles, so that the fuzzer starts past each format's header.
// The outputs are committed; rerun only to change them:
//   g++ -std=c++17 tests/fuzz/make_decode_seeds.cpp -I/usr/include/opencv4 \
//     -lopencv_core -lopencv_imgcodecs -o /tmp/make_seeds && /tmp/make_seeds tests/fuzz/corpus/decode
#include <fstream>
#include <string>
#include <vector>

#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>

namespace {

cv::Mat pattern(int rows, int cols, int type) {
  cv::Mat m(rows, cols, type);
  cv::randu(m, cv::Scalar::all(0), cv::Scalar::all(CV_MAT_DEPTH(type) == CV_16U ? 65535 : 255));
  return m;
}

void write(const std::string& path, const std::vector<uint8_t>& b) {
  std::ofstream(path, std::ios::binary).write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
}

std::vector<uint8_t> encode(const std::string& ext, const cv::Mat& m, const std::vector<int>& params = {}) {
  std::vector<uint8_t> out;
  cv::imencode(ext, m, out, params);
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string dir = argc > 1 ? argv[1] : ".";
  cv::theRNG().state = 42;
  const cv::Mat rgb = pattern(6, 5, CV_8UC3);
  write(dir + "/rgb.png", encode(".png", rgb));
  write(dir + "/gray.png", encode(".png", pattern(4, 7, CV_8UC1)));
  write(dir + "/rgba.png", encode(".png", pattern(5, 5, CV_8UC4)));
  write(dir + "/sixteen-bit.png", encode(".png", pattern(3, 4, CV_16UC3)));
  write(dir + "/rgb.jpg", encode(".jpg", rgb, {cv::IMWRITE_JPEG_QUALITY, 50}));
  write(dir + "/gray.jpg", encode(".jpg", pattern(8, 8, CV_8UC1)));
  write(dir + "/progressive.jpg", encode(".jpg", rgb, {cv::IMWRITE_JPEG_PROGRESSIVE, 1}));
  // JPEG with EXIF Orientation = 6 (rotate 90), as tests/test_bad_images.cpp builds it.
  std::vector<uint8_t> jpg = encode(".jpg", rgb, {cv::IMWRITE_JPEG_QUALITY, 50});
  const uint8_t tiff[] = {'I', 'I', 0x2A, 0, 8, 0, 0, 0, 1, 0, 0x12, 0x01, 3, 0, 1, 0, 0, 0, 6, 0, 0, 0, 0, 0, 0, 0};
  std::vector<uint8_t> app1 = {0xFF, 0xE1, 0, 0, 'E', 'x', 'i', 'f', 0, 0};
  app1.insert(app1.end(), std::begin(tiff), std::end(tiff));
  app1[3] = static_cast<uint8_t>(app1.size() - 2);
  jpg.insert(jpg.begin() + 2, app1.begin(), app1.end());
  write(dir + "/exif-orientation-6.jpg", jpg);
  write(dir + "/rgb.bmp", encode(".bmp", rgb));
  write(dir + "/rgb.webp", encode(".webp", rgb, {cv::IMWRITE_WEBP_QUALITY, 50}));
  write(dir + "/lossless.webp", encode(".webp", rgb, {cv::IMWRITE_WEBP_QUALITY, 101}));
  return 0;
}
