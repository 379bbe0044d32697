// After a run: metrics.csv and curves.png in the run directory, `pipe runs DIR` and
// `pipe compare RUN...`. Two small real runs of graphs/cached.yaml that differ only in the
// head's learning rate, a copy of one without its summary (a run killed before it finished),
// and a run of graphs/heads.yaml for the per-sink files.
#include <catch2/catch.hpp>

#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>

#include "curves.h"
#include "runs.h"
#include "spec.h"

using namespace pipeline;
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

const std::string kCached = std::string(PIPE_SOURCE_DIR) + "/graphs/cached.yaml";

RunResult run(const std::string& graph, std::vector<std::string> sets, const fs::path& out) {
  Diagnostics diag(graph);
  const GraphSpec g = load_graph(graph, sets, Registry::global(), diag);
  if (!diag.ok()) FAIL(diag.str());
  RunConfig cfg;
  cfg.threads = 2;
  cfg.quiet = true;
  cfg.out_dir = out.string();
  cfg.overrides = sets;
  return run_graph(g, cfg);
}

// Runs made once for every section: a (lr 1e-4, the graph's), b (lr 1e-3), c (a's directory
// without summary.json), and a directory that is no run.
struct Runs {
  fs::path root = fs::temp_directory_path() / fmt::format("pipe-test-runs-{}", ::getpid());
  fs::path a = root / "a-cached", b = root / "b-cached-lr", c = root / "c-partial", other = root / "notes";
  RunResult ra, rb;
  Runs() {
    fs::remove_all(root);
    fs::create_directories(other);
    const std::vector<std::string> small = {"data.per_class=[60, 40, 40]", "train.epochs=3"};
    ra = run(kCached, small, a);
    std::vector<std::string> lr = small;
    lr.push_back("nodes.head.lr=1.0e-3");
    rb = run(kCached, lr, b);
    fs::copy(a, c, fs::copy_options::recursive);
    fs::remove(c / "summary.json");
  }
  ~Runs() { fs::remove_all(root); }
};

const Runs& runs() {
  static const Runs r;
  return r;
}

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> out;
  std::istringstream in(text);
  for (std::string l; std::getline(in, l);) out.push_back(l);
  return out;
}

// A table row's cells: columns stand two or more spaces apart.
std::vector<std::string> columns(const std::string& row) {
  std::vector<std::string> out;
  const std::regex gap(" {2,}");
  for (std::sregex_token_iterator it(row.begin(), row.end(), gap, -1), end; it != end; ++it) out.push_back(*it);
  return out;
}

std::string read_text(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::vector<std::string> cells(const std::string& row) {
  std::vector<std::string> out;
  std::stringstream in(row);
  for (std::string c; std::getline(in, c, ',');) out.push_back(c);
  if (!row.empty() && row.back() == ',') out.emplace_back();
  return out;
}

// Every row of metrics.csv equals the line of metrics.jsonl for its epoch (`sink`: the
// object of a line with several sinks).
void check_csv(const fs::path& csv, const fs::path& jsonl, const std::string& sink = "") {
  const auto rows = lines_of(read_text(csv));
  const auto lines = lines_of(read_text(jsonl));
  REQUIRE(rows.size() == lines.size() + 1);
  CHECK(rows[0] == kMetricsCsvHeader);
  for (size_t i = 0; i < lines.size(); ++i) {
    const json line = json::parse(lines[i]);
    const json& m = sink.empty() ? line : line.at(sink);
    const auto c = cells(rows[i + 1]);
    REQUIRE(c.size() == 7);
    CHECK(std::stoi(c[0]) == line.at("epoch").get<int>());
    CHECK(std::stod(c[1]) == m.at("train_loss").get<double>());
    CHECK(std::stod(c[2]) == m.at("train_acc").get<double>());
    CHECK(std::stod(c[3]) == m.at("val_loss").get<double>());
    CHECK(std::stod(c[4]) == m.at("val_acc").get<double>());
    if (m.contains("lr")) CHECK(std::stod(c[5]) == m.at("lr").get<double>());
    else CHECK(c[5].empty());
    CHECK(std::stod(c[6]) == line.at("seconds").get<double>());
  }
}

// A chart PNG of `charts` panels, with something drawn on it.
cv::Mat check_png(const fs::path& png, int charts) {
  const cv::Mat img = cv::imread(png.string(), cv::IMREAD_COLOR);
  REQUIRE(!img.empty());
  CHECK(img.cols == charts * kChartWidth);
  CHECK(img.rows == kChartHeight);
  cv::Scalar mean, stddev;
  cv::meanStdDev(img, mean, stddev);
  CHECK(stddev[0] > 0);
  return img;
}

std::string read_all(std::FILE* f) {
  std::rewind(f);
  std::string s;
  char buf[4096];
  for (size_t n; (n = std::fread(buf, 1, sizeof buf, f)) > 0;) s.append(buf, n);
  return s;
}

struct Cli {
  int code;
  std::string out;
};

// `pipe ARGS` as a user runs it: exit code and stdout (stderr too, after it).
Cli pipe_cli(const std::string& args) {
  FILE* f = popen(fmt::format("'{}/pipe' {} 2>&1", PIPE_BINARY_DIR, args).c_str(), "r");
  REQUIRE(f != nullptr);
  Cli c;
  char buf[4096];
  for (size_t n; (n = std::fread(buf, 1, sizeof buf, f)) > 0;) c.out.append(buf, n);
  const int status = pclose(f);
  c.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return c;
}

}  // namespace

