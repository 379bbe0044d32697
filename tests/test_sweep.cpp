// `pipe sweep` as users run it (child processes of the real binary): grid x seeds into run
// directories, sweep.csv and sweep.md against the runs' own summaries, --jobs 2 equal to
// --jobs 1, a rerun that skips finished runs, Ctrl-C and a rerun that resumes, refusals
// before any run (bad key, another sweep's directory) and a failing cell that is recorded.
#include <catch2/catch.hpp>

#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <sstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <yaml-cpp/yaml.h>

#include "process.h"
#include "sweep.h"

namespace fs = std::filesystem;
using json = nlohmann::json;
using pipeline::test::Child;
using pipeline::test::finish;
using pipeline::test::spawn;

namespace {

const std::string kPipe = std::string(PIPE_BINARY_DIR) + "/pipe";
const std::string kCached = std::string(PIPE_SOURCE_DIR) + "/graphs/cached.yaml";
const std::string kLr = "nodes.head.lr=1.0e-4,1.0e-3";
const std::vector<std::string> kSmall = {"--set", "data.per_class=[30, 20, 20]", "--set", "train.epochs=2"};

std::string read_text(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> out;
  std::istringstream in(text);
  for (std::string l; std::getline(in, l);) out.push_back(l);
  return out;
}

// CSV cells; quoted cells (values with commas) keep their text without the quotes.
std::vector<std::string> csv_cells(const std::string& row) {
  std::vector<std::string> out(1);
  bool quoted = false;
  for (size_t i = 0; i < row.size(); ++i) {
    const char c = row[i];
    if (c == '"' && quoted && i + 1 < row.size() && row[i + 1] == '"') out.back() += c, ++i;
    else if (c == '"') quoted = !quoted;
    else if (c == ',' && !quoted) out.emplace_back();
    else out.back() += c;
  }
  return out;
}

// sweep.csv as maps from column name to cell, one per row.
std::vector<std::map<std::string, std::string>> csv_rows(const fs::path& file) {
  const auto lines = lines_of(read_text(file));
  REQUIRE(!lines.empty());
  const auto head = csv_cells(lines[0]);
  std::vector<std::map<std::string, std::string>> out;
  for (size_t i = 1; i < lines.size(); ++i) {
    const auto cells = csv_cells(lines[i]);
    REQUIRE(cells.size() == head.size());
    std::map<std::string, std::string> row;
    for (size_t k = 0; k < head.size(); ++k) row[head[k]] = cells[k];
    out.push_back(row);
  }
  return out;
}

struct Result {
  int code = -1;
  std::string err;
};

Result sweep(std::vector<std::string> args, const fs::path& cache) {
  args.insert(args.begin(), {kPipe, "sweep"});
  Child c = spawn(args, cache.string());
  Result r;
  r.code = finish(c, &r.err);
  return r;
}

std::vector<std::string> small_sweep(const fs::path& out, int jobs) {
  std::vector<std::string> a = {kCached, "--grid", kLr, "--seeds", "2", "--out", out.string(),
                                "--jobs", std::to_string(jobs), "--threads", "2"};
  a.insert(a.end(), kSmall.begin(), kSmall.end());
  return a;
}

// Everything but the times: what --jobs must not change.
std::string csv_without_seconds(const fs::path& file) {
  std::string out;
  for (auto row : csv_rows(file)) {
    row.erase("seconds");
    for (const auto& [k, v] : row) out += k + "=" + v + ";";
    out += "\n";
  }
  return out;
}

std::string metrics_without_times(const fs::path& run) {
  std::string all;
  for (const std::string& line : lines_of(read_text(run / "metrics.jsonl")))
    all += std::regex_replace(line, std::regex(",\"seconds\".*"), "") + "\n";
  return all;
}

// One sweep of 2 learning rates x 2 seeds with --jobs 1 and again with --jobs 2 (cold caches).
struct Sweeps {
  fs::path root = fs::temp_directory_path() / fmt::format("pipe-test-sweep-{}", ::getpid());
  fs::path one = root / "one", two = root / "two";
  Result r1, r2;
  Sweeps() {
    fs::remove_all(root);
    fs::create_directories(root);
    r1 = sweep(small_sweep(one, 1), root / "cache1");
    r2 = sweep(small_sweep(two, 2), root / "cache2");
  }
  ~Sweeps() { fs::remove_all(root); }
};

const Sweeps& sweeps() {
  static const Sweeps s;
  return s;
}

double mean(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x;
  return s / static_cast<double>(v.size());
}

double sample_sd(const std::vector<double>& v) {
  const double m = mean(v);
  double ss = 0;
  for (double x : v) ss += (x - m) * (x - m);
  return std::sqrt(ss / static_cast<double>(v.size() - 1));
}

void check_reports(const Sweeps& s) {
  INFO(s.r1.err);
  REQUIRE(s.r1.code == 0);
  const auto rows = csv_rows(s.one / "sweep.csv");
  REQUIRE(rows.size() == 4);
  std::map<std::string, std::vector<json>> by_lr;
  for (const auto& row : rows) {
    const fs::path run = s.one / row.at("run");
    CHECK(row.at("status") == "completed");
    CHECK(row.at("error").empty());
    CHECK(row.at("run").find("seed=" + row.at("seed")) != std::string::npos);
    const json sum = json::parse(read_text(run / "summary.json"));
    for (const char* m : {"train_acc", "val_acc", "best_val_acc", "test_acc", "seconds"})
      CHECK(std::stod(row.at(m)) == sum.at(m).get<double>());
    // The seed varies train.seed and the source's split seed; the grid value is the run's.
    const YAML::Node g = YAML::LoadFile((run / "graph.yaml").string());
    CHECK(g["train"]["seed"].as<std::string>() == row.at("seed"));
    CHECK(g["data"]["split_seed"].as<std::string>() == row.at("seed"));
    CHECK(g["nodes"]["head"]["lr"].as<double>() == std::stod(row.at("nodes.head.lr")));
    CHECK(g["train"]["epochs"].as<int>() == 2);
    by_lr[row.at("nodes.head.lr")].push_back(sum);
  }
  REQUIRE(by_lr.size() == 2);

  // sweep.md: per cell, mean and sample standard deviation of the two seeds' summaries.
  const std::string md = read_text(s.one / "sweep.md");
  for (const auto& [lr, sums] : by_lr) {
    std::string row;
    for (const std::string& l : lines_of(md))
      if (l.rfind("| " + lr + " |", 0) == 0) row = l;
    INFO(md);
    REQUIRE(!row.empty());
    CHECK(row.find("| 2/2 |") != std::string::npos);
    for (const char* m : {"train_acc", "val_acc", "best_val_acc", "test_acc"}) {
      std::vector<double> v;
      for (const json& j : sums) v.push_back(j.at(m).get<double>());
      CHECK(row.find(fmt::format("{:.4f} ± {:.4f}", mean(v), sample_sd(v))) != std::string::npos);
    }
  }
  CHECK(fs::file_size(s.one / "sweep.png") > 1000);
  const json def = json::parse(read_text(s.one / "sweep.json"));
  CHECK(def.at("seeds") == 2);
  CHECK(def.at("grid").at("nodes.head.lr") == json({"1.0e-4", "1.0e-3"}));
}

void check_jobs(const Sweeps& s) {
  INFO(s.r2.err);
  REQUIRE(s.r1.code == 0);
  REQUIRE(s.r2.code == 0);
  CHECK(csv_without_seconds(s.two / "sweep.csv") == csv_without_seconds(s.one / "sweep.csv"));
  std::map<std::string, int64_t> misses;  // per seed, over the runs of both learning rates
  for (const auto& row : csv_rows(s.one / "sweep.csv")) {
    CHECK(metrics_without_times(s.two / row.at("run")) == metrics_without_times(s.one / row.at("run")));
    const json sum = json::parse(read_text(s.two / row.at("run") / "summary.json"));
    misses[row.at("seed")] += sum.at("cache").at("misses").get<int64_t>();
  }
  // Runs at once went seed by seed (both learning rates of a seed share the data split): each
  // split's features were extracted once, the other run waiting on the entry's lock and
  // reading it (30 + 20 + 20 images of each of 2 classes).
  CHECK(misses == std::map<std::string, int64_t>{{"1", 140}, {"2", 140}});
}

void check_rerun(const Sweeps& s) {
  REQUIRE(s.r1.code == 0);
  std::map<std::string, fs::file_time_type> before;
  for (const auto& row : csv_rows(s.one / "sweep.csv"))
    before[row.at("run")] = fs::last_write_time(s.one / row.at("run") / "summary.json");
  const std::string csv = csv_without_seconds(s.one / "sweep.csv");

  const Result again = sweep(small_sweep(s.one, 1), s.root / "cache1");
  INFO(again.err);
  CHECK(again.code == 0);
  for (const auto& [run, t] : before) {
    CHECK(again.err.find(run + ": skipped: finished earlier") != std::string::npos);
    CHECK(fs::last_write_time(s.one / run / "summary.json") == t);
  }
  CHECK(again.err.find("starting") == std::string::npos);
  CHECK(csv_without_seconds(s.one / "sweep.csv") == csv);

  auto other = small_sweep(s.one, 1);
  other[4] = "3";  // --seeds 3
  const Result refused = sweep(other, s.root / "cache1");
  CHECK(refused.code == 2);
  CHECK(refused.err.find("holds another sweep (seeds: 2 there, 3 here)") != std::string::npos);
}

}  // namespace

