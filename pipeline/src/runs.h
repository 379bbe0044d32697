// Run directories after the run: the per-epoch files a run writes for people and scripts
// (metrics.csv; curves.png is curves.h's), and reading runs back for `pipe runs DIR` (a table
// of the runs in DIR) and `pipe compare RUN...` (their metrics side by side, what differs in
// their resolved graphs, compare.png).
#pragma once

#include <cstdio>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "curves.h"
#include "runner.h"

namespace pipeline {

// The files a run writes once per reporting sink, named after `file` ("metrics.csv"): the
// first sink's is `file`; with several sinks each also has <stem>-<node><ext> (safe_file_name).
// `names`: the reporting sinks in graph order; `index`: the sink's place among them.
std::vector<std::string> sink_file_names(const std::string& file, const std::vector<std::string>& names, size_t index);

// metrics.csv has Keras CSVLogger's columns, a row per completed epoch; lr and the validation
// columns are empty where unknown (no learning rate, no validation split).
inline constexpr const char* kMetricsCsvHeader = "epoch,loss,acc,val_loss,val_acc,lr,seconds";
// Appends one epoch's row, after the header when the file is new or empty. (A fresh run
// removes its old file first; a resumed run appends to it.) Throws std::runtime_error naming
// the file when the write fails.
void append_metrics_csv(const std::string& path, const EpochMetrics& m, bool has_val);

// The first line of a run's graph.yaml: where it was resolved from (graph_file_of reads it back).
std::string graph_yaml_comment(const std::string& graph_file);

// A directory that is not a run directory (no summary.json where one is needed): a usage error.
struct NotARun : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// A run as summary.json (or, before the run wrote one, graph.yaml, checkpoint/ and
// metrics.jsonl) describes it. Metrics are the first reporting sink's, as in metrics.csv.
struct RunRecord {
  std::string dir, name;  // name: the directory's own name
  std::string graph, started, status;  // status "running/interrupted": no summary.json yet
  int epochs = 0, epochs_completed = 0;
  std::optional<double> best_val_acc, val_acc, test_acc, seconds;
  std::optional<double> train_acc;  // of the last epoch
  int best_epoch = 0;
  Series val_curve;  // validation accuracy per epoch (metrics.jsonl), labelled with `name`
};

// Throws NotARun when `dir` has neither summary.json nor graph.yaml, or (`need_summary`)
// no summary.json; std::runtime_error naming the file when one cannot be read.
RunRecord read_run(const std::string& dir, bool need_summary = false);
// The run directories directly under `root`, oldest first. Unreadable ones are reported to
// `err` and left out; other directories are ignored.
std::vector<RunRecord> list_runs(const std::string& root, std::FILE* err);
std::string runs_table(const std::vector<RunRecord>& runs);
nlohmann::ordered_json runs_json(const std::vector<RunRecord>& runs);

// A dotted key of the resolved graphs whose values differ ("(absent)" where a graph lacks it).
struct GraphDifference {
  std::string key;
  std::vector<std::string> values;  // one per run
};

struct Comparison {
  std::vector<RunRecord> runs;
  std::vector<GraphDifference> differences;  // of their graph.yaml files
};

// Reads the runs (each must have a summary.json) and their graph.yaml differences.
Comparison compare_runs(const std::vector<std::string>& dirs);
std::string comparison_text(const Comparison& c);
// compare.png: the runs' validation accuracy per epoch, one line each.
std::string comparison_png(const Comparison& c);

struct RunsOptions {
  std::string dir = "runs";
  bool json = false;
};

struct CompareOptions {
  std::vector<std::string> runs;
  std::string out = "compare.png";
};

// `pipe runs` and `pipe compare`: print to `out`, problems to `err`; return the exit code
// (2: not a directory, fewer than two runs, a directory that is not a finished run).
int run_runs(const RunsOptions& options, std::FILE* out, std::FILE* err);
int run_compare(const CompareOptions& options, std::FILE* out, std::FILE* err);

}  // namespace pipeline
