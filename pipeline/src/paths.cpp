// resolve_path (pipe/stage.h): the one rule for paths written in graph files.
#include <filesystem>

#include "home_dir.h"
#include "pipe/stage.h"

namespace pipeline {

std::string resolve_path(const std::string& path, const std::string& base_dir) {
  namespace fs = std::filesystem;
  if (path.empty()) return path;
  if (path == "~" || path.rfind("~/", 0) == 0) return (fs::path(home_dir()) / path.substr(path.size() > 1 ? 2 : 1)).lexically_normal().string();
  const fs::path p(path);
  if (p.is_absolute() || base_dir.empty()) return p.lexically_normal().string();
  return (fs::path(base_dir) / p).lexically_normal().string();
}

}  // namespace pipeline
