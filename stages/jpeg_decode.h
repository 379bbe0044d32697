// The decode stage's fast JPEG path: libjpeg(-turbo) straight to RGB, pixel for pixel what
// cv::imdecode(IMREAD_COLOR) followed by cvtColor(BGR2RGB) gives (OpenCV 4.6), about 30% faster.
// stages/jpeg_decode.cpp says which files it takes and why the pixels are the same.
#pragma once

#include <cstddef>
#include <cstdint>

#include <opencv2/core/mat.hpp>

namespace pipeline::stages {

// Decodes the JPEG in data[0, size) into `out`: a new continuous CV_8UC3 Mat, RGB order.
// Returns false, leaving `out` untouched, when it declines the file (not one it handles, see
// jpeg_decode.cpp) or libjpeg fails or warns on it: the caller then decodes it with
// cv::imdecode, which gives the result and the messages it always gave. Thread-safe.
bool decode_jpeg_rgb(const uint8_t* data, size_t size, cv::Mat& out);

}  // namespace pipeline::stages