// One test case (one process under ctest) for everything that reads the two sweeps.
TEST_CASE("sweep runs grid x seeds, --jobs 2 equals --jobs 1, a rerun skips finished runs") {
  const Sweeps& s = sweeps();
  SECTION("run directories, sweep.csv and sweep.md from the runs' summaries") { check_reports(s); }
  SECTION("--jobs 2 gives the results of --jobs 1") { check_jobs(s); }
  SECTION("a rerun skips finished runs; another definition is refused") { check_rerun(s); }
}

TEST_CASE("sweep refuses an invalid grid key or value before any run, as pipe run --set does") {
  const fs::path root = fs::temp_directory_path() / fmt::format("pipe-test-sweep-bad-{}", ::getpid());
  fs::remove_all(root);
  // The diagnostic pipe run gives for the same assignment.
  Child run = spawn({kPipe, "run", kCached, "--set", "nodes.head.lrr=1"}, (root / "cache").string());
  std::string run_err;
  CHECK(finish(run, &run_err) == 2);
  const std::string diagnostic = lines_of(run_err).at(0);
  CHECK(diagnostic.find("lrr") != std::string::npos);

  const Result bad_key = sweep({kCached, "--grid", "nodes.head.lrr=1,2", "--out", (root / "s").string()}, root / "cache");
  CHECK(bad_key.code == 2);
  CHECK(bad_key.err.find(diagnostic) != std::string::npos);
  CHECK(bad_key.err.find("no run started") != std::string::npos);
  CHECK_FALSE(fs::exists(root / "s"));

  const Result bad_value =
      sweep({kCached, "--grid", "nodes.head.lr=1.0e-4,fast", "--out", (root / "s").string()}, root / "cache");
  CHECK(bad_value.code == 2);
  CHECK(bad_value.err.find("--set nodes.head.lr=fast") != std::string::npos);
  CHECK_FALSE(fs::exists(root / "s"));

  const Result seed = sweep({kCached, "--grid", "train.seed=1,2", "--out", (root / "s").string()}, root / "cache");
  CHECK(seed.code == 2);
  CHECK_FALSE(fs::exists(root / "s"));
  fs::remove_all(root);
}

