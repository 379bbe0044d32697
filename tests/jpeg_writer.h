// JPEGs cv::imencode cannot write, written with libjpeg's compressor (tests only): a chosen
// luma sampling (OpenCV 4.6 has no IMWRITE_JPEG_SAMPLING_FACTOR), progressive, arithmetic
// coded, stored as RGB without the YCbCr transform, or CMYK.
#pragma once

#include <cstdio>  // jpeglib.h needs FILE and size_t declared first
#include <cstdlib>
#include <vector>

#include <jpeglib.h>
#include <opencv2/core.hpp>

namespace pipeline::test {

struct LibjpegOptions {
  int h = 2, v = 2;  // luma sampling factors: 2x2 = 4:2:0, 2x1 = 4:2:2, 1x1 = 4:4:4 (not for CMYK)
  bool progressive = false;
  bool arithmetic = false;
  bool stored_as_rgb = false;  // no YCbCr transform (Adobe transform 0)
  bool optimized_tables = false;
  int quality = 90;
};

// `pixels`: 1 channel gray, 3 BGR, or 4 CMYK as stored (255 - ink, the Adobe convention),
// which is written as CMYK (not YCCK) with libjpeg's APP14 marker.
inline std::vector<uint8_t> libjpeg_encode(const cv::Mat& pixels, const LibjpegOptions& o = {}) {
  const int channels = pixels.channels();
  jpeg_compress_struct c{};
  jpeg_error_mgr err{};
  c.err = jpeg_std_error(&err);
  jpeg_create_compress(&c);
  unsigned char* out = nullptr;
  unsigned long size = 0;
  jpeg_mem_dest(&c, &out, &size);
  c.image_width = static_cast<JDIMENSION>(pixels.cols);
  c.image_height = static_cast<JDIMENSION>(pixels.rows);
  c.input_components = channels;
  c.in_color_space = channels == 1 ? JCS_GRAYSCALE : channels == 3 ? JCS_EXT_BGR : JCS_CMYK;
  jpeg_set_defaults(&c);
  jpeg_set_quality(&c, o.quality, TRUE);
  if (channels == 4) {
    jpeg_set_colorspace(&c, JCS_CMYK);
  } else {
    if (o.stored_as_rgb) jpeg_set_colorspace(&c, JCS_RGB);
    c.comp_info[0].h_samp_factor = o.h;
    c.comp_info[0].v_samp_factor = o.v;
  }
  if (o.progressive) jpeg_simple_progression(&c);
  c.arith_code = o.arithmetic;
  c.optimize_coding = o.optimized_tables;
  jpeg_start_compress(&c, TRUE);
  for (int r = 0; r < pixels.rows; ++r) {
    JSAMPROW row = const_cast<uint8_t*>(pixels.ptr(r));
    jpeg_write_scanlines(&c, &row, 1);
  }
  jpeg_finish_compress(&c);
  std::vector<uint8_t> bytes(out, out + size);
  std::free(out);
  jpeg_destroy_compress(&c);
  return bytes;
}

}  // namespace pipeline::test
