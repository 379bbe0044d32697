// Declaring a stage: typed parameters, declared once, and a schema builder.
//
// A parameter is a typed handle: its declaration (name, default, range or choices, one-line
// doc) goes into the stage's schema, which the validator, `pipe stages` and docs/stages.md
// read, and the stage's constructor reads the validated value back through the same handle.
// A choice maps its names to C++ values (an enum) in that one declaration:
//
//   enum class Filter { nearest, bilinear };
//   const auto kSize = param::integers("size", {32, 32}, "output [height, width]").range(1, 4096).length(2);
//   const auto kFilter = param::choice("filter", {{"nearest", Filter::nearest},
//                                                 {"bilinear", Filter::bilinear}},
//                                      Filter::bilinear, "resize filter");
//   MyStage(const Params& p) : size_(p.get(kSize)), filter_(p.get(kFilter)) {}
//
//   r.add<MyStage>(Schema("my_stage", "One paragraph for pipe stages.")
//                      .consumes(Payload::image).produces(Payload::image)
//                      .param(kSize).param(kFilter)
//                      .example("{stage: my_stage, size: [64, 64]}"));
//
// The schema has no kind: Registry::add<MyStage> takes it from MyStage's base class
// (pipe/registry.h).
#pragma once

#include <algorithm>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "pipe/params.h"
#include "pipe/stage.h"

namespace pipeline {

class Registry;

namespace detail {
template <typename T> struct param_type;  // the ParamType of each C++ value type
template <> struct param_type<int64_t> { static constexpr ParamType value = ParamType::integer; };
template <> struct param_type<double> { static constexpr ParamType value = ParamType::number; };
template <> struct param_type<bool> { static constexpr ParamType value = ParamType::boolean; };
template <> struct param_type<std::string> { static constexpr ParamType value = ParamType::string; };
template <> struct param_type<std::vector<int64_t>> { static constexpr ParamType value = ParamType::integer_list; };
template <> struct param_type<std::vector<double>> { static constexpr ParamType value = ParamType::number_list; };
template <> struct param_type<std::vector<std::string>> { static constexpr ParamType value = ParamType::string_list; };
}  // namespace detail

namespace param {
// Marks a parameter without a default: a graph must give it. (Not constructible from a
// braced list, so that list defaults such as {} or {1, 2} are never ambiguous with it.)
struct Required {
  enum class Key { key };
  constexpr explicit Required(Key) {}
};
inline constexpr Required required{Required::Key::key};
}  // namespace param

// A declared parameter whose validated value is a T (int64_t, double, bool, std::string, or a
// std::vector of int64_t, double or std::string). Make one with param::integer(...) etc.;
// refinements return a refined copy, so a declaration is one expression.
template <typename T>
class Param {
 public:
  using value_type = T;
  static constexpr bool numeric = std::is_same_v<T, int64_t> || std::is_same_v<T, double> ||
                                  std::is_same_v<T, std::vector<int64_t>> ||
                                  std::is_same_v<T, std::vector<double>>;
  static constexpr bool textual = std::is_same_v<T, std::string> || std::is_same_v<T, std::vector<std::string>>;
  static constexpr bool list = detail::param_type<T>::value == ParamType::integer_list ||
                               detail::param_type<T>::value == ParamType::number_list ||
                               detail::param_type<T>::value == ParamType::string_list;

  Param(std::string name, std::optional<T> def, std::string doc) {
    spec_.name = std::move(name);
    spec_.type = detail::param_type<T>::value;
    spec_.doc = std::move(doc);
    if (def) spec_.default_value = ParamValue{std::move(*def)};
  }

  // Numbers and numeric lists (each element): the value must lie in [lo, hi].
  Param range(double lo, double hi) const { return min(lo).max(hi); }
  Param min(double lo) const {
    static_assert(numeric, "min/max/range apply to integer, number and their lists");
    Param p = *this;
    p.spec_.min = lo;
    return p;
  }
  Param max(double hi) const {
    static_assert(numeric, "min/max/range apply to integer, number and their lists");
    Param p = *this;
    p.spec_.max = hi;
    return p;
  }
  // Lists: exactly n elements.
  Param length(int n) const {
    static_assert(list, "length applies to lists");
    Param p = *this;
    p.spec_.list_size = n;
    return p;
  }
  // Strings and string lists (each element): one of these names. To turn the name into a
  // C++ value, declare a param::choice instead.
  Param one_of(std::vector<std::string> names) const {
    static_assert(textual, "one_of applies to string and string lists");
    Param p = *this;
    p.spec_.choices = std::move(names);
    return p;
  }

