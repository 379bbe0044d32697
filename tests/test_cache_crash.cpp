// The feature cache under crashes, corruption, concurrency and an unusable directory, with
// real `pipe run` processes: nothing computed is lost or read torn, and results never change.
#include <catch2/catch.hpp>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <thread>

#include <fmt/format.h>
#include <yaml-cpp/yaml.h>

#include "cache_store.h"
#include "process.h"

namespace fs = std::filesystem;
using namespace pipeline::test;

namespace {

const std::string kPipe = std::string(PIPE_BINARY_DIR) + "/pipe";
const std::string kGraph = std::string(PIPE_SOURCE_DIR) + "/graphs/cached.yaml";

std::vector<std::string> run_args(const fs::path& out) {
  return {kPipe, "run", kGraph, "--set", "data.per_class=[300, 100, 100]", "--set", "train.epochs=2",
          "--no-progress", "--out", out.string()};
}

struct Summary {
  std::string metrics;
  int64_t misses = 0, hits = 0;
};

Summary summary(const fs::path& run) {
  const YAML::Node s = YAML::LoadFile((run / "summary.json").string());
  Summary out;
  for (const char* k : {"train_loss", "val_acc", "best_val_acc", "test_acc", "test_loss"})
    out.metrics += s[k].as<std::string>() + " ";
  out.misses = s["cache"]["misses"].as<int64_t>();
  out.hits = s["cache"]["hits"].as<int64_t>();
  return out;
}

// Every complete entry in the cache opens and verifies.
void check_entries_sound(const fs::path& cache) {
  pipeline::FeatureCache store(cache.string());
  for (const auto& e : store.list()) {
    INFO(e.path);
    CHECK(store.open(e.fingerprint, e.split) != nullptr);
  }
}

}  // namespace

TEST_CASE("the cache survives SIGKILL, corruption and concurrent runs, and results never change") {
  const fs::path tmp = fs::temp_directory_path() / fmt::format("pipe-cache-crash-{}", ::getpid());
  fs::remove_all(tmp);
  fs::create_directories(tmp);
  // 600 + 200 + 200 images extracted once.
  const int64_t all = 1000;

  Child ref = spawn(run_args(tmp / "ref"), (tmp / "cache-ref").string());
  REQUIRE(finish(ref) == 0);
  const Summary clean = summary(tmp / "ref");
  CHECK(clean.misses == all);

  const fs::path cache = tmp / "cache";
  for (int delay_ms : {150, 500, 900, 1400}) {
    INFO("killed after " << delay_ms << " ms");
    Child c = spawn(run_args(tmp / fmt::format("killed{}", delay_ms)), cache.string());
    std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms));
    ::kill(c.pid, SIGKILL);
    finish(c);
    check_entries_sound(cache);
  }
  {  // and once exactly while a split is being written: as soon as a temp file appears
    Child c = spawn(run_args(tmp / "killed-writing"), cache.string());
    bool seen = false;
    for (int i = 0; i < 4000 && !seen; ++i) {
      std::error_code ec;
      for (const auto& e : fs::recursive_directory_iterator(cache, ec))
        seen |= e.path().filename().string().find(".npy.tmp.") != std::string::npos;
      if (!seen) std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    CHECK(seen);
    ::kill(c.pid, SIGKILL);
    finish(c);
    check_entries_sound(cache);
  }
  Child resumed = spawn(run_args(tmp / "after"), cache.string());
  REQUIRE(finish(resumed) == 0);
  const Summary after = summary(tmp / "after");
  CHECK(after.metrics == clean.metrics);
  check_entries_sound(cache);
  // No temp files left behind: the completed run removed those of the killed writers.
  for (const auto& e : fs::recursive_directory_iterator(cache))
    CHECK(e.path().filename().string().find(".tmp") == std::string::npos);

  Child warm = spawn(run_args(tmp / "warm"), cache.string());
  REQUIRE(finish(warm) == 0);
  CHECK(summary(tmp / "warm").misses == 0);
  CHECK(summary(tmp / "warm").metrics == clean.metrics);

  // A flipped byte in a cached split is detected, reported and recomputed.
  {
    fs::path npy;
    for (const auto& e : fs::recursive_directory_iterator(cache))
      if (e.path().filename() == "train.npy") npy = e.path();
    REQUIRE(!npy.empty());
    std::fstream f(npy, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(static_cast<std::streamoff>(fs::file_size(npy) / 2));
    f.put('\x7f');
    f.close();
    Child c = spawn(run_args(tmp / "corrupt"), cache.string());
    std::string err;
    REQUIRE(finish(c, &err) == 0);
    CHECK_THAT(err, Catch::Contains(npy.string()));
    const Summary s = summary(tmp / "corrupt");
    CHECK(s.misses == 600);
    CHECK(s.metrics == clean.metrics);
  }

  // Two runs at once on one fresh cache: both succeed, each entry is computed once.
  {
    const fs::path shared = tmp / "cache-shared";
    Child a = spawn(run_args(tmp / "a"), shared.string());
    Child b = spawn(run_args(tmp / "b"), shared.string());
    CHECK(finish(a) == 0);
    CHECK(finish(b) == 0);
    const Summary sa = summary(tmp / "a"), sb = summary(tmp / "b");
    CHECK(sa.misses + sb.misses == all);
    CHECK(sa.metrics == clean.metrics);
    CHECK(sb.metrics == clean.metrics);
  }

  // A cache directory that cannot be created: exit 1, naming it.
  {
    std::ofstream(tmp / "a-file") << "x";
    const fs::path bad = tmp / "a-file" / "cache";
    Child c = spawn(run_args(tmp / "nocache"), bad.string());
    std::string err;
    CHECK(finish(c, &err) == 1);
    CHECK_THAT(err, Catch::Contains("pipe: error:") && Catch::Contains((tmp / "a-file").string()));
  }
  fs::remove_all(tmp);
}
