// Graph spec: a YAML graph file -> a validated, resolved GraphSpec. Every problem found is
// reported (compiler style, 1-based line:col) before anything runs.
#pragma once

#include <memory>
#include <set>
#include <string>
#include <vector>

#include <yaml-cpp/yaml.h>

#include "diagnostics.h"
#include "pipe/registry.h"
#include "plugin_loader.h"

namespace pipeline {

enum class OnError { fail, skip };

struct NodeSpec {
  std::string name;
  std::string stage;
  Params params;
  const StageEntry* entry = nullptr;
  int line = 0, col = 0;
  // Producers, as indices into GraphSpec::nodes (always earlier ones); empty: fed by the
  // source. A join lists its inputs in the order the edges name them.
  std::vector<int> inputs;
};

// Which validation metric a training control watches, and which way is better.
enum class Monitor { val_loss, val_acc };
struct MonitorRule {
  Monitor metric = Monitor::val_acc;
  bool maximize = true;
};

// train.early_stopping (Keras' EarlyStopping): stop when the monitored metric has not
// improved by more than min_delta for `patience` epochs.
struct EarlyStopping {
  bool enabled = false;
  MonitorRule rule{Monitor::val_loss, false};
  int patience = 5;
  double min_delta = 0;
};

// train.lr_schedule: the heads' learning rate per epoch. step: lr * gamma^floor((e-1) /
// step_size); cosine: from lr down to min_lr over the run's epochs; plateau (Keras'
// ReduceLROnPlateau): lr *= factor after `patience` epochs without improvement, not below min_lr.
struct LrSchedule {
  enum class Kind { none, step, cosine, plateau } kind = Kind::none;
  int step_size = 10;
  double gamma = 0.1;
  double min_lr = 0;
  int patience = 3;
  double factor = 0.1;
  MonitorRule rule{Monitor::val_loss, false};
};

struct TrainSpec {
  int epochs = 10;
  int batch = 20;
  uint64_t seed = 1;
  int in_flight = 256;  // cap on samples between the source and the sink
  MonitorRule best;     // train.checkpoint: which epoch's weights the run keeps
  EarlyStopping early_stopping;
  LrSchedule lr_schedule;
};

struct GraphSpec {
  std::string file;  // as given
  std::string name;  // file stem
  std::string dir;   // directory of the file (relative paths resolve against it)
  std::string source;
  Params source_params;
  const StageEntry* source_entry = nullptr;
  std::vector<NodeSpec> nodes;  // topological order (declaration order among peers)
  TrainSpec train;
  std::vector<std::string> plugins;  // resolved against dir
  OnError on_error = OnError::fail;
  std::string output_dir;  // output.dir, "" for the default runs/<graph>-<time>
  YAML::Node resolved;     // the document after --set overrides and defaults

  const NodeSpec* find(const std::string& node) const;
  int index_of(const std::string& node) const;  // -1 when absent
  // Indices of the nodes that take node i's output, in order.
  std::vector<int> consumers(int i) const;
  bool is_chain() const;  // every node has at most one input and one consumer
};

// Checks `map` (a YAML map of parameter values) against `schema`, fills defaults.
// Keys in `skip` (e.g. "stage") are not parameters. `path` is the map's dotted path in the
// document ("nodes.decode"), used to blame --set overrides.
Params parse_params(const StageSchema& schema, const YAML::Node& map, const std::string& path,
                    Diagnostics& diag, const std::set<std::string>& skip = {"stage"});
// Diagnostics for input paths (ParamSpec::must_exist) of the source and `nodes` that do not exist.
void check_input_files(const YAML::Node& doc, const GraphSpec& g, const std::vector<NodeSpec>& nodes, Diagnostics& diag);
// The data source built from `g`'s parameters; what it throws, as an error at `data:`.
void check_source(const YAML::Node& doc, const GraphSpec& g, Diagnostics& diag);
// Makes every ParamSpec::path value absolute against `dir` (resolve_path); "builtin:" names stay.
void resolve_path_params(const StageSchema& schema, Params& params, const std::string& dir);

// Applies "a.b.c=VALUE" (VALUE parsed as YAML) to `doc`. Returns false with a diagnostic
// when the path cannot be set.
bool apply_override(YAML::Node& doc, const std::string& assignment, Diagnostics& diag);

struct GraphOptions {
  // false: the graph's `plugins:` were not loaded (pipe validate --no-plugins, or no consent;
  // docs/security.md). Stages and sources the registry does not know are then warnings
  // ("unknown-but-declared"), not errors, when the graph lists plugins, and the checks that
  // need a stage's contract pass over those nodes.
  bool plugins_loaded = true;
  // Check that input paths (ParamSpec::must_exist: data, weights, models) exist: the CLI does;
  // tests that parse graphs about files they never open need not.
  bool check_files = false;
  // Also build the data source (list its samples: a folder scan, a CSV's rows, the data set's
  // files) and report what it refuses at `data:`: pipe validate and pipe plan, so that a graph
  // they pass does not then fail at `pipe run`'s start. A run builds it once, itself.
  bool check_data = false;
};

// Parses and validates. Returns a spec; check diag.ok() before using it.
GraphSpec parse_graph(const std::string& text, const std::string& file,
                      const std::vector<std::string>& overrides, const Registry& registry,
                      Diagnostics& diag, const GraphOptions& options = {});
GraphSpec load_graph(const std::string& path, const std::vector<std::string>& overrides,
                     const Registry& registry, Diagnostics& diag, const GraphOptions& options = {});

// The plugins a graph file lists, with their positions, without validating the rest (plugins
// must be loaded before the stages they provide can be validated).
std::vector<GraphPlugin> graph_plugins(const std::string& path);

}  // namespace pipeline
