// fashion_mnist: a data source reading Fashion-MNIST's gzipped IDX files (Debian's
// fashion-mnist package puts them in /usr/share/datasets/fashion-mnist/).
//
// Output: per split, samples with `image` = the 28x28 CV_8UC1 gray pixels (feed `decode`).
// Train and validation come (disjoint) from train-*-ubyte.gz, test from t10k-*-ubyte.gz.
// Selection is deterministic given split_seed: per class, that class's file indices are
// permuted (Fisher-Yates on pipeline::Rng keyed on split_seed and the class); train takes the
// first per_class[0], validation the last per_class[1] (so neither moves when the other's
// count changes), test the first per_class[2] of the t10k permutation. Each split's order is
// then a seeded shuffle, so training batches mix classes. Labels index `classes`.
// Labels are read at construction; the selected images' pixels load once, on first use.
// Params: path (dir of the .gz files), classes (slugs: t-shirt, trouser, pullover, dress,
// coat, sandal, shirt, sneaker, bag, ankle-boot), per_class ([train, validation, test]
// images per class), split_seed (seed of the selection and order).
// pose: {rotation, shift, zoom, flip} (default none: the images as stored):
// every image of every split is warped once, at load, to its own fixed random pose drawn by
// draw_pose() (augment.h) from a stream keyed on split_seed and the image's index in its
// file, and warped by augment_apply() (Keras 2.0.8 semantics, nearest fill): variation of
// the data itself, the same in every run and epoch, unlike the `augment` stage. A posed
// source's identity (cache key) names the pose.
//
// Example config:
//   data: {source: fashion_mnist, classes: [shirt, t-shirt], per_class: [1000, 500, 500]}
#include <algorithm>
#include <filesystem>
#include <memory>
#include <mutex>

#include <fmt/format.h>
#include <zlib.h>

#include "builtin.h"
#include "fashion_mnist.h"

namespace pipeline::stages {
namespace {

namespace fs = std::filesystem;
const std::vector<std::string> kClassNames = {"t-shirt", "trouser", "pullover", "dress", "coat",
                                              "sandal",  "shirt",   "sneaker",  "bag",
                                              "ankle-boot"};
constexpr int kSide = 28, kPixels = kSide * kSide;

// A gzip file read sequentially; errors name the file.
class Gz {
 public:
  explicit Gz(std::string path) : path_(std::move(path)), f_(gzopen(path_.c_str(), "rb")) {
    if (!f_) throw std::runtime_error(fmt::format("fashion_mnist: cannot open {}", path_));
    gzbuffer(f_, 1 << 17);
  }
  ~Gz() { gzclose(f_); }
  Gz(const Gz&) = delete;
  Gz& operator=(const Gz&) = delete;
  void read(void* dst, unsigned n) {
    if (gzread(f_, dst, n) != static_cast<int>(n))
      throw std::runtime_error(fmt::format("fashion_mnist: {} is truncated or corrupt", path_));
  }
  uint32_t u32() {  // big-endian
    uint8_t b[4];
    read(b, 4);
    return (uint32_t{b[0]} << 24) | (uint32_t{b[1]} << 16) | (uint32_t{b[2]} << 8) | b[3];
  }
  // Checks the IDX header and returns the item count.
  uint32_t header(uint32_t magic, bool images) {
    const uint32_t m = u32();
    if (m != magic)
      throw std::runtime_error(fmt::format("fashion_mnist: {} is not an IDX {} file (magic "
                                           "{:#010x}, want {:#010x})",
                                           path_, images ? "image" : "label", m, magic));
    const uint32_t n = u32();
    if (images) {
      const uint32_t rows = u32(), cols = u32();
      if (rows != kSide || cols != kSide)
        throw std::runtime_error(fmt::format("fashion_mnist: {} holds {}x{} images, want 28x28",
                                             path_, rows, cols));
    }
    return n;
  }

