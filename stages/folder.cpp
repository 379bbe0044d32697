// folder: a data source reading a class-folder tree (Keras flow_from_directory layout):
//   ROOT/train/<class>/*.jpg   ROOT/validation/<class>/*   ROOT/test/<class>/*
//
// Output: per split, samples whose `bytes` hold the encoded file (feed `decode`).
// Images: files ending in .jpg .jpeg .png .bmp .webp (any case); hidden files and
// directories (names starting with '.') and other files are skipped. Classes are the sorted
// union of the class directories of all splits; a sample's label is its class's position.
// Files are sorted by name within a class; each split's order is then a seeded shuffle
// (split_seed) so that training batches mix classes. A missing split directory is an empty
// split; a missing ROOT, or a tree with no image at all, is an error naming the path.
// Params:
//   path: ROOT        the tree's root (required; relative: to the graph file's directory)
//   split_seed: N     seed of the sample order (default 1)
//
// Example config:
//   data: {source: folder, path: ../data/cats_and_dogs_small}
#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <memory>
#include <set>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fmt/format.h>

#include "builtin.h"
#include "files.h"

namespace pipeline::stages {
namespace {

namespace fs = std::filesystem;

bool hidden(const fs::path& p) { return p.filename().string().rfind('.', 0) == 0; }

bool is_image(const fs::path& p) { return is_image_file(p.string()); }

// Sorted visible subdirectories / image files of `dir` (empty when `dir` does not exist).
std::vector<fs::path> list(const fs::path& dir, bool dirs) {
  std::vector<fs::path> out;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return out;
  for (const fs::directory_entry& e : fs::directory_iterator(dir)) {
    if (hidden(e.path())) continue;
    // A symlink whose target is gone is still listed: loading it then fails as a per-sample
    // error with its reason, rather than the image vanishing from the data set unreported.
    if (dirs ? e.is_directory() : ((e.is_regular_file() || e.is_symlink()) && is_image(e.path())))
      out.push_back(e.path());
  }
  std::sort(out.begin(), out.end());
  return out;
}

const auto kPath = param::string("path", param::required, "root of the tree (relative: to the graph file's directory)").path(true);
const auto kSplitSeed = param::integer("split_seed", 1, "seed of the sample order within each split");

class Folder : public Source {
 public:
  Folder(const Params& p, const SourceContext& ctx)
      : root_(ctx.resolve(p.get(kPath))) {
    std::error_code ec;
    if (!fs::is_directory(root_, ec))
      throw std::runtime_error(fmt::format("folder: {} is not a directory", root_.string()));
    std::set<std::string> names;
    for (Split s : kAllSplits)
      for (const fs::path& d : list(root_ / split_name(s), true))
        names.insert(d.filename().string());
    classes_.assign(names.begin(), names.end());  // std::set: sorted by name

    const uint64_t seed = static_cast<uint64_t>(p.get(kSplitSeed));
    std::string listing;
    size_t total = 0;
    for (Split s : kAllSplits) {
      auto& files = files_[static_cast<int>(s)];
      for (size_t k = 0; k < classes_.size(); ++k)
        for (const fs::path& f : list(root_ / split_name(s) / classes_[k], false))
          files.push_back({f.string(), static_cast<int>(k)});
      for (const File& f : files) {  // in listing order, before the shuffle
        // A broken symlink has no size or time: it enters the identity as such and fails
        // later, when loaded, as a per-sample error.
        std::error_code size_ec, time_ec;
        const auto size = fs::file_size(f.path, size_ec);
        const auto time = fs::last_write_time(f.path, time_ec);
        listing += fmt::format("{}:{}:{};", fs::relative(f.path, root_).string(),
                               size_ec ? std::string("?") : std::to_string(size),
                               time_ec ? std::string("?") : std::to_string(time.time_since_epoch().count()));
      }
      Rng rng(seed, hash64("folder"), static_cast<uint64_t>(s), 0, 0);
      for (size_t i = files.size(); i > 1; --i)
        std::swap(files[i - 1], files[static_cast<size_t>(rng.below(static_cast<int64_t>(i)))]);
      total += files.size();
    }
    if (total == 0)
      throw std::runtime_error(fmt::format(
          "folder: no images under {} (want {}/{{train,validation,test}}/<class>/*.jpg|png|...)",
          root_.string(), root_.string()));
    // The full listing can be megabytes for a large tree: the identity keeps its hash.
    identity_ = fmt::format("folder;root={};split_seed={};files={};listing={:016x}",
                            root_.string(), seed, total, hash64(listing));
  }

  const std::vector<std::string>& classes() const override { return classes_; }
  int64_t size(Split split) const override {
    return static_cast<int64_t>(files_[static_cast<int>(split)].size());
  }

  Sample describe(Split split, int64_t index) const override {
    const File& f = at(split, index);
    Sample s;
    s.id = index;
    s.label = f.label;
    s.split = split;
    s.origin = f.path;
    return s;
  }

  void load(Sample& sample) const override {
    sample.bytes = read_image_bytes(at(sample.split, sample.id).path);
  }

  std::string identity() const override { return identity_; }

 private:
  struct File {
    std::string path;
    int label;
  };

  const File& at(Split split, int64_t index) const {
    const auto& v = files_[static_cast<int>(split)];
    if (index < 0 || index >= static_cast<int64_t>(v.size()))
      throw SampleError(fmt::format("folder: no sample {} in split {} (size {})", index,
                                    split_name(split), v.size()));
    return v[static_cast<size_t>(index)];
  }

  fs::path root_;
  std::vector<std::string> classes_;
  std::vector<File> files_[3];
  std::string identity_;
};

}  // namespace

void register_folder(Registry& r) {
  r.add_source<Folder>(Schema("folder", "A class-folder tree ROOT/{train,validation,test}/<class>/<image> (Keras "
                                        "flow_from_directory layout); samples carry the encoded file bytes.")
                           .produces(Payload::bytes)
                           .param(kPath)
                           .param(kSplitSeed)
                           .example("{source: folder, path: ../data/cats_and_dogs_small}"));
}

}  // namespace pipeline::stages
