// The stage registry. Built-in stages register through one explicit function
// (pipeline::register_builtin_stages) rather than static initializers, so the linker cannot
// drop them; plugins register through their descriptor's register function.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "pipe/stage.h"

namespace pipeline {

struct StageEntry {
  StageSchema schema;
  StageFactory make;        // for nodes
  SourceFactory make_source;  // for kind == source
  std::string origin;       // "built-in" or the plugin's path
};

class Registry {
 public:
  // The process-wide registry, with the built-in stages already in it.
  static Registry& global();

  // Throws std::runtime_error naming both origins when the name is taken.
  void add(StageSchema schema, StageFactory make);
  void add_source(StageSchema schema, SourceFactory make);

  const StageEntry* find(const std::string& name) const;
  std::vector<const StageEntry*> all() const;  // sorted by name
  std::vector<std::string> names() const;

  // Origin recorded for entries added from now on (the plugin loader sets it).
  void set_origin(std::string origin) { origin_ = std::move(origin); }

 private:
  void insert(StageEntry e);
  std::map<std::string, StageEntry> entries_;
  std::string origin_ = "built-in";
};

// Framework-owned nodes (`cache`), defined under pipeline/.
void register_framework_stages(Registry& r);
// The stage library under stages/ (stages/builtin.cpp).
void register_builtin_stages(Registry& r);

}  // namespace pipeline
