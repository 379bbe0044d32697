// Compiler-style diagnostics: FILE:LINE:COL: error: message (1-based line and column).
// Warnings are printed the same way and do not fail validation.
#pragma once

#include <string>
#include <vector>

namespace YAML { class Node; }

namespace pipeline {

struct Diagnostic {
  std::string file;
  int line = 0;  // 1-based; 0 when unknown
  int col = 0;
  std::string message;
  bool warning = false;
  std::string str() const;  // "file:line:col: error: message" (or "warning:")
};

class Diagnostics {
 public:
  explicit Diagnostics(std::string file = "<input>") : file_(std::move(file)) {}
  void error(const YAML::Node& at, std::string message);
  // As above, for the value at dotted `path` (e.g. "nodes.decode.size"): when a --set
  // override wrote that path (or a parent of it), the diagnostic names the override instead
  // of a file position.
  void error(const YAML::Node& at, const std::string& path, std::string message);
  void set_overrides(std::vector<std::string> assignments) { overrides_ = std::move(assignments); }
  void error(int line, int col, std::string message);
  void error_in(std::string file, int line, int col, std::string message);
  void warning(const YAML::Node& at, std::string message);
  void warning(int line, int col, std::string message);
  bool ok() const { return errors() == 0; }
  size_t errors() const;
  const std::vector<Diagnostic>& items() const { return items_; }
  std::string str() const;  // all, one per line, warnings included
  const std::string& file() const { return file_; }

 private:
  std::string file_;
  std::vector<Diagnostic> items_;
  std::vector<std::string> overrides_;
};

// The closest candidate within a small edit distance, or "".
std::string did_you_mean(const std::string& word, const std::vector<std::string>& candidates);

}  // namespace pipeline
