// csv: a data source reading a CSV file that lists images and their labels:
//   path,label,split              (header line required; `split` optional; other columns unused)
//   cats/1.jpg,cat,train
//   "dogs/a, b.jpg",dog,val       (RFC 4180 quoting: commas, newlines, "" for a quote)
// Image paths are relative to the CSV file's directory (absolute and ~ paths stay). Classes are
// the sorted unique labels (as folder sorts its directories); a sample's label is its class's
// position. `split` is train, validation (or val) or test; without the column, each class is
// split by validation_split and test_split exactly as folder splits a flat tree.
//
// Output: per split, samples whose `bytes` hold the encoded file (feed `decode`). Image files
// are not opened until loaded: a missing or unreadable one is a per-sample error then (the
// graph's on_error), as in folder. Each split's order is a seeded shuffle (split_seed).
// Errors name FILE:LINE:COL: a missing header column, a row with the wrong number of fields,
// an empty path or label, an unknown split, a path listed twice, malformed quoting; and, as
// in folder, a split that `splits` lists (with a split column) or a fraction asks for without rows.
// Params:
//   path: FILE              the CSV file (required; relative: to the graph file's directory)
//   split_seed: N           seed of the split (no split column) and of the sample order (default 1)
//   validation_split: F     no split column: fraction of each class for validation (default 0.2)
//   test_split: F           no split column: fraction of each class for test (default 0)
//   splits: [..]            split column: the splits it must have (default [train, validation, test])
//
// Example config:
//   data: {source: csv, path: ../data/labels.csv, validation_split: 0.2}
#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include <fmt/format.h>

#include "builtin.h"
#include "csv_reader.h"
#include "file_source.h"
#include "pipe/rng.h"

namespace pipeline::stages {
namespace {

namespace fs = std::filesystem;

const auto kPath = param::string("path", param::required, "the CSV file (relative: to the graph file's directory)").path(true);

struct Entry {
  std::string path, label, written;  // path: resolved; written: as in the file
  int split = -1;                    // by Split; -1: no split column
};

int split_of(const std::string& s) {
  return s == "train" ? 0 : s == "validation" || s == "val" ? 1 : s == "test" ? 2 : -1;
}

class Csv : public FileSource {
 public:
  Csv(const Params& p, const SourceContext& ctx) : FileSource("csv"), file_(ctx.resolve(p.get(kPath))) {
    const SplitParams sp(p);
    const std::vector<Entry> entries = read_entries();
    std::set<std::string> labels;
    for (const Entry& e : entries) labels.insert(e.label);
    classes_.assign(labels.begin(), labels.end());  // std::set: sorted by name
    const bool split_column = entries[0].split >= 0;
    split_column ? take_splits(sp, entries) : split_by_fractions(sp, entries);
    std::string listing;  // in listing order, before the shuffle
    for (const Entry& e : entries)
      listing += listing_entry(e.path, fmt::format("{}|{}|{}", e.written, e.label, e.split));
    identity_ = fmt::format("csv;file={};split_seed={};files={};listing={:016x}{}", file_, sp.seed, total(),
                            hash64(listing), split_column ? "" : ";" + sp.fractions());
    shuffle_splits(sp.seed);
  }

