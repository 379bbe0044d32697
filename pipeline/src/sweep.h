// `pipe sweep`: a graph run over the Cartesian product of grid values x seeds, each run a
// normal run directory under the sweep directory, all sharing the feature cache.
//
// Every run is a child `pipe run` (failure isolation, --jobs J at once, Ctrl-C reaches every
// run so each leaves a checkpoint). Runs of one sweep that extract the same cache entry at
// once are safe: the cache serializes writers per entry with flock(2) and a writer re-checks
// after the lock, so the second run reads what the first wrote (cache_store.h).
//
// The sweep directory holds sweep.json (the definition: graph, grid, --set values, seeds; a
// rerun with another definition is refused), sweep.csv (a row per run), sweep.md (mean and
// standard deviation over seeds per grid cell), sweep.png (one metric against one grid key)
// and logs/<run>.log (each child's output). Running the same sweep again skips finished runs
// and resumes interrupted ones (`pipe run --resume`).
#pragma once

#include <atomic>
#include <cstdio>
#include <functional>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "runs.h"
#include "spec.h"

namespace pipeline {

// A command line the sweep refuses before any run starts (exit 2).
struct SweepUsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct GridAxis {
  std::string key;
  std::vector<std::string> values;  // YAML text, as --set takes it
};

// "KEY=V1,V2,...": values split at commas outside brackets, braces and quotes, so that
// `data.per_class=[100,500,500],[300,500,500]` is two values. Throws SweepUsageError.
GridAxis parse_grid(const std::string& text);

// The metrics a sweep reports per run, by their names in sweep.csv and --metric.
inline const std::vector<std::string> kSweepMetrics = {"train_acc", "val_acc", "best_val_acc", "test_acc", "seconds"};

struct SweepOptions {
  std::string graph;
  std::vector<std::string> grid;  // --grid KEY=V1,V2,...
  std::vector<std::string> sets;  // --set KEY=VALUE, every run
  int seeds = 1;
  std::string out;  // "" : sweeps/<graph>-<hash of the definition>
  int jobs = 1;
  int threads = 0;  // 0: all cores; divided among the jobs
  std::string plot_x;                   // "" : the first grid key
  std::string metric = "best_val_acc";  // sweep.png's y
  std::vector<std::string> plugins;     // --plugin, handed to every run
  bool allow_plugins = false;
  std::string exe = "/proc/self/exe";  // the pipe binary the runs exec
};

// One run of the sweep: its grid values, its seed, the overrides it runs with.
struct SweepRun {
  std::string name;                 // its directory under the sweep directory
  std::vector<std::string> values;  // one per grid axis
  int seed = 1;
  std::vector<std::string> overrides;
};

// The grid's cells (first axis outermost) x seeds 1..N (innermost). A run's overrides: --set,
// its grid values, then `seed_keys` = its seed (train.seed, and the source's split seed
// unless --grid or --set gives data.split_seed).
std::vector<SweepRun> expand_sweep(const std::vector<GridAxis>& grid, const std::vector<std::string>& sets,
                                   int seeds, const std::vector<std::string>& seed_keys);

// A run's outcome: status completed | failed | interrupted | not run; metrics from its summary.
struct SweepResult {
  SweepRun run;
  std::string status = "not run", error;
  std::optional<double> train_acc, val_acc, best_val_acc, test_acc, seconds;
  std::optional<double> metric(const std::string& name) const;
};

std::string sweep_csv(const std::vector<GridAxis>& grid, const std::vector<SweepResult>& results);
std::string sweep_markdown(const std::string& graph, const std::vector<GridAxis>& grid,
                           const std::vector<SweepResult>& results);
std::string sweep_png(const std::vector<GridAxis>& grid, const std::vector<SweepResult>& results,
                      const std::string& x_key, const std::string& metric);

// Checks a run's overrides as `pipe run --set` does, printing its diagnostics; the spec, or
// nullopt when they are refused.
using SweepValidator = std::function<std::optional<GraphSpec>(const std::vector<std::string>& sets)>;

// Runs the sweep; returns the exit code: the number of failed runs (at most 125), 2 for a
// refused command line, 130 when `stop` was set (Ctrl-C).
int run_sweep(const SweepOptions& options, const SweepValidator& validate, const std::atomic<bool>* stop,
              std::FILE* out, std::FILE* err);

}  // namespace pipeline
