// The split parameters, the stratified split and FileSource (file_source.h).
#include "file_source.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <stdexcept>

#include <fmt/format.h>

#include "files.h"
#include "pipe/rng.h"

namespace pipeline::stages {
namespace {

namespace fs = std::filesystem;

// Fisher-Yates with a counter-based stream: the same seed and key give the same order anywhere.
template <typename T>
void shuffle(std::vector<T>& v, uint64_t seed, uint64_t stream, uint64_t key) {
  Rng rng(seed, stream, key, 0, 0);
  for (size_t i = v.size(); i > 1; --i)
    std::swap(v[i - 1], v[static_cast<size_t>(rng.below(static_cast<int64_t>(i)))]);
}

// How many of a class's `n` images a held-out split takes, `left` of them still unassigned.
size_t held_out(size_t n, double fraction, size_t left) {
  if (fraction <= 0 || left <= 1) return 0;
  const size_t k = std::max<size_t>(1, static_cast<size_t>(std::llround(static_cast<double>(n) * fraction)));
  return std::min(k, left - 1);  // train keeps one
}

}  // namespace

SplitParams::SplitParams(const Params& p)
    : seed(static_cast<uint64_t>(p.get(kSplitSeed))),
      validation(p.get(kValidationSplit)),
      test(p.get(kTestSplit)) {
  if (validation + test >= 1)
    throw std::runtime_error(fmt::format("validation_split ({}) + test_split ({}) must be below 1: train "
                                         "takes the rest", validation, test));
  for (const std::string& s : p.get(kSplits))
    required[static_cast<size_t>(s == "train" ? 0 : s == "validation" ? 1 : 2)] = true;
  // The declared defaults, read back from the declarations (one source of truth).
  const auto default_of = [](const auto& param) {
    return std::get<typename std::decay_t<decltype(param)>::value_type>(*param.spec().default_value);
  };
  fractions_set = validation != default_of(kValidationSplit) || test != default_of(kTestSplit);
  splits_set = p.get(kSplits) != default_of(kSplits);
}

std::string SplitParams::fractions() const {
  return fmt::format("validation_split={};test_split={}", validation, test);
}

std::string SplitParams::required_list() const {
  std::vector<std::string> names;
  for (Split s : kAllSplits)
    if (required[static_cast<size_t>(s)]) names.push_back(split_name(s));
  return fmt::format("[{}]", fmt::join(names, ", "));
}

SplitFiles assign_splits(const std::vector<std::string>& classes,
                         const std::vector<std::vector<std::string>>& files_per_class, const SplitParams& sp) {
  SplitFiles out;
  for (size_t k = 0; k < classes.size(); ++k) {
    std::vector<std::string> files = files_per_class[k];
    std::sort(files.begin(), files.end());
    // Keyed on the class name, not its position: adding a class moves no other class's files.
    shuffle(files, sp.seed, hash64("split"), hash64(classes[k]));
    const size_t n = files.size();
    const size_t n_test = held_out(n, sp.test, n);
    const size_t n_val = held_out(n, sp.validation, n - n_test);
    for (size_t i = 0; i < n; ++i) {
      const Split s = i < n_test ? Split::test : i < n_test + n_val ? Split::validation : Split::train;
      out[static_cast<size_t>(s)].push_back({files[i], static_cast<int>(k)});
    }
  }
  return out;
}

void check_fraction_splits(const SplitFiles& files, const SplitParams& sp, const std::string& source,
                           const std::string& where, const std::string& items) {
  for (Split s : {Split::validation, Split::test})
    if ((s == Split::validation ? sp.validation : sp.test) > 0 && files[static_cast<size_t>(s)].empty())
      throw std::runtime_error(fmt::format("{}: {}_split gives the {} split no {}: every class {} has too few {} to "
                                           "spare one", source, s == Split::test ? "test" : "validation",
                                           split_name(s), items, where, items));
}

void warn(const std::string& message) { std::fprintf(stderr, "pipe: warning: %s\n", message.c_str()); }

std::string listing_entry(const std::string& path, const std::string& shown) {
  std::error_code size_ec, time_ec;
  const auto size = fs::file_size(path, size_ec);
  const auto time = fs::last_write_time(path, time_ec);
  return fmt::format("{}:{}:{};", shown, size_ec ? std::string("?") : std::to_string(size),
                     time_ec ? std::string("?") : std::to_string(time.time_since_epoch().count()));
}

int64_t FileSource::size(Split split) const {
  return static_cast<int64_t>(files_[static_cast<size_t>(split)].size());
}

Sample FileSource::describe(Split split, int64_t index) const {
  const ImageFile& f = at(split, index);
  Sample s;
  s.id = index;
  s.label = f.label;
  s.split = split;
  s.origin = f.path;
  return s;
}

void FileSource::load(Sample& sample) const { sample.bytes = read_image_bytes(at(sample.split, sample.id).path); }

void FileSource::shuffle_splits(uint64_t seed) {
  for (Split s : kAllSplits) shuffle(files_[static_cast<size_t>(s)], seed, hash64(name_), static_cast<uint64_t>(s));
}

const ImageFile& FileSource::at(Split split, int64_t index) const {
  const auto& v = files_[static_cast<size_t>(split)];
  if (index < 0 || index >= static_cast<int64_t>(v.size()))
    throw SampleError(fmt::format("{}: no sample {} in split {} (size {})", name_, index, split_name(split), v.size()));
  return v[static_cast<size_t>(index)];
}

}  // namespace pipeline::stages
