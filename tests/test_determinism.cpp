// Every shipped graph (graphs/*.yaml), scaled down with --set, run as users run it (`pipe run`
// processes), each on a cold cache of its own:
//   - at --threads 1, 2 and 4: identical metrics.jsonl (times aside), identical cache files
//     (.npy checksums) and identical model files (head.pt, ...);
//   - interrupted (SIGINT) during epoch 1's extraction on a cold cache, then `pipe run
//     --resume DIR` on the cache it left: the metrics, cache files and model files of the
//     uninterrupted run;
//   - interrupted once epoch 1 is checkpointed, then `pipe run --resume DIR`: the same.
// A graph added to graphs/ without an entry in kGraphs fails the coverage test.
#include <catch2/catch.hpp>

#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <set>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "cache_store.h"
#include "process.h"

namespace fs = std::filesystem;
using namespace pipeline::test;

namespace {

const std::string kPipe = std::string(PIPE_BINARY_DIR) + "/pipe";

struct GraphCase {
  std::vector<std::string> sets;  // beyond the scale-down every graph gets
  // The progress marker of "epoch 1 is extracting": a training cache temp file with rows in
  // it, or (no training features cached) the run's first line, printed as epoch 1 starts.
  std::string temp_file;
};

// Two epochs on 40 / 20 / 20 images per class: small, but every batch size and split is hit.
const std::vector<std::string> kSmall = {"data.per_class=[40, 20, 20]", "train.epochs=2"};

const std::map<std::string, GraphCase> kGraphs = {
    {"cached", {{}, "train.npy.tmp."}},
    {"heads", {{}, "train.npy.tmp."}},
    {"multiscale", {{}, "train.npy.tmp."}},
    {"views", {{"nodes.memo.views=2"}, "train.npy.tmp."}},
    // Regime B caches no training features, and an interrupt during its validation pass is
    // too late (a pass whose samples are all in flight, fewer than train.in_flight, runs to
    // its end, and with it epoch 1): the run's first line is the marker.
    {"augmented", {{}, ""}},
    {"preview", {{"nodes.preview.count=4"}, ""}},
    // 8 classes; trains the base (its out file is set per run, never the shipped model).
    {"pretrain", {{"data.per_class=[16, 8, 0]"}, ""}},
};

struct Outcome {
  std::string metrics;                      // metrics.jsonl without times
  std::map<std::string, std::string> npy;   // cache .npy files (relative path) -> checksum
  std::map<std::string, std::string> models;  // *.pt in the run directory -> checksum
  nlohmann::json summary;
};

// metrics.jsonl with every "seconds" and "images_per_s" removed, at any depth.
std::string metrics_without_times(const fs::path& file) {
  std::function<void(nlohmann::json&)> strip = [&](nlohmann::json& j) {
    if (!j.is_object()) return;
    j.erase("seconds");
    j.erase("images_per_s");
    for (auto& [k, v] : j.items()) strip(v);
  };
  std::ifstream in(file);
  std::string out;
  for (std::string line; std::getline(in, line);) {
    nlohmann::json j = nlohmann::json::parse(line);
    strip(j);
    out += j.dump() + "\n";
  }
  return out;
}

Outcome collect(const fs::path& out, const fs::path& cache) {
  Outcome o;
  o.metrics = metrics_without_times(out / "metrics.jsonl");
  for (const fs::path& f : files_named(cache, ".npy"))
    if (f.extension() == ".npy") o.npy[fs::relative(f, cache).string()] = pipeline::hash_file(f.string());
  for (const auto& e : fs::directory_iterator(out))
    if (e.path().extension() == ".pt") o.models[e.path().filename().string()] = pipeline::hash_file(e.path().string());
  o.summary = nlohmann::json::parse(std::ifstream(out / "summary.json"));
  return o;
}

struct Dirs {
  fs::path root;
  explicit Dirs(const std::string& graph) : root(fs::temp_directory_path() / fmt::format("pipe-determinism-{}-{}", graph, ::getpid())) {
    fs::remove_all(root);
    fs::create_directories(root);
  }
  ~Dirs() { fs::remove_all(root); }
};

std::vector<std::string> run_args(const std::string& graph, const GraphCase& c, const fs::path& out, int threads) {
  std::vector<std::string> args = {kPipe, "run", std::string(PIPE_SOURCE_DIR) + "/graphs/" + graph + ".yaml"};
  std::vector<std::string> sets = kSmall;
  sets.insert(sets.end(), c.sets.begin(), c.sets.end());
  if (graph == "pretrain") sets.push_back(fmt::format("nodes.trainer.out=\"{}\"", (out.parent_path() / (out.filename().string() + "-base.pt")).string()));
  for (const std::string& s : sets) args.insert(args.end(), {"--set", s});
  args.insert(args.end(), {"--threads", std::to_string(threads), "--no-progress", "--out", out.string()});
  return args;
}

void check_same(const Outcome& a, const Outcome& b) {
  CHECK(a.metrics == b.metrics);
  CHECK(a.npy == b.npy);
  CHECK(a.models == b.models);
  for (const char* k : {"val_acc", "best_val_acc", "best_epoch", "test_acc", "test_loss", "train_loss"})
    if (a.summary.contains(k)) CHECK(a.summary.at(k).dump() == b.summary.at(k).dump());
}

// Starts the graph at 2 threads into `out` on `cache`, waits for `marker`, sends SIGINT;
// returns the interrupted run's summary.json after checking it stopped with 130.
nlohmann::json interrupt(const std::string& graph, const GraphCase& c, const fs::path& out, const fs::path& cache,
                         const std::function<bool()>& marker) {
  Child child = spawn(run_args(graph, c, out, 2), cache.string());
  std::string err = read_until(child.err, " samples; ");
  REQUIRE(err.find(" samples; ") != std::string::npos);
  if (marker) REQUIRE(wait_until(child.pid, marker));
  ::kill(child.pid, SIGINT);
  const int code = finish(child, &err);
  INFO(graph << ": the interrupted run's stderr:\n" << err);
  CHECK(code == 130);
  const auto summary = nlohmann::json::parse(std::ifstream(out / "summary.json"));
  CHECK(summary.at("status") == "interrupted");
  return summary;
}

// `pipe run --resume OUT` at 2 threads must end with the results of `ref` (also at 2 threads).
void resume_and_check(const fs::path& out, const fs::path& cache, const Outcome& ref) {
  Child resumed = spawn({kPipe, "run", "--resume", out.string(), "--threads", "2", "--no-progress"}, cache.string());
  std::string err;
  const int code = finish(resumed, &err);
  INFO("the resumed run's stderr:\n" << err);
  REQUIRE(code == 0);
  const Outcome after = collect(out, cache);
  CHECK(after.summary.at("status") == "completed");
  check_same(after, ref);
}

void check_graph(const std::string& graph) {
  REQUIRE(kGraphs.count(graph));
  const GraphCase& c = kGraphs.at(graph);
  Dirs d(graph);
  // 1, 2 and 4 threads, each on a cold cache of its own.
  std::map<int, Outcome> by_threads;
  for (int t : {1, 2, 4}) {
    INFO(graph << " at --threads " << t);
    const fs::path out = d.root / fmt::format("run{}", t), cache = d.root / fmt::format("cache{}", t);
    Child child = spawn(run_args(graph, c, out, t), cache.string());
    REQUIRE(finish(child) == 0);
    by_threads[t] = collect(out, cache);
    CHECK(std::count(by_threads[t].metrics.begin(), by_threads[t].metrics.end(), '\n') == 2);
    CHECK_FALSE(by_threads[t].models.empty());
  }
  const Outcome& ref = by_threads[2];
  {
    INFO(graph << ": --threads 1 vs 2");
    check_same(by_threads[1], ref);
  }
  {
    INFO(graph << ": --threads 4 vs 2");
    check_same(by_threads[4], ref);
  }

  {  // SIGINT during epoch 1's extraction on a cold cache, then `pipe run --resume DIR` on
     // the cache it left: nothing the interrupted extraction left behind is read as a result.
    const fs::path out = d.root / "cut1", cache = d.root / "cache-cut1";
    const auto temp_rows = [&] {
      for (const fs::path& f : files_named(cache, c.temp_file))
        if (written_bytes(f) > 4096) return true;  // rows past the header's block
      return false;
    };
    const auto cut = interrupt(graph, c, out, cache, c.temp_file.empty() ? std::function<bool()>() : temp_rows);
    CHECK(cut.at("epochs_completed") == 0);  // the signal landed in epoch 1
    INFO(graph << ": interrupted in epoch 1 + resumed vs uninterrupted");
    resume_and_check(out, cache, ref);
  }
  {  // SIGINT once epoch 1 is checkpointed, then `pipe run --resume DIR`.
    const fs::path out = d.root / "cut2", cache = d.root / "cache-cut2";
    // The checkpoint is replaced by rename, so a state.json read here is always whole.
    const auto epoch1_done = [&] {
      std::ifstream in(out / "checkpoint" / "state.json");
      return in && nlohmann::json::parse(in, nullptr, false).value("epochs_completed", 0) >= 1;
    };
    const auto cut = interrupt(graph, c, out, cache, epoch1_done);
    CHECK(cut.at("epochs_completed") == 1);
    INFO(graph << ": interrupted after epoch 1 + resumed vs uninterrupted");
    resume_and_check(out, cache, ref);
  }
}

}  // namespace