  // Strings: a file or directory (ParamSpec::path); `must_exist` for inputs (data, weights).
  Param path(bool must_exist = false) const {
    static_assert(std::is_same_v<T, std::string>, "path applies to strings");
    Param p = *this;
    p.spec_.path = true;
    p.spec_.must_exist = must_exist;
    return p;
  }

  const ParamSpec& spec() const { return spec_; }
  const std::string& name() const { return spec_.name; }
  // The validated value (Params::get calls this).
  T read(const Params& p) const {
    if constexpr (std::is_same_v<T, int64_t>) return p.integer(name());
    else if constexpr (std::is_same_v<T, double>) return p.number(name());
    else if constexpr (std::is_same_v<T, bool>) return p.boolean(name());
    else if constexpr (std::is_same_v<T, std::string>) return p.string(name());
    else if constexpr (std::is_same_v<T, std::vector<int64_t>>) return p.integers(name());
    else if constexpr (std::is_same_v<T, std::vector<double>>) return p.numbers(name());
    else return p.strings(name());
  }

 private:
  ParamSpec spec_;
};

// A string parameter with a fixed set of names, each mapped to a C++ value (usually an enum
// class): users write the name, the stage gets the value. The schema lists the names in
// declaration order.
template <typename E>
class Choice {
 public:
  using value_type = E;
  using Table = std::vector<std::pair<std::string, E>>;

  Choice(std::string name, Table table, std::optional<E> def, std::string doc) : table_(std::move(table)) {
    spec_.name = std::move(name);
    spec_.type = ParamType::string;
    spec_.doc = std::move(doc);
    for (const auto& entry : table_) spec_.choices.push_back(entry.first);
    // A default that is in no entry leaves "" as the default, which Schema::param refuses.
    if (def) spec_.default_value = ParamValue{name_of(*def)};
  }

  const ParamSpec& spec() const { return spec_; }
  const std::string& name() const { return spec_.name; }
  const Table& table() const { return table_; }
  // The value of the validated name (Params::get calls this).
  E read(const Params& p) const {
    const std::string& s = p.string(name());
    for (const auto& entry : table_)
      if (entry.first == s) return entry.second;
    throw std::logic_error("parameter '" + name() + "' has the undeclared value '" + s + "'");
  }
  // The name of a value ("" when none), e.g. for messages.
  std::string name_of(const E& value) const {
    for (const auto& entry : table_)
      if (entry.second == value) return entry.first;
    return {};
  }

 private:
  ParamSpec spec_;
  Table table_;
};

// The declarations: (name, default or param::required, one-line doc), then refinements.
namespace param {
inline Param<int64_t> integer(std::string name, int64_t def, std::string doc) {
  return {std::move(name), def, std::move(doc)};
}
inline Param<int64_t> integer(std::string name, Required, std::string doc) {
  return {std::move(name), std::nullopt, std::move(doc)};
}
inline Param<double> number(std::string name, double def, std::string doc) {
  return {std::move(name), def, std::move(doc)};
}
inline Param<double> number(std::string name, Required, std::string doc) {
  return {std::move(name), std::nullopt, std::move(doc)};
}
inline Param<bool> boolean(std::string name, bool def, std::string doc) {
  return {std::move(name), def, std::move(doc)};
}
inline Param<bool> boolean(std::string name, Required, std::string doc) {
  return {std::move(name), std::nullopt, std::move(doc)};
}
inline Param<std::string> string(std::string name, std::string def, std::string doc) {
  return {std::move(name), std::move(def), std::move(doc)};
}
inline Param<std::string> string(std::string name, Required, std::string doc) {
  return {std::move(name), std::nullopt, std::move(doc)};
}
inline Param<std::vector<int64_t>> integers(std::string name, std::vector<int64_t> def, std::string doc) {
  return {std::move(name), std::move(def), std::move(doc)};
}
inline Param<std::vector<int64_t>> integers(std::string name, Required, std::string doc) {
  return {std::move(name), std::nullopt, std::move(doc)};
}
inline Param<std::vector<double>> numbers(std::string name, std::vector<double> def, std::string doc) {
  return {std::move(name), std::move(def), std::move(doc)};
}
inline Param<std::vector<double>> numbers(std::string name, Required, std::string doc) {
  return {std::move(name), std::nullopt, std::move(doc)};
}
inline Param<std::vector<std::string>> strings(std::string name, std::vector<std::string> def, std::string doc) {
  return {std::move(name), std::move(def), std::move(doc)};
}
inline Param<std::vector<std::string>> strings(std::string name, Required, std::string doc) {
  return {std::move(name), std::nullopt, std::move(doc)};
}
// choice("filter", {{"nearest", Filter::nearest}, {"bilinear", Filter::bilinear}}, Filter::bilinear, "doc")
template <typename E>
Choice<E> choice(std::string name, typename Choice<E>::Table table, E def, std::string doc) {
  return {std::move(name), std::move(table), std::move(def), std::move(doc)};
}
template <typename E>
Choice<E> choice(std::string name, typename Choice<E>::Table table, Required, std::string doc) {
  return {std::move(name), std::move(table), std::nullopt, std::move(doc)};
}
}  // namespace param

// What a stage is, except its kind: Registry::add<T> takes the kind from T's base class
// (MapStage, BatchStage, JoinStage, SinkStage; sources: Registry::add_source<T>).
class Schema {
 public:
  // `doc`: one paragraph, shown by `pipe stages` and docs/stages.md.
  Schema(std::string name, std::string doc) {
    s_.name = std::move(name);
    s_.doc = std::move(doc);
  }