 private:
  std::vector<Entry> read_entries() const {
    std::ifstream in(file_, std::ios::binary);
    if (!in) throw std::runtime_error(fmt::format("csv: cannot open {}: {}", file_, std::strerror(errno)));
    std::ostringstream text;
    text << in.rdbuf();
    const std::vector<CsvRow> rows = parse_csv(text.str(), file_);
    if (rows.empty()) throw std::runtime_error(fmt::format("{}:1:1: empty file: want a header line path,label[,split]", file_));
    const CsvColumns cols = csv_columns(rows[0], file_, {"path", "label"}, {"split"});
    if (rows.size() == 1) throw std::runtime_error(fmt::format("{}:{}: no rows after the header", file_, rows[0].line + 1));
    const std::string dir = fs::path(file_).parent_path().string();
    std::vector<Entry> out;
    std::map<std::string, int> seen;  // resolved path -> line
    for (size_t r = 1; r < rows.size(); ++r) {
      const CsvRow& row = rows[r];
      if (row.fields.size() != cols.count)
        throw std::runtime_error(fmt::format("{}:{}: {} field(s), the header has {}", file_, row.line, row.fields.size(), cols.count));
      const auto at = [&](const char* name) -> const CsvField& { return row.fields[cols.index.at(name)]; };
      const auto fail = [&](const CsvField& f, const std::string& why) {
        return std::runtime_error(fmt::format("{}:{}:{}: {}", file_, f.line, f.col, why));
      };
      Entry e;
      e.written = at("path").text;
      e.label = at("label").text;
      if (e.written.empty()) throw fail(at("path"), "empty path");
      if (e.label.empty()) throw fail(at("label"), "empty label");
      e.path = resolve_path(e.written, dir);
      if (cols.index.count("split") && (e.split = split_of(at("split").text)) < 0)
        throw fail(at("split"), fmt::format("unknown split '{}' (want train, validation or val, test)", at("split").text));
      const auto [it, fresh] = seen.emplace(e.path, row.line);
      if (!fresh) throw fail(at("path"), fmt::format("{} is already listed on line {}", e.written, it->second));
      out.push_back(std::move(e));
    }
    return out;
  }

  int label_of(const Entry& e) const {
    return static_cast<int>(std::lower_bound(classes_.begin(), classes_.end(), e.label) - classes_.begin());
  }

  void take_splits(const SplitParams& sp, const std::vector<Entry>& entries) {
    if (sp.fractions_set)
      throw std::runtime_error(fmt::format("csv: {} has a split column: validation_split and test_split are for a "
                                           "CSV without one", file_));
    std::array<size_t, 3> ignored{};
    for (const Entry& e : entries) {
      const size_t s = static_cast<size_t>(e.split);
      if (sp.required[s]) files_[s].push_back({e.path, label_of(e)});
      else ++ignored[s];
    }
    std::vector<std::string> rest;  // what `splits` would say instead, when a split is empty
    for (Split s : kAllSplits)
      if (files_[static_cast<size_t>(s)].size()) rest.push_back(split_name(s));
    for (Split s : kAllSplits) {
      const size_t i = static_cast<size_t>(s);
      if (ignored[i])
        warn(fmt::format("csv: {}: {} row(s) of split {} ignored: splits is {}", file_, ignored[i], split_name(s),
                         sp.required_list()));
      if (sp.required[i] && files_[i].empty())
        throw std::runtime_error(fmt::format("csv: {} has no rows of the {} split (a CSV without one says so in the "
                                             "graph: data: {{..., splits: [{}]}})", file_, split_name(s),
                                             fmt::join(rest, ", ")));
    }
  }

  void split_by_fractions(const SplitParams& sp, const std::vector<Entry>& entries) {
    if (sp.splits_set)
      throw std::runtime_error(fmt::format("csv: {} has no split column: splits is for a CSV with one (validation_split "
                                           "and test_split split this one)", file_));
    std::vector<std::vector<std::string>> per_class(classes_.size());
    for (const Entry& e : entries) per_class[static_cast<size_t>(label_of(e))].push_back(e.path);
    files_ = assign_splits(classes_, per_class, sp);
    check_fraction_splits(files_, sp, "csv", "in " + file_, "rows");
  }

  std::string file_;
};

}  // namespace

void register_csv(Registry& r) {
  r.add_source<Csv>(Schema("csv", "A CSV file of images and labels: a header line with columns path, label and "
                                  "optionally split (train, validation or val, test); paths relative to the CSV's "
                                  "directory; RFC 4180 quoting. Without a split column, each class is split by "
                                  "validation_split and test_split. Samples carry the encoded file bytes.")
                        .produces(Payload::bytes)
                        .param(kPath)
                        .param(kSplitSeed)
                        .param(kValidationSplit)
                        .param(kTestSplit)
                        .param(kSplits)
                        .example("{source: csv, path: ../data/labels.csv, validation_split: 0.2}"));
}

}  // namespace pipeline::stages
