// Running the real `pipe` binary from tests: spawn with a given cache dir, read its stderr,
// wait for a progress marker, signal it, collect its exit code (never a sanitizer's).
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <thread>
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

// The exit status scripts/sanitize.sh gives every sanitizer report (exitcode=86 in
// ASAN_OPTIONS, UBSAN_OPTIONS and TSAN_OPTIONS): no exit code of pipe's own (0, 1, 2, 130).
constexpr int kSanitizerExit = 86;

// Why the child's end is a sanitizer's, not its own: "" when it is its own. A report is the
// exit status above, or text that only the sanitizer runtimes print ("...Sanitizer" in
// ASan/LSan/TSan/UBSan headers and UBSan's summary, "runtime error:" on each UBSan line).
// Without this, a test that expects a failure (exit 1 or 2) would pass on a sanitizer's exit.
inline std::string sanitizer_report(int code, const std::string& err) {
  if (code == kSanitizerExit) return "exit status 86 (a sanitizer report)";
  for (const char* mark : {"Sanitizer", "runtime error:"})
    if (err.find(mark) != std::string::npos) return std::string("stderr holds '") + mark + "'";
  return "";
}

// Every child's end goes through this: no sanitizer report, whatever exit is expected.
inline void check_no_sanitizer_report(int code, const std::string& err) {
  const std::string why = sanitizer_report(code, err);
  INFO("child exited " << code << "; stderr:\n" << err);
  CHECK(why == "");
}

// Drains stderr to EOF (so the child never blocks on a full pipe) and returns the exit code
// (128 + signal when killed); `err_text` receives the rest of stderr, `raw` the wait status
// (to tell exit(130) from death by SIGINT). Fails the test on a sanitizer report.
inline int finish(Child& c, std::string* err_text = nullptr, int* raw = nullptr) {
  const std::string rest = read_until(c.err, "");
  if (err_text) *err_text += rest;
  ::close(c.err);
  int status = 0;
  ::waitpid(c.pid, &status, 0);
  if (raw) *raw = status;
  const int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  check_no_sanitizer_report(code, err_text ? *err_text : rest);
  return code;
}

// True while the child runs: false once it has exited (a zombie, not yet reaped) or is gone.
inline bool running(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string stat;
  if (!std::getline(in, stat)) return false;
  const size_t at = stat.rfind(") ");
  return at != std::string::npos && at + 2 < stat.size() && stat[at + 2] != 'Z' && stat[at + 2] != 'X';
}

// Waits for a progress marker of the child (`ready`: a file it writes, a size reached),
// polling 1 ms apart, until it shows or the child has exited. Returns ready(). A marker, not a
// sleep: the test acts at a known point of the child's work however fast the machine is.
inline bool wait_until(pid_t pid, const std::function<bool()>& ready) {
  while (!ready()) {
    if (!running(pid)) return ready();
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return true;
}

// Files under `dir` whose name contains `part` (none if `dir` does not exist yet).
inline std::vector<std::filesystem::path> files_named(const std::filesystem::path& dir, const std::string& part) {
  std::vector<std::filesystem::path> out;
  std::error_code ec;
  for (auto it = std::filesystem::recursive_directory_iterator(dir, ec); !ec && it != std::filesystem::end(it);
       it.increment(ec))
    if (it->path().filename().string().find(part) != std::string::npos) out.push_back(it->path());
  return out;
}

// Bytes of `file` that hold written data (allocated blocks): the cache writer sizes its temp
// file up front and fills it row by row, so the file is sparse until rows are written.
inline uintmax_t written_bytes(const std::filesystem::path& file) {
  struct stat st {};
  return ::stat(file.c_str(), &st) == 0 ? static_cast<uintmax_t>(st.st_blocks) * 512 : 0;
}

// Waits for a child killed by the test (SIGKILL after a progress marker) and requires that it
// died of that signal: a child that had already exited on its own was not killed where the
// test meant to kill it. Returns the rest of stderr.
inline std::string finish_killed(Child& c, int sig = SIGKILL) {
  std::string err;
  int raw = 0;
  finish(c, &err, &raw);
  INFO("stderr:\n" << err);
  REQUIRE(WIFSIGNALED(raw));
  REQUIRE(WTERMSIG(raw) == sig);
  return err;
}

}  // namespace pipeline::test
