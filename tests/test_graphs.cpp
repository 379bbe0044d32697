// The shipped graphs as a user runs them: each one plans as its comment says, the DAG graphs
// (several heads, two scales joined, a preview branch) run and do what they promise, and a
// warm cache never changes a result, for every shipped graph under many --set changes.
#include <catch2/catch.hpp>

#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <fmt/format.h>
#include <opencv2/imgcodecs.hpp>

#include "cache_store.h"
#include "run_support.h"

using namespace pipeline;
namespace fs = std::filesystem;

namespace {

const auto results = test::sink_results;

const std::vector<std::string> kSmall = {"data.per_class=[40, 20, 20]", "train.epochs=2"};

// A fresh directory; PIPE_CACHE_DIR points at it when `cache` is set.
std::string fresh_dir(const std::string& name, bool cache = true) {
  const fs::path d = fs::temp_directory_path() / fmt::format("pipe-test-graphs-{}-{}", name, ::getpid());
  fs::remove_all(d);
  fs::create_directories(d);
  if (cache) ::setenv("PIPE_CACHE_DIR", d.c_str(), 1);
  return d.string();
}

std::string graph_path(const std::string& graph) { return std::string(PIPE_SOURCE_DIR) + "/graphs/" + graph + ".yaml"; }

std::string read_text(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Renames node `from` to `to` everywhere in the graph text (its key and its edges).
std::string renamed(std::string text, const std::string& from, const std::string& to) {
  for (size_t p = 0; (p = text.find(from, p)) != std::string::npos; p += to.size()) {
    const bool word = (p == 0 || !std::isalnum(static_cast<unsigned char>(text[p - 1]))) &&
                      (p + from.size() >= text.size() || !std::isalnum(static_cast<unsigned char>(text[p + from.size()])));
    if (word && text.compare(p > 7 ? p - 7 : 0, 7, "stage: ") != 0) text.replace(p, from.size(), to);
  }
  return text;
}

GraphSpec spec_of(const std::string& graph, std::vector<std::string> sets, const std::string& text = "") {
  sets.insert(sets.begin(), kSmall.begin(), kSmall.end());
  Diagnostics diag(graph_path(graph));
  GraphSpec g = parse_graph(text.empty() ? read_text(graph_path(graph)) : text, graph_path(graph), sets,
                            Registry::global(), diag);
  if (!diag.ok()) FAIL(diag.str());
  return g;
}

RunResult run(const GraphSpec& g, int threads = 2, const std::string& out = "") {
  RunConfig cfg;
  cfg.threads = threads;
  cfg.quiet = true;
  cfg.write_outputs = !out.empty();
  cfg.out_dir = out;
  return run_graph(g, cfg);
}

// The text of one section of `pipe plan`'s output ("train, epochs 2+" ...).
std::string section(const std::string& plan, const std::string& title) {
  const size_t a = plan.find("\n" + title + ":\n");
  if (a == std::string::npos) return "";
  const size_t b = plan.find("\n\n", a + 1);
  return plan.substr(a, b == std::string::npos ? std::string::npos : b - a);
}

size_t count(const std::string& text, const std::string& what) {
  size_t n = 0;
  for (size_t p = 0; (p = text.find(what, p)) != std::string::npos; p += what.size()) ++n;
  return n;
}

// The property: a run on the cache that the runs before it filled gives exactly what the
// same run gives on an empty cache.
void check_transparent(const std::string& graph, const std::vector<std::pair<std::vector<std::string>, std::string>>& variants) {
  const std::string warm_dir = fresh_dir(graph + "-warm");
  int k = 0;
  for (const auto& [sets, text] : variants) {
    INFO(graph << " variant " << k << ": " << fmt::format("{}", fmt::join(sets, " ")) << (text.empty() ? "" : " (renamed)"));
    const GraphSpec g = spec_of(graph, sets, text);
    ::setenv("PIPE_CACHE_DIR", warm_dir.c_str(), 1);
    const RunResult warm = run(g);
    fresh_dir(fmt::format("{}-cold{}", graph, k++));
    const RunResult cold = run(g);
    CHECK(results(warm) == results(cold));
  }
  fs::remove_all(warm_dir);
}

}  // namespace

TEST_CASE("pipe plan: what each shipped graph recomputes, per split and epoch") {
  fresh_dir("plan");
  const auto plan = [](const std::string& g) { return explain_plan(spec_of(g, {})); };
  const std::string cached = plan("cached");
  CHECK(section(cached, "train, epoch 1").find("cache-write memo") != std::string::npos);
  CHECK(section(cached, "train, epoch 1").find("(missing: written by this pass)") != std::string::npos);
  CHECK(section(cached, "train, epochs 2+").find("cache-read  memo") != std::string::npos);
  CHECK(section(cached, "train, epochs 2+").find("convbase") == std::string::npos);
  const std::string augmented = plan("augmented");
  CHECK(section(augmented, "train, epochs 2+").find("augment (augment)") != std::string::npos);
  CHECK(section(augmented, "validation, epochs 2+").find("cache-read  (memo)") != std::string::npos);
  CHECK(section(augmented, "validation, epoch 1").find("augment") == std::string::npos);
  CHECK(count(plan("views"), "(before epoch 1)") == 5);
  const std::string heads = section(plan("heads"), "train, epochs 2+");
  CHECK(count(heads, "cache-read") == 1);
  CHECK(count(heads, "sink") == 3);
  CHECK(plan("multiscale").find("join        both (concat)") != std::string::npos);
  const std::string preview = plan("preview");
  CHECK(section(preview, "train, epoch 1").find("preview (preview)") != std::string::npos);
  CHECK(section(preview, "validation, epoch 1").find("preview") == std::string::npos);
  CHECK(cached.find("cache keys (what each one covers):") != std::string::npos);
}

TEST_CASE("graphs/heads.yaml: three heads from one extraction") {
  fresh_dir("heads");
  const RunResult r = run(spec_of("heads", {}));
  REQUIRE(r.sinks.size() == 3);
  const int64_t train = r.sinks[0].epochs.back().train.count, val = r.sinks[0].epochs.back().validation.count,
                test = r.sinks[0].test.count;
  CHECK(train == 80);
  CHECK(r.cache_misses == train + val + test);  // each image through the base once
  for (const SinkResult& s : r.sinks) {
    CHECK(s.epochs.size() == 2);
    CHECK(s.test.count == test);
  }
  CHECK(results(r).find("head1024:") != std::string::npos);
}

TEST_CASE("graphs/multiscale.yaml: two scales joined by sample id, identical at 1 and 2 threads") {
  fresh_dir("multiscale1");
  const RunResult one = run(spec_of("multiscale", {}), 1);
  fresh_dir("multiscale2");
  const RunResult two = run(spec_of("multiscale", {}), 2);
  CHECK(results(one) == results(two));
  CHECK(one.test.count == 40);
  CHECK(one.cache_misses == 160);
}

TEST_CASE("graphs/preview.yaml: contact sheets of the augmented images, training unchanged") {
  fresh_dir("preview");
  const std::string out = fresh_dir("preview-out", false);
  const RunResult r = run(spec_of("preview", {"nodes.preview.count=6"}), 2, out);
  for (int e : {1, 2}) {
    const cv::Mat png = cv::imread(fmt::format("{}/preview-epoch{}.png", out, e), cv::IMREAD_UNCHANGED);
    REQUIRE_FALSE(png.empty());
    // 6 tiles, 4 per row: 2 rows of 32 px images scaled 4x.
    CHECK(png.rows == 2 * 32 * 4);
    CHECK(png.cols == 4 * 32 * 4);
    CHECK(png.channels() == 3);
  }
  CHECK(fs::exists(fs::path(out) / "head.pt"));
  // The branch changes no number: regime B alone gives the same results for its head.
  fresh_dir("preview-b");
  const RunResult b = run(spec_of("augmented", {}));
  CHECK(results(r).substr(0, results(r).find("preview:")) == results(b));
  fs::remove_all(out);
}

TEST_CASE("a warm cache never changes a result: regime A under --set changes") {
  const std::string text = read_text(graph_path("cached"));
  check_transparent("cached", {{{}, ""},
                               {{"train.seed=2"}, ""},
                               {{"nodes.decode.size=[28, 28]"}, ""},
                               {{"on_error=skip"}, ""},
                               {{"nodes.head.hidden=64"}, ""},
                               {{}, renamed(text, "decode", "decoder")}});
}

TEST_CASE("a warm cache never changes a result: regime B and its views under --set changes") {
  const std::string text = read_text(graph_path("augmented"));
  check_transparent("augmented", {{{}, ""},
                                  {{"train.seed=2"}, ""},
                                  {{"nodes.augment.rotation=10"}, ""},
                                  {{}, renamed(text, "augment", "jitter")}});
  const std::string views = read_text(graph_path("views"));
  check_transparent("views", {{{"nodes.memo.views=2"}, ""},
                              {{"nodes.memo.views=2", "train.seed=2"}, ""},
                              {{"nodes.memo.views=3"}, ""},
                              {{"nodes.memo.views=2", "nodes.augment.zoom=0.1"}, ""},
                              {{"nodes.memo.views=2"}, renamed(views, "augment", "jitter")},
                              {{"nodes.memo.views=2", "on_error=skip"}, ""}});
}

TEST_CASE("a warm cache never changes a result: the DAG graphs under --set changes") {
  check_transparent("heads", {{{}, ""}, {{"train.seed=3"}, ""}, {{"nodes.decode.size=[28, 28]"}, ""}});
  check_transparent("multiscale", {{{}, ""}, {{"nodes.small.size=[24, 24]"}, ""}, {{"train.seed=2"}, ""}});
}

TEST_CASE("graphs/views.yaml: the cache keeps distinct augmented views of each image") {
  const std::string cache = fresh_dir("views-distinct");
  run(spec_of("views", {"nodes.memo.views=3"}));
  int entries = 0;
  for (const CacheEntryInfo& info : FeatureCache(cache).list()) {
    if (info.split != "train") continue;
    ++entries;
    REQUIRE(info.views == 3);
    const auto e = FeatureCache(cache).open(info.fingerprint, info.split);
    REQUIRE(e);
    for (int64_t id = 0; id < e->count(); ++id) {
      INFO("sample " << id);
      const Tensor v0 = e->features(id, 0), v1 = e->features(id, 1), v2 = e->features(id, 2);
      const auto bytes = static_cast<size_t>(v0.numel()) * sizeof(float);
      CHECK(std::memcmp(v0.ptr(), v1.ptr(), bytes) != 0);
      CHECK(std::memcmp(v0.ptr(), v2.ptr(), bytes) != 0);
      CHECK(std::memcmp(v1.ptr(), v2.ptr(), bytes) != 0);
    }
  }
  CHECK(entries == 1);
  fs::remove_all(cache);
}

TEST_CASE("every shipped DAG graph gives identical results at 1 and 2 threads") {
  const std::vector<std::pair<std::string, std::vector<std::string>>> graphs = {
      {"heads", {}}, {"preview", {"nodes.preview.count=4"}}, {"views", {"nodes.memo.views=2"}}};
  for (const auto& [graph, sets] : graphs) {
    INFO(graph);
    std::string result[2];
    for (int threads : {1, 2}) {
      fresh_dir(fmt::format("threads-{}-{}", graph, threads));
      result[threads - 1] = results(run(spec_of(graph, sets), threads));
    }
    CHECK(result[0] == result[1]);
    CHECK_FALSE(result[0].empty());
  }
}
