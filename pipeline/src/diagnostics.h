// Compiler-style diagnostics: FILE:LINE:COL: error: message (1-based line and column).
#pragma once

#include <string>
#include <vector>

namespace YAML { class Node; }

namespace pipe {

struct Diagnostic {
  std::string file;
  int line = 0;  // 1-based; 0 when unknown
  int col = 0;
  std::string message;
  std::string str() const;  // "file:line:col: error: message"
};

class Diagnostics {
 public:
  explicit Diagnostics(std::string file = "<input>") : file_(std::move(file)) {}
  void error(const YAML::Node& at, std::string message);
  void error(int line, int col, std::string message);
  void error_in(std::string file, int line, int col, std::string message);
  bool ok() const { return items_.empty(); }
  const std::vector<Diagnostic>& items() const { return items_; }
  std::string str() const;  // all, one per line
  const std::string& file() const { return file_; }

 private:
  std::string file_;
  std::vector<Diagnostic> items_;
};

// The closest candidate within a small edit distance, or "".
std::string did_you_mean(const std::string& word, const std::vector<std::string>& candidates);

}  // namespace pipe
