// folder: a data source reading a class-folder tree, in either of Keras' two layouts:
//   split tree (flow_from_directory):  ROOT/train/<class>/*  ROOT/validation/<class>/*  ROOT/test/<class>/*
//     (`val/` is read as `validation/`; having both is an error)
//   flat (image_dataset_from_directory): ROOT/<class>/*, split per class by validation_split and
//     test_split: each class's files sorted by name, shuffled by split_seed, round(n * test_split)
//     to test and round(n * validation_split) to validation (at least one each when the fraction
//     is above 0 and the class has images to spare), the rest to train.
// A tree with any of train/, validation/, val/, test/ at its top is a split tree.
//
// Output: per split, samples whose `bytes` hold the encoded file (feed `decode`).
// Images: files ending in .jpg .jpeg .png .bmp .webp (any case); hidden files and directories
// (names starting with '.') and other files are skipped. Classes are the sorted class directory
// names (of all splits); a sample's label is its class's position. Each split's order is a
// seeded shuffle (split_seed) so that training batches mix classes.
// Warnings (stderr, "pipe: warning: ..."): a directory the layout has no place for (ROOT/misc/
// next to train/, a class directory next to split directories, a directory inside a class),
// images outside any class directory, a split directory left out by `splits`.
// Errors: a missing ROOT; a split that `splits` lists (split tree) or a fraction above 0 asks
// for (flat) without images; the other layout's parameters (a split tree with validation_split).
// Params:
//   path: ROOT              the tree's root (required; relative: to the graph file's directory)
//   split_seed: N           seed of the flat split and of the sample order (default 1)
//   validation_split: F     flat: fraction of each class for validation (default 0.2)
//   test_split: F           flat: fraction of each class for test (default 0)
//   splits: [..]            split tree: the splits it must have (default [train, validation, test])
//
// Example config:
//   data: {source: folder, path: ../data/cats_and_dogs_small}
//   data: {source: folder, path: ../data/flowers, validation_split: 0.2, test_split: 0.1}
//   data: {source: folder, path: ../data/kaggle, splits: [train, validation]}
#include <algorithm>
#include <filesystem>
#include <set>

#include <fmt/format.h>

#include "builtin.h"
#include "file_source.h"
#include "files.h"

namespace pipeline::stages {
namespace {

namespace fs = std::filesystem;

const auto kPath = param::string("path", param::required, "root of the tree (relative: to the graph file's directory)").path(true);

// The visible subdirectories and image files of `dir`, sorted (empty when `dir` does not exist).
struct Entries {
  std::vector<fs::path> dirs, images;
};

Entries scan(const fs::path& dir) {
  Entries out;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return out;
  for (const fs::directory_entry& e : fs::directory_iterator(dir)) {
    if (e.path().filename().string().rfind('.', 0) == 0) continue;  // hidden
    // A symlink whose target is gone is still listed: loading it then fails as a per-sample
    // error with its reason, rather than the image vanishing from the data set unreported.
    if (e.is_directory()) out.dirs.push_back(e.path());
    else if ((e.is_regular_file() || e.is_symlink()) && is_image_file(e.path().string())) out.images.push_back(e.path());
  }
  std::sort(out.dirs.begin(), out.dirs.end());
  std::sort(out.images.begin(), out.images.end());
  return out;
}

void warn_loose_images(const Entries& e, const fs::path& dir, const std::string& want) {
  if (!e.images.empty())
    warn(fmt::format("folder: {} image(s) directly in {}/ ignored, e.g. {} (images go in {})", e.images.size(),
                     dir.string(), e.images[0].filename().string(), want));
}

// The images of one class directory; a directory inside it is not searched, and says so.
std::vector<std::string> class_images(const fs::path& dir) {
  const Entries e = scan(dir);
  for (const fs::path& d : e.dirs)
    warn(fmt::format("folder: {}/ ignored: a class's images lie directly in {}/", d.string(), dir.string()));
  std::vector<std::string> out;
  for (const fs::path& f : e.images) out.push_back(f.string());
  return out;
}

class Folder : public FileSource {
 public:
  Folder(const Params& p, const SourceContext& ctx) : FileSource("folder"), root_(ctx.resolve(p.get(kPath))) {
    std::error_code ec;
    if (!fs::is_directory(root_, ec))
      throw std::runtime_error(fmt::format("folder: {} is not a directory", root_.string()));
    const SplitParams sp(p);
    const Entries top = scan(root_);
    std::array<fs::path, 3> split_dirs;  // empty: absent
    std::vector<fs::path> others;
    for (const fs::path& d : top.dirs) {
      const std::string name = d.filename().string();
      const int i = name == "train" ? 0 : name == "validation" || name == "val" ? 1 : name == "test" ? 2 : -1;
      if (i < 0) others.push_back(d);
      else if (!split_dirs[static_cast<size_t>(i)].empty())
        throw std::runtime_error(fmt::format("folder: {} has both {}/ and {}/, which are both the validation split: "
                                             "keep one", root_.string(), split_dirs[1].string(), d.string()));
      else split_dirs[static_cast<size_t>(i)] = d;
    }
    const bool tree = std::any_of(split_dirs.begin(), split_dirs.end(), [](const fs::path& d) { return !d.empty(); });
    tree ? read_split_tree(sp, split_dirs, others, top) : read_flat(sp, top);
    if (total() == 0)
      throw std::runtime_error(fmt::format("folder: no images under {} (want {}/{{train,validation,test}}/<class>/*.jpg"
                                           "|png|... or {}/<class>/*)", root_.string(), root_.string(), root_.string()));
    std::string listing;  // in listing order, before the shuffle
    for (const auto& split : files_)
      for (const ImageFile& f : split) listing += listing_entry(f.path, fs::relative(f.path, root_).string());
    // The full listing can be megabytes for a large tree: the identity keeps its hash.
    identity_ = fmt::format("folder;root={};split_seed={};files={};listing={:016x}{}", root_.string(), sp.seed,
                            total(), hash64(listing), tree ? "" : ";flat;" + sp.fractions());
    shuffle_splits(sp.seed);
  }

