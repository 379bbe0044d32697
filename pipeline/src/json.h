// A small JSON writer for run outputs and cache manifests (read back with yaml-cpp, whose
// parser accepts JSON). Builds a value tree so that callers can nest freely.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <variant>
#include <vector>

namespace pipeline {

class Json {
 public:
  using Object = std::vector<std::pair<std::string, Json>>;  // keeps insertion order
  using Array = std::vector<Json>;

  Json() : v_(nullptr) {}
  Json(std::nullptr_t) : v_(nullptr) {}
  Json(bool b) : v_(b) {}
  Json(int i) : v_(static_cast<int64_t>(i)) {}
  Json(int64_t i) : v_(i) {}
  Json(uint64_t i) : v_(static_cast<int64_t>(i)) {}
  Json(double d) : v_(d) {}
  Json(const char* s) : v_(std::string(s)) {}
  Json(std::string s) : v_(std::move(s)) {}
  Json(Array a) : v_(std::move(a)) {}
  Json(Object o) : v_(std::move(o)) {}

  static Json object() { return Json(Object{}); }
  static Json array() { return Json(Array{}); }

  // Object: sets (or replaces) key. Array: appends.
  Json& set(const std::string& key, Json value);
  Json& push(Json value);

  // Compact when indent < 0; otherwise pretty with that many spaces.
  std::string dump(int indent = -1) const;

 private:
  void dump_to(std::string& out, int indent, int depth) const;
  std::variant<std::nullptr_t, bool, int64_t, double, std::string, Array, Object> v_;
};

std::string json_escape(const std::string& s);

// Writes `content` to `path` atomically: a temp file in the same directory, fsync, rename.
void write_file_atomic(const std::string& path, const std::string& content);
// Writes `content` to `path` (no fsync, no rename). Every write and the close are checked: on
// failure (a full disk) the partial file is removed and std::runtime_error names the file and
// the OS reason.
void write_file(const std::string& path, const std::string& content);

}  // namespace pipeline
