// Stage parameters: declared once (name, type, default, range, doc) in a stage's schema;
// the graph loader checks user values against the declaration and fills in defaults, so a
// stage only ever sees complete, valid, typed values.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <variant>
#include <vector>

namespace pipeline {

enum class ParamType { integer, number, boolean, string, integer_list, number_list, string_list };
const char* param_type_name(ParamType t);

using ParamValue = std::variant<int64_t, double, bool, std::string, std::vector<int64_t>,
                                std::vector<double>, std::vector<std::string>>;
std::string param_value_string(const ParamValue& v);  // YAML flow form, e.g. [32, 32]

struct ParamSpec {
  std::string name;
  ParamType type = ParamType::number;
  std::string doc;
  std::optional<ParamValue> default_value;  // none: the parameter is required
  std::optional<double> min, max;           // numbers, and each element of numeric lists
  std::vector<std::string> choices;         // strings (and each element of string lists)
  int list_size = -1;                       // exact list length when >= 0
  // A file or directory: a relative value is resolved against the graph file's directory
  // when the graph is loaded (resolve_path), so stages, cache keys and the run's saved
  // graph.yaml all see the absolute path. "" and "builtin:NAME" values are kept as given.
  bool path = false;
  // A path that must exist before a run (data, weights): `pipe validate` and `pipe run` check.
  bool must_exist = false;
};

// Validated parameter values of one node. Getters throw std::logic_error on a name or type
// the schema did not declare: that is a bug in the stage, not a user error.
class Params {
 public:
  void set(const std::string& name, ParamValue v) { values_[name] = std::move(v); }
  bool has(const std::string& name) const { return values_.count(name) != 0; }
  const ParamValue& at(const std::string& name) const;

  int64_t integer(const std::string& name) const;
  double number(const std::string& name) const;  // accepts integers too
  bool boolean(const std::string& name) const;
  const std::string& string(const std::string& name) const;
  std::vector<int64_t> integers(const std::string& name) const;
  std::vector<double> numbers(const std::string& name) const;
  const std::vector<std::string>& strings(const std::string& name) const;
  // The value of a declared parameter (pipe/schema.h), with its declared type: a
  // Param<T> gives a T, a Choice<E> the E its name maps to.
  template <typename Decl>
  typename Decl::value_type get(const Decl& decl) const { return decl.read(*this); }

  const std::map<std::string, ParamValue>& values() const { return values_; }
  // Sorted "name=value;..." form: the node's contribution to cache fingerprints.
  std::string canonical() const;

 private:
  std::map<std::string, ParamValue> values_;
};

}  // namespace pipeline
