// Line charts of metrics per epoch as PNG bytes: a run's curves.png (loss and accuracy, train
// and validation), `pipe compare`'s compare.png (validation accuracy of several runs) and
// `pipe sweep`'s sweep.png (a metric per grid value, with error bars).
// OpenCV's plot module (cv::plot::Plot2d) draws each line; the frame, ticks, axis labels and
// legend, which Plot2d does not draw readably, are drawn around its lines here.
#pragma once

#include <string>
#include <vector>

#include "runner.h"

namespace pipeline {

// One chart's size in pixels; charts drawn together stand side by side.
inline constexpr int kChartWidth = 640;
inline constexpr int kChartHeight = 440;

struct Series {
  std::string label;         // in the legend
  std::vector<double> x, y;  // x: epochs; points whose y is not finite are left out
  std::vector<double> err = {};  // error bars: y +- err per point (empty: none)
};

struct Chart {
  std::string title, y_label;
  std::vector<Series> series;  // colors in order: blue, orange, green, red, ...
  bool fraction = false;       // y is an accuracy: its axis stays within [0, 1]
  std::string x_label = "epoch";
  std::vector<std::string> x_ticks = {};  // labels of x = 1, 2, ... (a category axis); empty: numbers
};

// The charts side by side (kChartWidth * charts.size() x kChartHeight), PNG-encoded.
std::string charts_png(const std::vector<Chart>& charts);

// curves.png: loss and accuracy per epoch, train and (with `has_val`) validation.
std::string curves_png(const std::vector<EpochMetrics>& epochs, bool has_val);

}  // namespace pipeline
