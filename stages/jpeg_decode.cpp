// The decode stage's fast JPEG path (jpeg_decode.h): libjpeg(-turbo) decodes straight into
// the rows of an RGB Mat, with none of imdecode's codec search, row-by-row RGB->BGR swap and
// the stage's BGR->RGB swap back.
//
// Why the pixels are imdecode's. OpenCV 4.6's JPEG codec (modules/imgcodecs/src/grfmt_jpeg.cpp,
// JpegDecoder::readHeader and readData; checked in the disassembly of Debian's
// libopencv-imgcodecs406 4.6.0+dfsg-12, the library pipe links) decodes a colour image with
// these libjpeg calls and settings, and no others:
//   readHeader: jpeg_std_error() with error_exit replaced (a longjmp), a source over the whole
//     buffer, jpeg_save_markers(APP1, 0xffff), jpeg_read_header(TRUE), scale 1/1 (imdecode
//     without IMREAD_REDUCED_*), jpeg_calc_output_dimensions();
//   readData: out_color_space = JCS_RGB, out_color_components = 3 (CMYK for 4 components);
//     EXIF orientation from the first APP1 marker; jpeg_start_decompress(); one
//     jpeg_read_scanlines() per row, each row swapped to BGR; jpeg_finish_decompress().
// Every other decompression parameter (dct_method, do_fancy_upsampling, do_block_smoothing,
// dithering, ...) keeps the default jpeg_read_header() sets, and OpenCV built against
// libjpeg-turbo >= 1.3.90 leaves the standard Huffman tables of Motion-JPEG frames to
// libjpeg-turbo. decode_jpeg_rgb() makes the same calls with the same settings on a fresh
// decompressor, so the same library computes the same RGB samples, and the decode stage's
// BGR2RGB after imdecode only undoes OpenCV's swap.
//
// Where the two could part, this path declines and the caller runs imdecode:
//   - bytes not starting FF D8 FF (the signature OpenCV's JPEG codec claims);
//   - anything but an 8-bit Huffman-coded (baseline, extended or progressive) 1-component gray
//     or 3-component YCbCr frame: CMYK, YCCK, RGB-stored, 12-bit, arithmetic-coded files;
//   - any APP1 marker: OpenCV reads the first APP1 as EXIF, whatever its signature, and
//     rotates the image by its orientation tag;
//   - a frame over OpenCV's size limits, where imdecode throws (or any OPENCV_IO_MAX_IMAGE_*
//     variable set, which moves them);
//   - any libjpeg error, and any warning. OpenCV prints warnings (libjpeg's default
//     emit_message) and goes on, so imdecode must see those files to print what it always
//     printed. Running out of input is a warning too: jpeg_mem_src warns, then feeds libjpeg a
//     fake end-of-image marker where OpenCV's source would make it suspend; a decode that
//     completes here never ran out.
//
// A fresh decompressor per call rather than one kept per thread: libjpeg keeps Huffman and
// quantization tables from one image to the next (for abbreviated streams), so a reused one
// would decode a file that omits a table with the previous file's table, where OpenCV's fresh
// one uses the standard table or fails. Creating and destroying one costs about 0.2 us, under
// 1% of decoding a 32 px JPEG (measured with libjpeg-turbo 2.1.5).
//
// libjpeg reports errors by calling error_exit, which must not return; ours longjmps back.
// So that no jump skips a C++ destructor, each step runs libjpeg under its own setjmp in a
// small function that holds only plain C data, and the Mat is allocated between the steps.
#include "jpeg_decode.h"

#include <csetjmp>
#include <cstdio>  // jpeglib.h uses FILE and size_t without declaring them
#include <cstdlib>

#include <jpeglib.h>
#include <opencv2/core.hpp>