TEST_CASE("every graph in graphs/ has a determinism and resume case") {
  std::set<std::string> shipped, covered;
  for (const auto& e : fs::directory_iterator(fs::path(PIPE_SOURCE_DIR) / "graphs"))
    if (e.path().extension() == ".yaml") shipped.insert(e.path().stem().string());
  for (const auto& [g, _] : kGraphs) covered.insert(g);
  CHECK(shipped == covered);
}

// One test case per graph, so that ctest runs them side by side.
TEST_CASE("graphs/cached.yaml: same results at 1, 2, 4 threads and after an interrupt + resume") { check_graph("cached"); }
TEST_CASE("graphs/augmented.yaml: same results at 1, 2, 4 threads and after an interrupt + resume") { check_graph("augmented"); }
TEST_CASE("graphs/heads.yaml: same results at 1, 2, 4 threads and after an interrupt + resume") { check_graph("heads"); }
TEST_CASE("graphs/multiscale.yaml: same results at 1, 2, 4 threads and after an interrupt + resume") { check_graph("multiscale"); }
TEST_CASE("graphs/preview.yaml: same results at 1, 2, 4 threads and after an interrupt + resume") { check_graph("preview"); }
TEST_CASE("graphs/views.yaml: same results at 1, 2, 4 threads and after an interrupt + resume") { check_graph("views"); }
TEST_CASE("graphs/pretrain.yaml: same results at 1, 2, 4 threads and after an interrupt + resume") { check_graph("pretrain"); }
