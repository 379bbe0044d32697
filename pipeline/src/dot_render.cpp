#include "dot_render.h"

#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <sstream>
#include <vector>

#include <fmt/format.h>

#include "files.h"

namespace pipeline {

std::string find_on_path(const std::string& name) {
  const char* path = std::getenv("PATH");
  std::istringstream dirs(path ? path : "");
  for (std::string dir; std::getline(dirs, dir, ':');) {
    const std::string candidate = (dir.empty() ? "." : dir) + "/" + name;
    if (::access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  return "";
}

namespace {

// Runs argv (argv[0] an absolute path) and returns its wait status, or -1 when it could not start.
int run_program(const std::vector<std::string>& args) {
  std::vector<char*> argv;
  for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  const pid_t pid = ::fork();
  if (pid < 0) return -1;
  if (pid == 0) {
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0)
    if (errno != EINTR) return -1;
  return status;
}

}  // namespace

DotRender render_dot_png(const std::string& dot_text, const std::string& png_file) {
  const std::string dot = find_on_path("dot");
  if (dot.empty())
    return {2, "Graphviz's `dot` is not installed (not found on PATH): install the package graphviz "
               "(sudo apt-get install graphviz), or draw `pipe graph GRAPH`'s DOT output elsewhere"};
  // A file, not a pipe, feeds dot: a dot that exits early cannot kill pipe with SIGPIPE.
  std::string tmp = (std::filesystem::temp_directory_path() / "pipe-graph-XXXXXX").string();
  const int fd = ::mkstemp(tmp.data());
  if (fd < 0) return {1, fmt::format("cannot create a temp file for dot: {}", std::strerror(errno))};
  ::close(fd);
  DotRender r;
  try {
    write_file(tmp, dot_text);
    const int status = run_program({dot, "-Tpng", "-o", png_file, tmp});
    if (status == -1) r = {1, fmt::format("cannot run {}: {}", dot, std::strerror(errno))};
    else if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
      r = {1, fmt::format("{} failed ({}) drawing {}", dot,
                          WIFEXITED(status) ? fmt::format("exit {}", WEXITSTATUS(status)) : fmt::format("signal {}", WTERMSIG(status)),
                          png_file)};
  } catch (const std::exception& e) {
    r = {1, e.what()};
  }
  ::unlink(tmp.c_str());
  return r;
}

}  // namespace pipeline