 private:
  std::string path_;
  gzFile f_;
};

template <typename T>
void shuffle(std::vector<T>& v, Rng rng) {  // Fisher-Yates
  for (size_t i = v.size(); i > 1; --i)
    std::swap(v[i - 1], v[static_cast<size_t>(rng.below(static_cast<int64_t>(i)))]);
}

struct Part {  // one IDX pair: train or t10k
  std::string images, labels;
  std::vector<uint8_t> label_of;  // per file index
};

const auto kPath = param::string("path", "/usr/share/datasets/fashion-mnist",
                                 "directory holding the four *-ubyte.gz files (relative: to the graph's directory)").path(true);
const auto kClasses =
    param::strings("classes", {"shirt", "t-shirt"}, "class slugs; label = position in this list").one_of(kClassNames);
const auto kPerClass = param::integers("per_class", {1000, 500, 500}, "images per class for [train, validation, test]")
                           .min(0)
                           .length(3);
const auto kSplitSeed = param::integer("split_seed", 1, "seed of the selection and sample order");
const auto kPoseRotation =
    param::number("pose.rotation", 0, "fixed pose of each image: rotation U(+-r) degrees").range(0, 180);
const auto kPoseShift =
    param::number("pose.shift", 0, "fixed pose: row and column shifts U(+-s) x side").range(0, 1);
const auto kPoseZoom = param::numbers("pose.zoom", {1, 1},
                                      "fixed pose: one zoom factor U(a, b) for both axes (Keras': > 1 shrinks)")
                           .range(0.1, 10)
                           .length(2);
const auto kPoseFlip = param::boolean("pose.flip", false, "fixed pose: horizontal flip with p = 0.5");

PoseRanges pose_of(const Params& p) {
  PoseRanges r;
  r.rotation = p.get(kPoseRotation);
  r.shift = p.get(kPoseShift);
  const std::vector<double> zoom = p.get(kPoseZoom);
  r.zoom_lo = zoom[0], r.zoom_hi = zoom[1];
  r.flip = p.get(kPoseFlip);
  return r;
}

class FashionMnist : public Source {
 public:
  FashionMnist(const Params& p, const SourceContext& ctx)
      : dir_(ctx.resolve(p.get(kPath))), names_(p.get(kClasses)), pose_(pose_of(p)),
        seed_(static_cast<uint64_t>(p.get(kSplitSeed))) {
    const std::vector<int64_t> counts = p.get(kPerClass);
    const uint64_t seed = static_cast<uint64_t>(p.get(kSplitSeed));
    std::vector<int> ids;
    for (const std::string& c : names_) {
      auto it = std::find(kClassNames.begin(), kClassNames.end(), c);
      if (it == kClassNames.end())
        throw std::runtime_error(fmt::format("fashion_mnist: unknown class '{}' (valid: {})", c,
                                             fmt::join(kClassNames, ", ")));
      if (std::count(names_.begin(), names_.end(), c) > 1)
        throw std::runtime_error(fmt::format("fashion_mnist: class '{}' is listed twice", c));
      ids.push_back(static_cast<int>(it - kClassNames.begin()));
    }
    for (int s = 0; s < 2; ++s) {
      const std::string stem = s == 0 ? "train" : "t10k";
      parts_[s].images = (fs::path(dir_) / (stem + "-images-idx3-ubyte.gz")).string();
      parts_[s].labels = (fs::path(dir_) / (stem + "-labels-idx1-ubyte.gz")).string();
      read_labels(parts_[s]);
    }
    const uint64_t stream = hash64("fashion_mnist");
    for (size_t k = 0; k < ids.size(); ++k) {
      for (int s = 0; s < 2; ++s) {
        std::vector<int64_t> idx;
        for (size_t i = 0; i < parts_[s].label_of.size(); ++i)
          if (parts_[s].label_of[i] == ids[k]) idx.push_back(static_cast<int64_t>(i));
        const int64_t want = s == 0 ? counts[0] + counts[1] : counts[2];
        if (static_cast<int64_t>(idx.size()) < want)
          throw std::runtime_error(fmt::format(
              "fashion_mnist: class '{}' has {} images in {}, fewer than the {} asked", names_[k],
              idx.size(), parts_[s].images, want));
        shuffle(idx, Rng(seed, stream, static_cast<uint64_t>(s), static_cast<uint64_t>(ids[k]), 0));
        auto take = [&](Split split, int64_t from, int64_t n, int64_t step) {
          for (int64_t j = 0; j < n; ++j)
            picks_[static_cast<int>(split)].push_back({idx[from + j * step], static_cast<int>(k)});
        };
        if (s == 1) take(Split::test, 0, counts[2], 1);
        if (s == 0) take(Split::train, 0, counts[0], 1);  // validation: from the other end
        if (s == 0) take(Split::validation, static_cast<int64_t>(idx.size()) - 1, counts[1], -1);
      }
    }
    for (int sp = 0; sp < 3; ++sp)  // interleave the classes: a seeded shuffle per split
      shuffle(picks_[sp], Rng(seed, hash64("fashion_mnist/order"), static_cast<uint64_t>(sp), 0, 0));
    identity_ = fmt::format("fashion_mnist;classes={};per_class={};split_seed={}",
                            fmt::join(names_, ","), fmt::join(counts, ","), seed);
    if (!pose_.none())  // unposed sources keep the identity (and cache entries) they had
      identity_ += fmt::format(";pose=rotation:{},shift:{},zoom:{}-{},flip:{}", pose_.rotation, pose_.shift,
                               pose_.zoom_lo, pose_.zoom_hi, pose_.flip);
    for (const Part& part : parts_)
      for (const std::string& f : {part.images, part.labels})
        identity_ += fmt::format(";{}:{}:{}", f, fs::file_size(f),
                                 fs::last_write_time(f).time_since_epoch().count());
  }

  const std::vector<std::string>& classes() const override { return names_; }
  int64_t size(Split split) const override {
    return static_cast<int64_t>(picks_[static_cast<int>(split)].size());
  }

