// The stage registry. Built-in stages register through one explicit function
// (pipeline::register_builtin_stages) rather than static initializers, so the linker cannot
// drop them; plugins register through their descriptor's register function.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "pipe/schema.h"
#include "pipe/stage.h"

namespace pipeline {

struct StageEntry {
  StageSchema schema;
  StageFactory make;        // for nodes
  SourceFactory make_source;  // for kind == source
  std::string origin;       // "built-in" or the plugin's path
};

// The kind of a stage class, from its base class (checked at compile time).
template <typename T>
constexpr StageKind stage_kind_of() {
  static_assert(std::is_base_of_v<MapStage, T> + std::is_base_of_v<BatchStage, T> +
                        std::is_base_of_v<JoinStage, T> + std::is_base_of_v<SinkStage, T> +
                        std::is_base_of_v<CacheStage, T> == 1,
                "a stage class derives from exactly one of MapStage, BatchStage, JoinStage, SinkStage");
  if constexpr (std::is_base_of_v<MapStage, T>) return StageKind::map;
  else if constexpr (std::is_base_of_v<BatchStage, T>) return StageKind::batch_map;
  else if constexpr (std::is_base_of_v<JoinStage, T>) return StageKind::join;
  else if constexpr (std::is_base_of_v<SinkStage, T>) return StageKind::sink;
  else return StageKind::cache;
}

class Registry {
 public:
  // The process-wide registry, with the built-in stages already in it.
  static Registry& global();

  // Registers stage class T under schema.name(). The kind comes from T's base class:
  // MapStage -> map, BatchStage -> batch_map, JoinStage -> join, SinkStage -> sink.
  // Without a factory, each node gets T(params, context), T(params) or T(), whichever T has.
  // Throws std::runtime_error naming both origins when the name is taken.
  template <typename T>
  void add(const Schema& schema) {
    add<T>(schema, [](const Params& p, [[maybe_unused]] const StageContext& ctx) -> std::unique_ptr<T> {
      if constexpr (std::is_constructible_v<T, const Params&, const StageContext&>) {
        return std::make_unique<T>(p, ctx);
      } else if constexpr (std::is_constructible_v<T, const Params&>) {
        return std::make_unique<T>(p);
      } else {
        static_assert(std::is_default_constructible_v<T>,
                      "add<T>(schema): T has no constructor (params, context), (params) or (); "
                      "pass a factory: add<T>(schema, make)");
        return std::make_unique<T>();
      }
    });
  }
  // The same with a factory: (const Params&, const StageContext&) -> std::unique_ptr<T or a
  // class derived from T>.
  template <typename T, typename Factory>
  void add(const Schema& schema, Factory make) {
    constexpr StageKind kind = stage_kind_of<T>();
    using Made = std::invoke_result_t<Factory&, const Params&, const StageContext&>;
    static_assert(std::is_convertible_v<Made, std::unique_ptr<T>>,
                  "add<T>(schema, make): make must return a std::unique_ptr to T or to a class derived from T");
    add(schema.with_kind(kind), StageFactory(std::move(make)));
  }
  // A `data:` source: T derives from Source and is built from (params, context).
  template <typename T>
  void add_source(const Schema& schema) {
    static_assert(std::is_base_of_v<Source, T>, "add_source<T>: T must derive from pipeline::Source");
    static_assert(std::is_constructible_v<T, const Params&, const SourceContext&>,
                  "add_source<T>: T needs a constructor T(const Params&, const SourceContext&)");
    add_source(schema.with_kind(StageKind::source),
               [](const Params& p, const SourceContext& ctx) -> std::unique_ptr<Source> {
                 return std::make_unique<T>(p, ctx);
               });
  }

  // Untyped registration (the kind is whatever schema.kind says), kept for plugins written
  // before pipe/schema.h. Throws std::runtime_error naming both origins when the name is taken.
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