namespace pipeline::stages {
namespace {

constexpr int kApp1 = JPEG_APP0 + 1;

// `pub` first: libjpeg hands the callbacks &pub, the address of the whole struct.
struct ErrorManager {
  jpeg_error_mgr pub;
  std::jmp_buf jump;
};

[[noreturn]] void jump_back(j_common_ptr cinfo) {
  std::longjmp(reinterpret_cast<ErrorManager*>(cinfo->err)->jump, 1);
}

// Level -1 is a warning (corrupt data, input ran out): decline (see the top of this file).
// Levels >= 0 are trace messages, which libjpeg only shows when asked to.
void on_message(j_common_ptr cinfo, int level) {
  if (level < 0) jump_back(cinfo);
}

void no_output(j_common_ptr) {}

// Plain C data: a longjmp over a frame that holds one skips nothing.
struct Decompressor {
  jpeg_decompress_struct cinfo;
  ErrorManager err;
};

bool create(Decompressor& d) {
  d.cinfo.err = jpeg_std_error(&d.err.pub);
  d.err.pub.error_exit = jump_back;
  d.err.pub.emit_message = on_message;
  d.err.pub.output_message = no_output;
  if (setjmp(d.err.jump) != 0) return false;
  jpeg_create_decompress(&d.cinfo);
  return true;
}

bool has_app1(const jpeg_decompress_struct& c) {
  for (jpeg_saved_marker_ptr m = c.marker_list; m != nullptr; m = m->next)
    if (m->marker == kApp1) return true;
  return false;
}

// OpenCV 4.6's limits (loadsave.cpp, validateInputImageSize), read from the environment once.
bool within_opencv_limits(uint64_t width, uint64_t height) {
  static const bool moved = std::getenv("OPENCV_IO_MAX_IMAGE_WIDTH") != nullptr ||
                            std::getenv("OPENCV_IO_MAX_IMAGE_HEIGHT") != nullptr ||
                            std::getenv("OPENCV_IO_MAX_IMAGE_PIXELS") != nullptr;
  return !moved && width <= (1u << 20) && height <= (1u << 20) && width * height <= (uint64_t{1} << 30);
}

// The files this path takes, from the header (see the top of this file).
bool takes(const jpeg_decompress_struct& c) {
  const bool gray = c.num_components == 1 && c.jpeg_color_space == JCS_GRAYSCALE;
  const bool ycc = c.num_components == 3 && c.jpeg_color_space == JCS_YCbCr;
  return (gray || ycc) && c.data_precision == 8 && !c.arith_code && !has_app1(c) &&
         within_opencv_limits(c.image_width, c.image_height);
}

// Reads the header and, for a file this path takes, starts decompressing to RGB (a
// progressive file is decoded whole here). OpenCV's readHeader calls
// jpeg_calc_output_dimensions() here too; jpeg_start_decompress() calls it again anyway.
bool start(Decompressor& d, const uint8_t* data, size_t size) {
  if (setjmp(d.err.jump) != 0) return false;
  jpeg_mem_src(&d.cinfo, data, size);
  jpeg_save_markers(&d.cinfo, kApp1, 0xFFFF);
  if (jpeg_read_header(&d.cinfo, TRUE) != JPEG_HEADER_OK || !takes(d.cinfo)) return false;
  d.cinfo.out_color_space = JCS_RGB;  // out_color_components (3) follows from it
  return jpeg_start_decompress(&d.cinfo) == TRUE;
}

// Decompresses every row into `pixels` (rows `step` bytes apart), then reads on to the
// end-of-image marker as OpenCV does, where a warning (bytes before the marker) can still come.
bool read_rows(Decompressor& d, uint8_t* pixels, size_t step) {
  if (setjmp(d.err.jump) != 0) return false;
  while (d.cinfo.output_scanline < d.cinfo.output_height) {
    JSAMPROW row = pixels + d.cinfo.output_scanline * step;
    if (jpeg_read_scanlines(&d.cinfo, &row, 1) != 1) return false;
  }
  return jpeg_finish_decompress(&d.cinfo) == TRUE;
}

// One call's decompressor, destroyed on every way out (also on a zeroed struct, when
// create() failed).
struct Session {
  Decompressor d{};
  Session() = default;
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;
  ~Session() { jpeg_destroy_decompress(&d.cinfo); }
};

}  // namespace

bool decode_jpeg_rgb(const uint8_t* data, size_t size, cv::Mat& out) {
  if (size < 3 || data[0] != 0xFF || data[1] != 0xD8 || data[2] != 0xFF) return false;
  Session s;
  if (!create(s.d) || !start(s.d, data, size)) return false;
  cv::Mat rgb;
  try {
    rgb.create(static_cast<int>(s.d.cinfo.output_height), static_cast<int>(s.d.cinfo.output_width), CV_8UC3);
  } catch (const cv::Exception&) {
    return false;  // out of memory: imdecode fails the same way, with its own message
  }
  if (!read_rows(s.d, rgb.data, rgb.step[0])) return false;
  out = rgb;
  return true;
}

}  // namespace pipeline::stages
