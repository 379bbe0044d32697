// `pipe graph GRAPH --png FILE`: the DOT text drawn by Graphviz's `dot` (a separate program,
// found on PATH; Debian's package graphviz).
#pragma once

#include <string>

namespace pipeline {

struct DotRender {
  int exit_code = 0;  // 0 drawn; 2 `dot` is not installed; 1 `dot` failed
  std::string error;  // why not, for the user (names the package when `dot` is missing)
};

// The executable `name` on $PATH ("" when none).
std::string find_on_path(const std::string& name);
// Writes `dot_text` to a temp file and runs `dot -Tpng -o png_file` on it; dot's own messages
// go to stderr.
DotRender render_dot_png(const std::string& dot_text, const std::string& png_file);

}  // namespace pipeline
