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

struct TrainSpec {
  int epochs = 10;
  int batch = 20;
  uint64_t seed = 1;
  int in_flight = 256;  // cap on samples between the source and the sink
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

// Applies "a.b.c=VALUE" (VALUE parsed as YAML) to `doc`. Returns false with a diagnostic
// when the path cannot be set.
bool apply_override(YAML::Node& doc, const std::string& assignment, Diagnostics& diag);

// Parses and validates. Returns a spec; check diag.ok() before using it.
GraphSpec parse_graph(const std::string& text, const std::string& file,
                      const std::vector<std::string>& overrides, const Registry& registry,
                      Diagnostics& diag);
GraphSpec load_graph(const std::string& path, const std::vector<std::string>& overrides,
                     const Registry& registry, Diagnostics& diag);

// Names the plugins a graph file lists, without validating the rest (plugins must be
// loaded before the stages they provide can be validated).
std::vector<std::string> graph_plugins(const std::string& path);

}  // namespace pipeline
