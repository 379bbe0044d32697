#include "pipe/registry.h"

#include <stdexcept>

#include <fmt/format.h>

namespace pipeline {

const char* stage_kind_name(StageKind k) {
  switch (k) {
    case StageKind::source: return "source";
    case StageKind::map: return "per-sample map";
    case StageKind::batch_map: return "per-batch map";
    case StageKind::cache: return "cache";
    case StageKind::sink: return "sink";
    case StageKind::join: return "join (fan-in)";
  }
  return "?";
}

const char* payload_name(Payload p) {
  switch (p) {
    case Payload::any: return "any";
    case Payload::bytes: return "bytes";
    case Payload::image: return "image";
    case Payload::features: return "features";
  }
  return "?";
}

const ParamSpec* StageSchema::find(const std::string& param) const {
  for (const ParamSpec& p : params)
    if (p.name == param) return &p;
  return nullptr;
}

Registry& Registry::global() {
  static Registry* r = [] {
    auto* reg = new Registry();
    register_framework_stages(*reg);
    register_builtin_stages(*reg);
    return reg;
  }();
  return *r;
}

void Registry::insert(StageEntry e) {
  e.origin = origin_;
  auto it = entries_.find(e.schema.name);
  if (it != entries_.end())
    throw std::runtime_error(fmt::format("stage '{}' from {} is already registered by {}",
                                         e.schema.name, e.origin, it->second.origin));
  const std::string name = e.schema.name;
  entries_.emplace(name, std::move(e));
}

void Registry::add(StageSchema schema, StageFactory make) {
  if (schema.kind == StageKind::source)
    throw std::logic_error(fmt::format("stage '{}': use add_source for sources", schema.name));
  StageEntry e;
  e.schema = std::move(schema);
  e.make = std::move(make);
  insert(std::move(e));
}

void Registry::add_source(StageSchema schema, SourceFactory make) {
  schema.kind = StageKind::source;
  StageEntry e;
  e.schema = std::move(schema);
  e.make_source = std::move(make);
  insert(std::move(e));
}

const StageEntry* Registry::find(const std::string& name) const {
  auto it = entries_.find(name);
  return it == entries_.end() ? nullptr : &it->second;
}

std::vector<const StageEntry*> Registry::all() const {
  std::vector<const StageEntry*> out;
  for (const auto& [_, e] : entries_) out.push_back(&e);
  return out;
}

std::vector<std::string> Registry::names() const {
  std::vector<std::string> out;
  for (const auto& [n, _] : entries_) out.push_back(n);
  return out;
}

}  // namespace pipeline