TEST_CASE("sweep records a run that fails and goes on, the exit code counting failures") {
  const fs::path root = fs::temp_directory_path() / fmt::format("pipe-test-sweep-fail-{}", ::getpid());
  fs::remove_all(root);
  // 7000 training images of a class pass validation but not the source: Fashion-MNIST has 6000.
  std::vector<std::string> args = {kCached, "--grid", "data.per_class=[30, 20, 20],[7000, 20, 20]",
                                   "--set", "train.epochs=1", "--out", (root / "s").string(), "--threads", "2"};
  const Result r = sweep(args, root / "cache");
  INFO(r.err);
  CHECK(r.code == 1);
  const auto rows = csv_rows(root / "s" / "sweep.csv");
  REQUIRE(rows.size() == 2);
  CHECK(rows[0].at("data.per_class") == "[30, 20, 20]");
  CHECK(rows[0].at("status") == "completed");
  CHECK(rows[1].at("status") == "failed");
  CHECK(rows[1].at("error").find("fewer than the 7020 asked") != std::string::npos);
  CHECK(rows[1].at("best_val_acc").empty());
  CHECK(read_text(root / "s" / "sweep.md").find("Failed runs") != std::string::npos);
  fs::remove_all(root);
}

TEST_CASE("sweep interrupted by SIGINT exits 130 and the same command resumes the interrupted run") {
  const fs::path root = fs::temp_directory_path() / fmt::format("pipe-test-sweep-int-{}", ::getpid());
  fs::remove_all(root);
  const std::vector<std::string> args = {kPipe, "sweep", kCached, "--grid", kLr, "--set", "data.per_class=[150, 50, 50]",
                                         "--set", "train.epochs=8", "--out", (root / "s").string(), "--threads", "2"};
  Child c = spawn(args, (root / "cache").string());
  const std::string seen = pipeline::test::read_until(c.err, "starting");
  REQUIRE(seen.find("starting") != std::string::npos);
  // The first run's second epoch is done: interrupt the sweep (it forwards Ctrl-C to the run,
  // which has six epochs of 300 images left).
  const fs::path first = root / "s" / "nodes.head.lr=1.0e-4,seed=1";
  REQUIRE(pipeline::test::wait_until(c.pid, [&] { return lines_of(read_text(first / "metrics.jsonl")).size() >= 2; }));
  ::kill(c.pid, SIGINT);
  std::string err;
  CHECK(finish(c, &err) == 130);
  auto rows = csv_rows(root / "s" / "sweep.csv");
  REQUIRE(rows.size() == 2);
  CHECK(rows[0].at("status") == "interrupted");
  CHECK(rows[1].at("status") == "not run");

  Child again = spawn(args, (root / "cache").string());
  std::string err2;
  CHECK(finish(again, &err2) == 0);
  INFO(err2);
  CHECK(err2.find("nodes.head.lr=1.0e-4,seed=1: resuming") != std::string::npos);
  CHECK(err2.find("nodes.head.lr=1.0e-3,seed=1: starting") != std::string::npos);
  rows = csv_rows(root / "s" / "sweep.csv");
  for (const auto& row : rows) CHECK(row.at("status") == "completed");
  const auto epochs = lines_of(read_text(first / "metrics.jsonl"));
  REQUIRE(epochs.size() == 8);
  for (size_t e = 0; e < epochs.size(); ++e) CHECK(json::parse(epochs[e]).at("epoch") == static_cast<int>(e + 1));
  fs::remove_all(root);
}

