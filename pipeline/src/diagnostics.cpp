#include "diagnostics.h"

#include <algorithm>

#include <fmt/format.h>
#include <yaml-cpp/yaml.h>

namespace pipeline {

std::string Diagnostic::str() const {
  const char* kind = warning ? "warning" : "error";
  if (line > 0) return fmt::format("{}:{}:{}: {}: {}", file, line, col, kind, message);
  return fmt::format("{}: {}: {}", file, kind, message);
}

namespace {
// yaml-cpp marks are 0-based; a null/invalid node has line -1.
std::pair<int, int> position(const YAML::Node& at) {
  const YAML::Mark m = at.IsDefined() ? at.Mark() : YAML::Mark::null_mark();
  return {m.line >= 0 ? m.line + 1 : 0, m.column >= 0 ? m.column + 1 : 0};
}
}  // namespace

void Diagnostics::error(const YAML::Node& at, std::string message) {
  const auto [line, col] = position(at);
  error(line, col, std::move(message));
}

void Diagnostics::warning(const YAML::Node& at, std::string message) {
  const auto [line, col] = position(at);
  warning(line, col, std::move(message));
}

void Diagnostics::warning(int line, int col, std::string message) {
  items_.push_back({file_, line, col, std::move(message), true});
}

size_t Diagnostics::errors() const {
  return static_cast<size_t>(std::count_if(items_.begin(), items_.end(), [](const Diagnostic& d) { return !d.warning; }));
}

void Diagnostics::error(const YAML::Node& at, const std::string& path, std::string message) {
  // Later overrides win, so the last one that covers the path is the one to blame.
  for (auto it = overrides_.rbegin(); it != overrides_.rend(); ++it) {
    const std::string key = it->substr(0, it->find('='));
    const bool covers = path == key || path.rfind(key + ".", 0) == 0;
    // A node the override created has no position in the file.
    const bool created = !at.IsDefined() || at.Mark().line < 0;
    if (covers || (created && key.rfind(path + ".", 0) == 0)) {
      items_.push_back({"--set " + *it, 0, 0, std::move(message)});
      return;
    }
  }
  error(at, std::move(message));
}

void Diagnostics::error(int line, int col, std::string message) {
  items_.push_back({file_, line, col, std::move(message)});
}

void Diagnostics::error_in(std::string file, int line, int col, std::string message) {
  items_.push_back({std::move(file), line, col, std::move(message)});
}

std::string Diagnostics::str() const {
  std::string out;
  for (const Diagnostic& d : items_) out += d.str() + "\n";
  return out;
}

namespace {
size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> prev(b.size() + 1), cur(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) prev[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    cur[0] = i;
    for (size_t j = 1; j <= b.size(); ++j)
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] != b[j - 1])});
    std::swap(prev, cur);
  }
  return prev[b.size()];
}
}  // namespace

std::string did_you_mean(const std::string& word, const std::vector<std::string>& candidates) {
  std::string best;
  size_t best_d = std::max<size_t>(2, word.size() / 3) + 1;
  for (const std::string& c : candidates) {
    const size_t d = edit_distance(word, c);
    if (d < best_d) {
      best_d = d;
      best = c;
    }
  }
  // A one-letter typo of a one-letter name is no evidence of anything.
  return best_d < word.size() ? best : std::string();
}

}  // namespace pipeline