TEST_CASE("a run writes metrics.csv and curves.png, pipe runs lists runs, pipe compare compares them") {
  const Runs& r = runs();

  SECTION("metrics.csv has Keras CSVLogger's columns and metrics.jsonl's values, a row per epoch") {
    check_csv(r.a / "metrics.csv", r.a / "metrics.jsonl");
    check_csv(r.b / "metrics.csv", r.b / "metrics.jsonl");
  }

  SECTION("curves.png: two charts, drawn, different for different runs") {
    const cv::Mat a = check_png(r.a / "curves.png", 2), b = check_png(r.b / "curves.png", 2);
    CHECK(cv::norm(a, b, cv::NORM_L1) > 0);
  }

  SECTION("pipe runs: every run under DIR by start time, with its columns; a run without summary too") {
    std::FILE* err = std::tmpfile();
    const std::vector<RunRecord> list = list_runs(r.root.string(), err);
    CHECK(read_all(err).empty());
    std::fclose(err);
    REQUIRE(list.size() == 3);
    CHECK(list[0].name == "a-cached");
    CHECK(list[1].name == "b-cached-lr");
    CHECK(list[2].name == "c-partial");
    for (size_t i = 0; i < 2; ++i) {
      const RunResult& res = i == 0 ? r.ra : r.rb;
      CHECK(list[i].graph == "cached");
      CHECK(list[i].status == "completed");
      CHECK(list[i].started == res.summary.at("started").get<std::string>());
      CHECK(list[i].epochs == 3);
      CHECK(list[i].epochs_completed == 3);
      CHECK(list[i].best_val_acc == res.best_val_acc);
      CHECK(list[i].best_epoch == res.best_epoch);
      CHECK(list[i].test_acc == res.test.accuracy);
      CHECK(list[i].seconds == res.seconds);
      CHECK(list[i].val_curve.y.size() == 3);
    }
    CHECK(list[2].status == "running/interrupted");
    CHECK(list[2].graph == "cached");
    CHECK(list[2].epochs_completed == 3);
    CHECK(list[2].epochs == 3);
    CHECK(list[2].best_val_acc == r.ra.best_val_acc);
    CHECK(!list[2].test_acc);
    CHECK(!list[2].seconds);

    const Cli table = pipe_cli(fmt::format("runs '{}'", r.root.string()));
    CHECK(table.code == 0);
    const auto rows = lines_of(table.out);
    REQUIRE(rows.size() == 4);
    CHECK(columns(rows[0]) == std::vector<std::string>{"name", "graph", "started", "status", "epochs", "best val", "test", "seconds"});
    CHECK(columns(rows[1]) == std::vector<std::string>{"a-cached", "cached", list[0].started, "completed", "3/3",
                                                        fmt::format("{:.4f}", r.ra.best_val_acc),
                                                        fmt::format("{:.4f}", r.ra.test.accuracy), fmt::format("{:.1f}", r.ra.seconds)});
    CHECK(columns(rows[3]) == std::vector<std::string>{"c-partial", "cached", list[2].started, "running/interrupted", "3/3",
                                                        fmt::format("{:.4f}", r.ra.best_val_acc), "-", "-"});

    const Cli j = pipe_cli(fmt::format("runs '{}' --json", r.root.string()));
    CHECK(j.code == 0);
    const json parsed = json::parse(j.out);
    REQUIRE(parsed.size() == 3);
    CHECK(parsed[1]["name"] == "b-cached-lr");
    CHECK(parsed[1]["test_acc"].get<double>() == r.rb.test.accuracy);
    CHECK(parsed[2]["test_acc"].is_null());
  }

  SECTION("pipe compare: metrics side by side, the one graph key changed, compare.png") {
    const Comparison c = compare_runs({r.a.string(), r.b.string()});
    REQUIRE(c.differences.size() == 1);
    CHECK(c.differences[0].key == "nodes.head.lr");
    REQUIRE(c.differences[0].values.size() == 2);
    CHECK(std::stod(c.differences[0].values[0]) == 1.0e-4);
    CHECK(std::stod(c.differences[0].values[1]) == 1.0e-3);
    CHECK(compare_runs({r.a.string(), r.a.string()}).differences.empty());

    const fs::path png = r.root / "compare.png";
    std::FILE* out = std::tmpfile();
    CHECK(run_compare({{r.a.string(), r.b.string()}, png.string()}, out, stderr) == 0);
    const std::string text = read_all(out);
    std::fclose(out);
    CHECK(text.find(fmt::format("best_val_acc  {:.4f}", r.ra.best_val_acc)) != std::string::npos);
    CHECK(text.find(fmt::format("test_acc      {:.4f}", r.ra.test.accuracy)) != std::string::npos);
    CHECK(text.find("nodes.head.lr: ") != std::string::npos);
    // the title, the one key, a blank line, the chart's line
    CHECK(lines_of(text.substr(text.find("graph.yaml differences:"))).size() == 4);
    check_png(png, 1);

    const Cli cli = pipe_cli(fmt::format("compare '{}' '{}' --out '{}'", r.a.string(), r.b.string(),
                                         (r.root / "cli.png").string()));
    CHECK(cli.code == 0);
    CHECK(cli.out.find("nodes.head.lr: ") != std::string::npos);
    CHECK(fs::exists(r.root / "cli.png"));
  }

  SECTION("pipe compare refuses one run, a run without summary.json and a directory that is no run (exit 2)") {
    const Cli one = pipe_cli(fmt::format("compare '{}'", r.a.string()));
    CHECK(one.code == 2);
    CHECK(one.out.find("give two or more run directories") != std::string::npos);
    const Cli partial = pipe_cli(fmt::format("compare '{}' '{}'", r.a.string(), r.c.string()));
    CHECK(partial.code == 2);
    CHECK(partial.out.find(r.c.string() + ": no summary.json: the run has not finished") != std::string::npos);
    const Cli other = pipe_cli(fmt::format("compare '{}' '{}'", r.a.string(), r.other.string()));
    CHECK(other.code == 2);
    CHECK(other.out.find(r.other.string() + ": not a run directory (no summary.json)") != std::string::npos);
    const Cli missing = pipe_cli(fmt::format("runs '{}'", (r.root / "missing").string()));
    CHECK(missing.code == 2);
    CHECK(missing.out.find("no such directory") != std::string::npos);
  }
}

TEST_CASE("several heads: metrics-<node>.csv and curves-<node>.png for each, metrics.csv for the first") {
  const fs::path out = fs::temp_directory_path() / fmt::format("pipe-test-runs-heads-{}", ::getpid());
  fs::remove_all(out);
  const std::string heads = std::string(PIPE_SOURCE_DIR) + "/graphs/heads.yaml";
  run(heads, {"data.per_class=[40, 20, 20]", "train.epochs=2"}, out);
  for (const char* node : {"head64", "head256", "head1024"}) {
    check_csv(out / fmt::format("metrics-{}.csv", node), out / "metrics.jsonl", node);
    check_png(out / fmt::format("curves-{}.png", node), 2);
  }
  CHECK(read_text(out / "metrics.csv") == read_text(out / "metrics-head64.csv"));
  CHECK(cv::norm(cv::imread((out / "curves.png").string()), cv::imread((out / "curves-head64.png").string()), cv::NORM_L1) == 0);
  const RunRecord rec = read_run(out.string());
  const json summary = json::parse(read_text(out / "summary.json"));
  CHECK(rec.best_val_acc == summary["sinks"]["head64"]["best_val_acc"].get<double>());
  fs::remove_all(out);
}