  Sample describe(Split split, int64_t index) const override {
    const Pick& pk = at(split, index);
    Sample s;
    s.id = index, s.label = pk.label, s.split = split;
    s.origin = fmt::format("fashion-mnist:{}#{}",
                           fs::path(parts_[split == Split::test].images).filename().string(),
                           pk.file_index);
    return s;
  }

  void load(Sample& sample) const override {
    std::call_once(loaded_, [this] { load_pixels(); });
    at(sample.split, sample.id);  // range check
    const auto& px = pixels_[static_cast<int>(sample.split)];
    sample.image = cv::Mat(kSide, kSide, CV_8UC1);
    std::copy_n(px.data() + static_cast<size_t>(sample.id) * kPixels, kPixels, sample.image.data);
  }

  std::string identity() const override { return identity_; }

 private:
  struct Pick { int64_t file_index; int label; };

  const Pick& at(Split split, int64_t index) const {
    const auto& v = picks_[static_cast<int>(split)];
    if (index < 0 || index >= static_cast<int64_t>(v.size()))
      throw SampleError(fmt::format("fashion_mnist: no sample {} in split {} (size {})", index,
                                    split_name(split), v.size()));
    return v[static_cast<size_t>(index)];
  }

  static void read_labels(Part& part) {
    Gz gz(part.labels);
    const uint32_t n = gz.header(0x00000801, false);
    part.label_of.resize(n);
    gz.read(part.label_of.data(), n);
    Gz images(part.images);  // validate the image header now: fail before the run starts
    const uint32_t ni = images.header(0x00000803, true);
    if (ni != n)
      throw std::runtime_error(fmt::format("fashion_mnist: {} holds {} images but {} holds {} "
                                           "labels", part.images, ni, part.labels, n));
  }

  // Streams each images file once, keeping only the selected images, in split order.
  void load_pixels() const {
    for (int s = 0; s < 2; ++s) {
      std::vector<std::pair<int64_t, uint8_t*>> want;  // file index -> destination
      for (int sp = 0; sp < 3; ++sp) {
        if ((sp == static_cast<int>(Split::test)) != (s == 1)) continue;
        pixels_[sp].assign(picks_[sp].size() * kPixels, 0);
        for (size_t i = 0; i < picks_[sp].size(); ++i)
          want.push_back({picks_[sp][i].file_index, pixels_[sp].data() + i * kPixels});
      }
      std::sort(want.begin(), want.end());
      Gz gz(parts_[s].images);
      gz.header(0x00000803, true);
      std::vector<uint8_t> buf(kPixels);
      int64_t pos = 0;
      for (const auto& [index, dst] : want) {
        for (; pos <= index; ++pos) gz.read(buf.data(), kPixels);
        std::copy(buf.begin(), buf.end(), dst);
      }
    }
    if (!pose_.none())
      for (int sp = 0; sp < 3; ++sp) pose_split(sp);
  }

  // Warps each image of split `sp` in place to its fixed pose.
  void pose_split(int sp) const {
    const bool t10k = sp == static_cast<int>(Split::test);
    for (size_t i = 0; i < picks_[sp].size(); ++i) {
      cv::Mat img(kSide, kSide, CV_8UC1, pixels_[sp].data() + i * kPixels);
      const cv::Mat posed = augment_apply(img, fashion_mnist_pose(pose_, seed_, t10k, picks_[sp][i].file_index), {});
      posed.copyTo(img);
    }
  }

  std::string dir_;
  std::vector<std::string> names_;
  PoseRanges pose_;
  uint64_t seed_;
  Part parts_[2];
  std::vector<Pick> picks_[3];
  std::string identity_;
  mutable std::once_flag loaded_;
  mutable std::vector<uint8_t> pixels_[3];
};

}  // namespace

AugmentDraws fashion_mnist_pose(const PoseRanges& ranges, uint64_t split_seed, bool t10k, int64_t file_index) {
  Rng rng(split_seed, hash64("fashion_mnist/pose"), t10k ? 1 : 0, static_cast<uint64_t>(file_index), 0);
  return draw_pose(ranges, kSide, kSide, rng);
}

void register_fashion_mnist(Registry& r) {
  r.add_source<FashionMnist>(
      Schema("fashion_mnist", "Fashion-MNIST from gzipped IDX files: a seeded, class-balanced selection of 28x28 "
                              "gray images; train and validation from the training file, test from t10k.")
          .produces(Payload::image)
          .param(kPath)
          .param(kClasses)
          .param(kPerClass)
          .param(kSplitSeed)
          .param(kPoseRotation)
          .param(kPoseShift)
          .param(kPoseZoom)
          .param(kPoseFlip)
          .example("{source: fashion_mnist, classes: [shirt, t-shirt], per_class: [1000, 500, 500]}"));
}

}  // namespace pipeline::stages