  Schema& consumes(Payload p) { s_.consumes = p; return *this; }
  Schema& produces(Payload p) { s_.produces = p; return *this; }
  // Map and join stages: called for one sample at a time (default: concurrently, so
  // process must be thread-safe). Batch stages and sinks are always serial.
  Schema& serial() { serial_ = true; return *this; }
  // Draws from the per-sample stream; runs on the training split only.
  Schema& random() { s_.random = true; return *this; }
  // Owns a device (the conv base): shown by `pipe stages`.
  Schema& device() { s_.has_device = true; return *this; }
  // Sinks: takes training passes only (e.g. `preview`).
  Schema& train_only() { s_.train_only = true; return *this; }
  // An example YAML node, as a user writes it in a graph.
  Schema& example(std::string yaml) { s_.example = std::move(yaml); return *this; }

  // Adds a declared parameter (Param or Choice), in the order `pipe stages` lists them.
  // Throws std::logic_error for a declaration that contradicts itself (a default out of its
  // range, choices or length; a name declared twice): a bug in the stage, found when it
  // registers.
  template <typename P>
  Schema& param(const P& p) {
    check(p.spec());
    s_.params.push_back(p.spec());
    return *this;
  }

  const std::string& name() const { return s_.name; }

 private:
  friend class Registry;

  // The schema a registry keeps, with the kind registration found.
  StageSchema with_kind(StageKind kind) const {
    StageSchema s = s_;
    s.kind = kind;
    const bool always_serial = kind == StageKind::batch_map || kind == StageKind::sink ||
                               kind == StageKind::cache;
    s.concurrency = serial_ || always_serial ? Concurrency::serial : Concurrency::parallel;
    if (s.train_only && kind != StageKind::sink)
      throw std::logic_error("stage '" + s.name + "': train_only() is for sinks");
    return s;
  }

  void check(const ParamSpec& p) const {
    const auto fail = [&](const std::string& why) {
      throw std::logic_error("stage '" + s_.name + "', parameter '" + p.name + "': " + why);
    };
    if (s_.find(p.name)) fail("declared twice");
    if (!p.default_value) return;
    std::vector<double> nums;
    std::vector<std::string> names;
    size_t size = 1;
    if (auto* i = std::get_if<int64_t>(&*p.default_value)) nums = {static_cast<double>(*i)};
    if (auto* d = std::get_if<double>(&*p.default_value)) nums = {*d};
    if (auto* s = std::get_if<std::string>(&*p.default_value)) names = {*s};
    if (auto* l = std::get_if<std::vector<int64_t>>(&*p.default_value)) {
      nums.assign(l->begin(), l->end());
      size = l->size();
    }
    if (auto* l = std::get_if<std::vector<double>>(&*p.default_value)) {
      nums = *l;
      size = l->size();
    }
    if (auto* l = std::get_if<std::vector<std::string>>(&*p.default_value)) {
      names = *l;
      size = l->size();
    }
    if (p.list_size >= 0 && size != static_cast<size_t>(p.list_size)) fail("the default has the wrong length");
    for (double v : nums)
      if ((p.min && v < *p.min) || (p.max && v > *p.max)) fail("the default is out of range");
    if (!p.choices.empty())
      for (const std::string& n : names)
        if (std::find(p.choices.begin(), p.choices.end(), n) == p.choices.end())
          fail("the default is not one of the choices");
  }

  StageSchema s_;
  bool serial_ = false;
};

}  // namespace pipeline
