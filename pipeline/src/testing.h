// Helpers for stage unit tests: build a stage or a source from a YAML string through the
// same parameter validation that graph files go through.
#pragma once

#include <memory>
#include <stdexcept>
#include <string>

#include "pipe/registry.h"

namespace pipeline::testing {

// yaml: a node as written in a graph, e.g. "{stage: augment, rotation: 40}".
// Throws std::runtime_error carrying every diagnostic when validation fails.
std::unique_ptr<Stage> make_stage(const std::string& yaml, const std::string& node = "node",
                                  uint64_t seed = 1, const std::string& graph_dir = ".");

template <typename T>
std::unique_ptr<T> make(const std::string& yaml, const std::string& node = "node",
                        uint64_t seed = 1, const std::string& graph_dir = ".") {
  std::unique_ptr<Stage> s = make_stage(yaml, node, seed, graph_dir);
  T* t = dynamic_cast<T*>(s.get());
  if (!t) throw std::runtime_error("stage built from '" + yaml + "' has another kind");
  s.release();
  return std::unique_ptr<T>(t);
}

// yaml: a data block, e.g. "{source: folder, path: /tmp/x}".
std::unique_ptr<Source> make_source(const std::string& yaml, const std::string& graph_dir = ".");

}  // namespace pipeline::testing
