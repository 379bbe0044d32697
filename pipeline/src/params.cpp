#include "pipe/params.h"

#include <stdexcept>

#include <fmt/format.h>

namespace pipeline {

const char* param_type_name(ParamType t) {
  switch (t) {
    case ParamType::integer: return "integer";
    case ParamType::number: return "number";
    case ParamType::boolean: return "boolean";
    case ParamType::string: return "string";
    case ParamType::integer_list: return "list of integers";
    case ParamType::number_list: return "list of numbers";
    case ParamType::string_list: return "list of strings";
  }
  return "?";
}

namespace {
std::string number_string(double d) {
  std::string s = fmt::format("{}", d);
  return s;
}
}  // namespace

std::string param_value_string(const ParamValue& v) {
  struct V {
    std::string operator()(int64_t i) const { return std::to_string(i); }
    std::string operator()(double d) const { return number_string(d); }
    std::string operator()(bool b) const { return b ? "true" : "false"; }
    std::string operator()(const std::string& s) const { return s; }
    std::string operator()(const std::vector<int64_t>& l) const {
      return fmt::format("[{}]", fmt::join(l, ", "));
    }
    std::string operator()(const std::vector<double>& l) const {
      std::vector<std::string> parts;
      for (double d : l) parts.push_back(number_string(d));
      return fmt::format("[{}]", fmt::join(parts, ", "));
    }
    std::string operator()(const std::vector<std::string>& l) const {
      return fmt::format("[{}]", fmt::join(l, ", "));
    }
  };
  return std::visit(V{}, v);
}

const ParamValue& Params::at(const std::string& name) const {
  auto it = values_.find(name);
  if (it == values_.end())
    throw std::logic_error(fmt::format("stage asked for undeclared parameter '{}'", name));
  return it->second;
}

template <typename T>
static const T& get_as(const Params& p, const std::string& name, const char* want) {
  const ParamValue& v = p.at(name);
  if (auto* t = std::get_if<T>(&v)) return *t;
  throw std::logic_error(fmt::format("parameter '{}' is not a {}", name, want));
}

int64_t Params::integer(const std::string& name) const {
  return get_as<int64_t>(*this, name, "integer");
}
double Params::number(const std::string& name) const {
  const ParamValue& v = at(name);
  if (auto* i = std::get_if<int64_t>(&v)) return static_cast<double>(*i);
  return get_as<double>(*this, name, "number");
}
bool Params::boolean(const std::string& name) const { return get_as<bool>(*this, name, "boolean"); }
const std::string& Params::string(const std::string& name) const {
  return get_as<std::string>(*this, name, "string");
}
std::vector<int64_t> Params::integers(const std::string& name) const {
  return get_as<std::vector<int64_t>>(*this, name, "list of integers");
}
std::vector<double> Params::numbers(const std::string& name) const {
  const ParamValue& v = at(name);
  if (auto* l = std::get_if<std::vector<int64_t>>(&v)) return {l->begin(), l->end()};
  return get_as<std::vector<double>>(*this, name, "list of numbers");
}
const std::vector<std::string>& Params::strings(const std::string& name) const {
  return get_as<std::vector<std::string>>(*this, name, "list of strings");
}

std::string Params::canonical() const {
  std::string out;
  for (const auto& [k, v] : values_) out += fmt::format("{}={};", k, param_value_string(v));
  return out;
}

}  // namespace pipeline
