// The child-process helpers the crash, interrupt and bad-input tests rely on (tests/process.h):
// a sanitizer's report is never taken for the failure a test expects, a killed child is told
// from one that exited, and a progress marker is waited for, not slept for.
#include <catch2/catch.hpp>

#include <unistd.h>

#include <filesystem>
#include <fstream>

#include <fmt/format.h>

#include "process.h"

namespace fs = std::filesystem;
using namespace pipeline::test;

namespace {

// Runs `sh -c script` and returns its exit code and stderr, without finish()'s own check.
std::pair<int, std::string> sh(const std::string& script) {
  Child c = spawn({"/bin/sh", "-c", script}, "/nonexistent");
  const std::string err = read_until(c.err, "");
  ::close(c.err);
  int status = 0;
  ::waitpid(c.pid, &status, 0);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status), err};
}

}  // namespace

TEST_CASE("a sanitizer's exit or report is never the failure a test expects") {
  // What each runtime prints (first lines of real reports) and the status sanitize.sh gives it.
  const std::vector<std::string> reports = {
      "==123==ERROR: AddressSanitizer: heap-buffer-overflow on address 0x602000000014",
      "==123==ERROR: LeakSanitizer: detected memory leaks",
      "pipeline/src/x.cpp:10:5: runtime error: signed integer overflow: 2147483647 + 1",
      "WARNING: ThreadSanitizer: data race (pid=123)",
  };
  for (const std::string& r : reports) {
    INFO(r);
    // A child that prints a report and exits 1, as if pipe had failed on its own.
    const auto [code, err] = sh(fmt::format("echo 'pipe: error: x' >&2; echo '{}' >&2; exit 1", r));
    CHECK(code == 1);
    CHECK(sanitizer_report(code, err) != "");
  }
  CHECK(sanitizer_report(kSanitizerExit, "") != "");  // halt_on_error with the report elsewhere
  // pipe's own failures are not reports.
  const auto [code, err] = sh("echo \"pipe: error: cannot write /x/train.npy: No space left on device\" >&2; exit 1");
  CHECK(code == 1);
  CHECK(sanitizer_report(code, err) == "");
  CHECK(sanitizer_report(2, "graph.yaml:3:5: error: unknown stage 'decod'") == "");
  CHECK(sanitizer_report(130, "pipe: interrupted") == "");
}

TEST_CASE("finish_killed tells a child killed by the test from one that exited, and markers are waited for") {
  const fs::path dir = fs::temp_directory_path() / fmt::format("pipe-test-process-{}", ::getpid());
  fs::remove_all(dir);
  fs::create_directories(dir);
  // The child writes a marker file, then waits to be killed.
  Child c = spawn({"/bin/sh", "-c", fmt::format("echo started > '{}/marker.tmp.1'; exec sleep 600", dir.string())},
                  "/nonexistent");
  REQUIRE(wait_until(c.pid, [&] { return !files_named(dir, ".tmp.").empty(); }));
  CHECK(running(c.pid));
  ::kill(c.pid, SIGKILL);
  finish_killed(c);
  // A child that exits on its own is no longer running, and wait_until gives up on it.
  Child quick = spawn({"/bin/sh", "-c", "exit 3"}, "/nonexistent");
  CHECK_FALSE(wait_until(quick.pid, [] { return false; }));
  CHECK_FALSE(running(quick.pid));
  CHECK(finish(quick) == 3);
  fs::remove_all(dir);
}