 private:
  void read_split_tree(const SplitParams& sp, const std::array<fs::path, 3>& dirs, const std::vector<fs::path>& others,
                       const Entries& top) {
    if (sp.fractions_set)
      throw std::runtime_error(fmt::format("folder: validation_split and test_split split a tree {}/<class>/, and {} "
                                           "has split directories (train/, validation/, test/): remove them",
                                           root_.string(), root_.string()));
    for (const fs::path& d : others)
      warn(fmt::format("folder: {}/ ignored: not a split directory (train, validation or val, test) of {}",
                       d.string(), root_.string()));
    warn_loose_images(top, root_, root_.string() + "/<split>/<class>/");
    std::set<std::string> names;
    for (Split s : kAllSplits) {
      const fs::path& dir = dirs[static_cast<size_t>(s)];
      if (dir.empty()) continue;
      if (!sp.required[static_cast<size_t>(s)]) {
        warn(fmt::format("folder: {}/ ignored: splits is {}", dir.string(), sp.required_list()));
        continue;
      }
      const Entries e = scan(dir);
      warn_loose_images(e, dir, dir.string() + "/<class>/");
      for (const fs::path& c : e.dirs) names.insert(c.filename().string());
    }
    classes_.assign(names.begin(), names.end());  // std::set: sorted by name
    for (Split s : kAllSplits) {
      const size_t i = static_cast<size_t>(s);
      if (!sp.required[i]) continue;
      for (size_t k = 0; k < classes_.size() && !dirs[i].empty(); ++k)
        for (std::string& f : class_images(dirs[i] / classes_[k])) files_[i].push_back({std::move(f), static_cast<int>(k)});
      if (files_[i].empty()) throw empty_split(sp, s, dirs);
    }
  }

  std::runtime_error empty_split(const SplitParams& sp, Split s, const std::array<fs::path, 3>& dirs) const {
    std::vector<std::string> rest;  // what `splits` would say instead
    for (Split o : kAllSplits)
      if (o != s && sp.required[static_cast<size_t>(o)]) rest.push_back(split_name(o));
    const fs::path& dir = dirs[static_cast<size_t>(s)];
    return std::runtime_error(fmt::format(
        "folder: no images under {}: the {} split of {} is empty (a tree without one says so in the graph: "
        "data: {{..., splits: [{}]}})",
        dir.empty() ? (root_ / split_name(s)).string() + "/ (no such directory)" : dir.string() + "/<class>/",
        split_name(s), root_.string(), fmt::join(rest, ", ")));
  }

  void read_flat(const SplitParams& sp, const Entries& top) {
    if (sp.splits_set)
      throw std::runtime_error(fmt::format("folder: splits names the split directories of a tree, and {} has none "
                                           "(train/, validation/, test/): its classes are split by validation_split "
                                           "and test_split", root_.string()));
    warn_loose_images(top, root_, root_.string() + "/<class>/");
    std::vector<std::vector<std::string>> per_class;
    for (const fs::path& d : top.dirs) {
      classes_.push_back(d.filename().string());
      per_class.push_back(class_images(d));
      if (per_class.back().empty()) warn(fmt::format("folder: class directory {}/ has no images", d.string()));
    }
    files_ = assign_splits(classes_, per_class, sp);
    if (files_[0].empty() && files_[1].empty() && files_[2].empty()) return;  // "no images" below
    check_fraction_splits(files_, sp, "folder", "under " + root_.string(), "images");
  }

  fs::path root_;
};

}  // namespace

void register_folder(Registry& r) {
  r.add_source<Folder>(Schema("folder", "A class-folder tree: ROOT/{train,validation|val,test}/<class>/<image> (Keras "
                                        "flow_from_directory layout), or ROOT/<class>/<image> split per class by "
                                        "validation_split and test_split (image_dataset_from_directory); samples carry "
                                        "the encoded file bytes.")
                           .produces(Payload::bytes)
                           .param(kPath)
                           .param(kSplitSeed)
                           .param(kValidationSplit)
                           .param(kTestSplit)
                           .param(kSplits)
                           .example("{source: folder, path: ../data/cats_and_dogs_small}"));
}

}  // namespace pipeline::stages
