// Shared by the file-backed sources (folder, csv): the split parameters, the stratified split
// of data that has no splits of its own, warnings, and a Source over per-split file lists.
#pragma once

#include <array>
#include <string>
#include <vector>

#include "pipe/schema.h"
#include "pipe/source.h"

namespace pipeline::stages {

// Keras-like defaults: image_dataset_from_directory users pass validation_split=0.2.
inline const auto kSplitSeed = param::integer(
    "split_seed", 1, "seed of the split of data without splits and of the sample order within each split");
inline const auto kValidationSplit = param::number(
    "validation_split", 0.2, "data without splits: the fraction of each class held out for validation").range(0, 1);
inline const auto kTestSplit = param::number(
    "test_split", 0.0, "data without splits: the fraction of each class held out for test").range(0, 1);
inline const auto kSplits = param::strings(
    "splits", {"train", "validation", "test"},
    "data with splits: those that must have images (a split not listed is left out, with a warning)")
    .one_of({"train", "validation", "test"});

struct ImageFile {
  std::string path;  // absolute
  int label = 0;
};
using SplitFiles = std::array<std::vector<ImageFile>, 3>;

// The split parameters as given. A value other than its default counts as "set": the other
// layout's parameters are errors, so that a graph never says something the data ignores.
struct SplitParams {
  explicit SplitParams(const Params& p);
  uint64_t seed;
  double validation, test;
  std::array<bool, 3> required{};  // by Split
  bool fractions_set, splits_set;
  std::string fractions() const;   // "validation_split=...;test_split=..." (identities)
  std::string required_list() const;  // "[train, validation]"
};

// Splits data that has none: per class (by name), its files sorted, shuffled by `seed`; then
// round(n * test) to test, round(n * validation) to validation, the rest to train. A fraction
// above 0 takes at least one image of a class while train keeps at least one.
SplitFiles assign_splits(const std::vector<std::string>& classes,
                         const std::vector<std::vector<std::string>>& files_per_class, const SplitParams& sp);

// Refuses a fraction above 0 that left its split empty: every class too small to spare one.
// `source` names the stage, `where` the data ("under ROOT", "in FILE"), `items` its unit.
void check_fraction_splits(const SplitFiles& files, const SplitParams& sp, const std::string& source,
                           const std::string& where, const std::string& items);

// "pipe: warning: MESSAGE" on stderr: shown by every command that opens the data.
void warn(const std::string& message);

// "shown:size:mtime;" of one file, "?" for what cannot be read (a broken symlink fails later,
// when loaded, as a per-sample error): the part of a source's identity that sees data change.
std::string listing_entry(const std::string& path, const std::string& shown);

// A Source over per-split file lists whose samples carry the encoded file bytes.
class FileSource : public Source {
 public:
  const std::vector<std::string>& classes() const override { return classes_; }
  int64_t size(Split split) const override;
  Sample describe(Split split, int64_t index) const override;
  void load(Sample& sample) const override;
  std::string identity() const override { return identity_; }

 protected:
  explicit FileSource(std::string name) : name_(std::move(name)) {}
  // Shuffles each split's list (filled in a stable order) by the seed, so that training
  // batches mix classes.
  void shuffle_splits(uint64_t seed);
  size_t total() const { return files_[0].size() + files_[1].size() + files_[2].size(); }

  std::string name_;
  std::vector<std::string> classes_;
  SplitFiles files_;
  std::string identity_;

 private:
  const ImageFile& at(Split split, int64_t index) const;
};

}  // namespace pipeline::stages
