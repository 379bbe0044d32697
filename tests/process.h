// Running the real `pipe` binary from tests: spawn with a given cache dir, read its stderr,
// signal it, collect its exit code.
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

namespace pipeline::test {

struct Child {
  pid_t pid = -1;
  int err = -1;  // read end of the child's stderr
};

// `in_child` runs in the forked child just before exec (drop capabilities, set rlimits): only
// async-signal-safe calls there, since the parent may have had other threads.
inline Child spawn(const std::vector<std::string>& args, const std::string& cache,
                   const std::function<void()>& in_child = {}) {
  int fds[2];
  REQUIRE(::pipe(fds) == 0);
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    ::dup2(fds[1], STDERR_FILENO);
    const int devnull = ::open("/dev/null", O_WRONLY);
    ::dup2(devnull, STDOUT_FILENO);
    ::close(fds[0]);
    ::setenv("PIPE_CACHE_DIR", cache.c_str(), 1);
    if (in_child) in_child();
    std::vector<char*> argv;
    for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  ::close(fds[1]);
  return {pid, fds[0]};
}

// Reads the child's stderr until `pattern` shows up (or EOF); returns everything read.
inline std::string read_until(int fd, const std::string& pattern) {
  std::string out;
  char buf[4096];
  while (pattern.empty() || out.find(pattern) == std::string::npos) {
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n <= 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  return out;
}

// Drains stderr to EOF (so the child never blocks on a full pipe) and returns the exit code
// (128 + signal when killed); `err_text` receives the rest of stderr, `raw` the wait status
// (to tell exit(130) from death by SIGINT).
inline int finish(Child& c, std::string* err_text = nullptr, int* raw = nullptr) {
  const std::string rest = read_until(c.err, "");
  if (err_text) *err_text += rest;
  ::close(c.err);
  int status = 0;
  ::waitpid(c.pid, &status, 0);
  if (raw) *raw = status;
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

}  // namespace pipeline::test