TEST_CASE("sweep grid values split at top-level commas and run names are file names") {
  using pipeline::parse_grid;
  const auto a = parse_grid("data.per_class=[100, 500, 500],[300,500,500], {a: 1, b: 2},'x,y'");
  CHECK(a.key == "data.per_class");
  CHECK(a.values == std::vector<std::string>{"[100, 500, 500]", "[300,500,500]", "{a: 1, b: 2}", "'x,y'"});
  CHECK_THROWS_AS(parse_grid("nodes.head.lr"), pipeline::SweepUsageError);
  CHECK_THROWS_AS(parse_grid("nodes.head.lr=1,,2"), pipeline::SweepUsageError);
  CHECK_THROWS_AS(parse_grid("nodes.head.lr=1,1"), pipeline::SweepUsageError);
  const auto runs = pipeline::expand_sweep({a, parse_grid("x=1,2")}, {"train.epochs=3"}, 2, {"train.seed"});
  REQUIRE(runs.size() == 16);
  CHECK(runs[0].overrides == std::vector<std::string>{"train.epochs=3", "data.per_class=[100, 500, 500]", "x=1", "train.seed=1"});
  CHECK(runs[1].seed == 2);
  CHECK(runs[2].values == std::vector<std::string>{"[100, 500, 500]", "2"});
  std::set<std::string> names;
  for (const auto& r : runs) {
    names.insert(r.name);
    CHECK(r.name.find_first_of("/ []{}'") == std::string::npos);
  }
  CHECK(names.size() == runs.size());
}
