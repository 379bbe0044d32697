// preview: a PNG contact sheet of the first images a training epoch sends it, so that users
// see what their augmentation does (the book's figure of augmented cats).
//
// Sink, training passes only (it sits out validation and test, and the planner runs nothing
// for it there). Consumes `image`. Hang it off `augment` with a fan-out edge:
//   edges: [decode -> augment -> features -> head, augment -> preview]
// Writes <run dir>/<node>-epoch<E>.png for the first `epochs` epochs: the first `count`
// samples of the epoch in feed order (the epoch's shuffled order), `columns` per row, each
// tile scaled up `scale` times with nearest-neighbour so pixels stay visible. It trains
// nothing and reports no metrics; files are written atomically.
// Params:
//   count: N      images per sheet (default 16)
//   columns: C    tiles per row (default 4)
//   epochs: E     sheets for epochs 1..E (default 3)
//   scale: S      integer upscale of each tile (default 4)
//
// Example config:
//   preview: {stage: preview, count: 16, columns: 4}
#include <fmt/format.h>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include "builtin.h"
#include "files.h"

namespace pipeline::stages {
namespace {

const auto kCount = param::integer("count", 16, "images per sheet").range(1, 1024);
const auto kColumns = param::integer("columns", 4, "tiles per row").range(1, 256);
const auto kEpochs = param::integer("epochs", 3, "write sheets for epochs 1..E").range(1, 100000);
const auto kScale = param::integer("scale", 4, "integer upscale of each tile").range(1, 32);

class Preview : public SinkStage {
 public:
  Preview(const Params& p, const StageContext& ctx)
      : node_(ctx.node), count_(static_cast<int>(p.get(kCount))), columns_(static_cast<int>(p.get(kColumns))),
        epochs_(static_cast<int>(p.get(kEpochs))), scale_(static_cast<int>(p.get(kScale))) {}

  void begin_run(const RunInfo& run) override { out_dir_ = run.out_dir; }
  void begin_epoch(Split split, int epoch) override {
    tiles_.clear();
    seen_ = 0;
    active_ = split == Split::train && epoch <= epochs_;
    epoch_ = epoch;
  }
  void consume(Batch& batch) override {
    seen_ += static_cast<int64_t>(batch.size());
    if (!active_) return;
    for (const Sample& s : batch.samples) {
      if (static_cast<int>(tiles_.size()) >= count_) return;
      if (s.image.empty()) throw std::runtime_error(fmt::format("preview '{}': sample {} has no image", node_, s.describe()));
      tiles_.push_back(s.image);
    }
  }
  SplitMetrics end_epoch() override {
    if (active_ && !tiles_.empty() && !out_dir_.empty()) {
      const std::string suffix = fmt::format("-epoch{}.png", epoch_);
      write_sheet(out_dir_ + "/" + safe_file_name(node_, kMaxFileName - suffix.size()) + suffix);
    }
    return {0, 0, seen_};
  }
  bool reports_metrics() const override { return false; }
  bool can_resume() const override { return true; }  // nothing to restore

 private:
  void write_sheet(const std::string& path) const {
    const int th = tiles_[0].rows * scale_, tw = tiles_[0].cols * scale_;
    const int cols = std::min(columns_, static_cast<int>(tiles_.size()));
    const int rows = (static_cast<int>(tiles_.size()) + cols - 1) / cols;
    cv::Mat sheet(rows * th, cols * tw, CV_8UC3, cv::Scalar(255, 255, 255));
    for (size_t i = 0; i < tiles_.size(); ++i) {
      cv::Mat tile;
      cv::resize(tiles_[i], tile, cv::Size(tw, th), 0, 0, cv::INTER_NEAREST);
      cv::cvtColor(tile, tile, cv::COLOR_RGB2BGR);
      const int r = static_cast<int>(i) / cols, c = static_cast<int>(i) % cols;
      tile.copyTo(sheet(cv::Rect(c * tw, r * th, tw, th)));
    }
    std::vector<uint8_t> png;
    if (!cv::imencode(".png", sheet, png)) throw std::runtime_error(fmt::format("preview '{}': cannot encode PNG", node_));
    write_file_atomic(path, std::string(png.begin(), png.end()));
  }

  std::string node_, out_dir_;
  int count_, columns_, epochs_, scale_;
  std::vector<cv::Mat> tiles_;
  int64_t seen_ = 0;
  bool active_ = false;
  int epoch_ = 0;
};

}  // namespace

void register_preview(Registry& r) {
  r.add<Preview>(Schema("preview", "Writes a PNG contact sheet of the first images of each early training "
                                   "epoch into the run directory.")
                     .train_only()
                     .consumes(Payload::image)
                     .param(kCount)
                     .param(kColumns)
                     .param(kEpochs)
                     .param(kScale)
                     .example("{stage: preview, count: 16, columns: 4}"));
}

}  // namespace pipeline::stages
