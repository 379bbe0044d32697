// What pipe trusts (docs/security.md): a graph's plugins load only with the user's consent,
// and names a graph brings (its file name, node names) cannot write outside the run
// directory. The cache's modes and refusals are in test_cache_store.cpp.
#include <catch2/catch.hpp>

#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <set>

#include <fmt/format.h>
#include <opencv2/core.hpp>

#include "files.h"
#include "pipe/testing.h"
#include "plugin_loader.h"
#include "process.h"
#include "runner.h"
#include "spec.h"
#include "support.h"

namespace fs = std::filesystem;
using namespace pipeline;

namespace {

struct TempDir {
  fs::path path;
  TempDir() {
    char tmpl[] = "/tmp/pipe-security-XXXXXX";
    REQUIRE(::mkdtemp(tmpl) != nullptr);
    path = fs::canonical(tmpl);
  }
  ~TempDir() { fs::remove_all(path); }
};

// Runs `pipe ARGS...` with PIPE_ALLOW_PLUGINS and PIPE_PLUGIN_PATH unset unless `env` sets
// them ("NAME=VALUE" words for env(1)); returns the exit code, stderr in `err`.
int pipe_cli(const std::vector<std::string>& args, std::string& err, const std::vector<std::string>& env = {}) {
  std::vector<std::string> argv = {"/usr/bin/env", "-u", "PIPE_ALLOW_PLUGINS", "-u", "PIPE_PLUGIN_PATH"};
  argv.insert(argv.end(), env.begin(), env.end());
  argv.push_back(std::string(PIPE_BINARY_DIR) + "/pipe");
  argv.insert(argv.end(), args.begin(), args.end());
  test::Child c = test::spawn(argv, std::string(PIPE_BINARY_DIR) + "/test-cache");
  err.clear();
  return test::finish(c, &err);
}

// A graph that lists the test plugin (its stage t_scale maps features to features).
const char* kPluginGraph = R"(plugins: [plugins/scale.so]
data: {source: fashion_mnist, classes: [shirt, t-shirt]}
nodes:
  decode: {stage: decode}
  features: {stage: convbase, model: "builtin:small_vgg"}
  x3: {stage: t_scale, factor: 3}
  head: {stage: dense_head}
edges: [decode -> features -> x3 -> head]
)";

// A sink that checkpoints: the runner gives it checkpoint/<node>/ to write its state in.
class StateSink : public SinkStage {
 public:
  void begin_epoch(Split, int) override {}
  void consume(Batch&) override {}
  SplitMetrics end_epoch() override { return {}; }
  bool can_resume() const override { return true; }
  void save_state(const std::string& dir) const override { std::ofstream(dir + "/state") << "state\n"; }
};

void register_state_sink() {
  static bool done = false;
  if (done) return;
  done = true;
  StageSchema s;
  s.name = "t_state_sink";
  s.kind = StageKind::sink;
  s.concurrency = Concurrency::serial;
  s.consumes = Payload::features;
  Registry::global().add(s, [](const Params&, const StageContext&) { return std::make_unique<StateSink>(); });
}

// Every regular file under `dir`, relative to it.
std::set<std::string> files_under(const fs::path& dir) {
  std::set<std::string> out;
  for (const auto& e : fs::recursive_directory_iterator(dir))
    if (e.is_regular_file()) out.insert(fs::relative(e.path(), dir).string());
  return out;
}

// The working directory for a scope (the runner writes runs/ relative to it).
struct InDir {
  fs::path old = fs::current_path();
  explicit InDir(const fs::path& p) { fs::current_path(p); }
  ~InDir() { fs::current_path(old); }
};

mode_t mode_of(const fs::path& p) {
  struct stat st {};
  REQUIRE(::stat(p.c_str(), &st) == 0);
  return st.st_mode & 07777;
}

}  // namespace

TEST_CASE("a graph's plugins load only with consent, or from a trusted directory") {
  TempDir tmp;
  fs::create_directories(tmp.path / "plugins");
  const fs::path plugin = tmp.path / "plugins" / "scale.so";
  fs::copy_file(std::string(PIPE_BINARY_DIR) + "/test-plugins/pipe_test_plugin_good.so", plugin);
  const std::string g = (tmp.path / "g.yaml").string();
  std::ofstream(g) << kPluginGraph;
  const std::string refusal = fmt::format(
      "{}:1:11: error: plugin 'plugins/scale.so' ({}) not loaded: plugins named by a graph run code as you; if you "
      "trust this graph, pass --allow-plugins (or set PIPE_ALLOW_PLUGINS=1), or add the plugin's directory to "
      "PIPE_PLUGIN_PATH (docs/security.md)\n", g, plugin.string());
  const std::string unknown = fmt::format(
      "{}:6:15: warning: stage 't_scale' in node 'x3' is unknown but may come from the graph's plugins, which were "
      "not loaded: its parameters and connections are not checked\n", g);
  const std::string ok = fmt::format("{}: ok (4 nodes: decode -> features -> x3 -> head)", g);
  std::string err;

  SECTION("without consent, every command that reads the graph refuses it and runs none of its code") {
    CHECK(pipe_cli({"validate", g}, err) == 2);
    CHECK(err == refusal + unknown + "1 error\n");
    for (const char* cmd : {"run", "plan", "graph"}) {
      INFO(cmd);
      CHECK(pipe_cli({cmd, g}, err) == 2);
      CHECK(err == refusal + unknown + "1 error\n");
    }
    // A trusted directory is trusted for what is inside it, not for a path that leaves it.
    std::ofstream(tmp.path / "up.yaml") << std::string(kPluginGraph).replace(10, 16, "trusted/../plugins/scale.so");
    fs::create_directories(tmp.path / "trusted");
    CHECK(pipe_cli({"validate", (tmp.path / "up.yaml").string()}, err, {"PIPE_PLUGIN_PATH=" + (tmp.path / "trusted").string()}) == 2);
    CHECK_THAT(err, Catch::Contains("error: plugin 'trusted/../plugins/scale.so' (" + plugin.string() + ") not loaded"));
  }
  SECTION("--allow-plugins, PIPE_ALLOW_PLUGINS=1, PIPE_PLUGIN_PATH or --plugin: it loads and validates") {
    CHECK(pipe_cli({"validate", g, "--allow-plugins"}, err) == 0);
    CHECK(err == "");
    CHECK(pipe_cli({"validate", g}, err, {"PIPE_ALLOW_PLUGINS=1"}) == 0);
    CHECK(err == "");
    CHECK(pipe_cli({"validate", g}, err, {"PIPE_ALLOW_PLUGINS=0"}) == 2);
    CHECK(pipe_cli({"validate", g}, err, {"PIPE_PLUGIN_PATH=/nonexistent:" + (tmp.path / "plugins").string()}) == 0);
    CHECK(err == "");
    CHECK(pipe_cli({"validate", g, "--plugin", plugin.string()}, err) == 0);
    CHECK(err == "");
    CHECK(pipe_cli({"plan", g, "--allow-plugins"}, err) == 0);
  }
  SECTION("validate --no-plugins checks the rest and loads nothing") {
    CHECK(pipe_cli({"validate", g, "--no-plugins"}, err) == 0);
    CHECK(err == fmt::format("{}:1:11: warning: plugin 'plugins/scale.so' not loaded (--no-plugins)\n", g) + unknown);
    // Everything else is still checked.
    std::ofstream(g) << std::string(kPluginGraph) + "train: {epochs: 0}\n";
    CHECK(pipe_cli({"validate", g, "--no-plugins"}, err) == 2);
    CHECK_THAT(err, Catch::Contains(fmt::format("{}:9:17: error: parameter 'epochs' in 'train' is 0, out of range [1, 100000]", g)));
    CHECK(pipe_cli({"validate", g, "--no-plugins", "--allow-plugins"}, err) == 2);  // contradictory
  }
  SECTION("unit: trust follows the file, not the path written") {
    PluginConsent consent;
    CHECK_FALSE(plugin_trusted(plugin.string(), consent));
    consent.command_line = {plugin.string()};
    CHECK(plugin_trusted((tmp.path / "plugins" / ".." / "plugins" / "scale.so").string(), consent));
    // A symbolic link out of a trusted directory is not trusted; a file inside one is.
    fs::create_directories(tmp.path / "trusted");
    fs::create_symlink(plugin, tmp.path / "trusted" / "link.so");
    ::setenv("PIPE_PLUGIN_PATH", (tmp.path / "trusted").c_str(), 1);
    CHECK(plugin_trusted((tmp.path / "trusted" / "link.so").string(), PluginConsent{}));  // listed by PIPE_PLUGIN_PATH
    fs::create_directories(tmp.path / "trusted" / "sub");
    fs::create_directories(tmp.path / "other");
    fs::copy_file(plugin, tmp.path / "other" / "x.so");
    fs::create_symlink(tmp.path / "other" / "x.so", tmp.path / "trusted" / "sub" / "deep.so");
    CHECK_FALSE(plugin_trusted((tmp.path / "trusted" / "sub" / "deep.so").string(), PluginConsent{}));
    fs::copy_file(plugin, tmp.path / "trusted" / "sub" / "copy.so");
    CHECK(plugin_trusted((tmp.path / "trusted" / "sub" / "copy.so").string(), PluginConsent{}));
    ::unsetenv("PIPE_PLUGIN_PATH");
    // The installed plugin directory sits beside the libpipe that runs: in the build tree,
    // <build>/pipe/plugins.
    const std::vector<std::string> dirs = trusted_plugin_dirs();
    REQUIRE(dirs.size() == 1);
    CHECK(fs::weakly_canonical(dirs[0]) == fs::weakly_canonical(std::string(PIPE_BINARY_DIR) + "/pipe/plugins"));
  }
}

TEST_CASE("hostile node names are refused with a diagnostic") {
  test::register_test_stages();
  const auto errors = [](const std::string& quoted) {
    Diagnostics diag("h.yaml");
    parse_graph(fmt::format("data: {{source: t_count}}\nnodes:\n  {}: {{stage: t_map}}\n  s: {{stage: t_sink}}\n"
                            "edges: [\"{} -> s\"]\n", quoted, quoted.substr(1, quoted.size() - 2)),
                "h.yaml", {}, Registry::global(), diag);
    return diag.str();
  };
  const std::string tail = ": node names become file names in the run directory, so they must be plain names\n";
  CHECK(errors("\"../../x\"") == "h.yaml:3:3: error: node name '../../x' contains '/'" + tail);
  CHECK(errors("\"/etc/passwd\"") == "h.yaml:3:3: error: node name '/etc/passwd' contains '/'" + tail);
  CHECK(errors("\"..\"") == "h.yaml:3:3: error: node name '..' is '..'" + tail);
  CHECK(errors("\".\"") == "h.yaml:3:3: error: node name '.' is '.'" + tail);
  CHECK(errors("\"a\\nb\"") == "h.yaml:3:3: error: node name 'a\\x0ab' contains a control character" + tail);
  CHECK(errors("\"nul\\0\"") == "h.yaml:3:3: error: node name 'nul\\x00' contains a NUL byte" + tail);
  const std::string long_name(201, 'n');
  CHECK(errors("\"" + long_name + "\"") ==
        "h.yaml:3:3: error: node name '" + std::string(60, 'n') + "...' is longer than 200 bytes" + tail);
  CHECK(errors("\"" + std::string(200, 'n') + "\"") == "");
  CHECK(errors("\"tête-de-nœud.v2\"") == "");  // UTF-8 and dots are plain names
}

TEST_CASE("names a graph brings cannot write outside the run directory") {
  SECTION("safe_file_name: one directory entry, within NAME_MAX, distinct for distinct names") {
    const std::vector<std::string> hostile = {"", ".", "..", "../../x", "/etc/passwd", "a/b", "a_b",
                                              std::string("nul\0x", 5), "tab\there", std::string(300, 'L'),
                                              std::string(300, 'L') + "x", "\x7f"};
    std::set<std::string> seen;
    for (const std::string& name : hostile) {
      INFO(name);
      const std::string safe = safe_file_name(name, 240);
      CHECK(file_name_problem(safe, 240) == "");
      CHECK((fs::path("/root/dir") / safe).lexically_normal().parent_path() == "/root/dir");
      CHECK(seen.insert(safe).second);
    }
    CHECK(safe_file_name("head") == "head");
    CHECK(safe_file_name("..").rfind("..-", 0) == 0);  // ".." plus the hash: no longer ".."
    CHECK(safe_file_name(std::string(300, 'L')).size() == kMaxFileName);
  }

  SECTION("a run of a graph named '..yaml' with a node named '../../x'") {
    test::register_test_stages();
    register_state_sink();
    TempDir tmp;
    const fs::path work = tmp.path / "a" / "b";
    fs::create_directories(work);
    const std::string file = (work / "..yaml").string();
    std::ofstream(file) << "data: {source: t_count, n: 10}\nnodes:\n  m: {stage: t_map}\n  s: {stage: t_state_sink}\n"
                           "edges: [m -> s]\ntrain: {epochs: 2, batch: 5}\n";
    for (const std::string& graph_name : {std::string("."), std::string("../../escape"), std::string("new\nline"),
                                          std::string(300, 'g')}) {
      INFO(graph_name);
      Diagnostics diag(file);
      GraphSpec g = load_graph(file, {}, Registry::global(), diag);
      REQUIRE(diag.ok());
      CHECK(g.name == ".");
      g.name = graph_name;
      g.nodes[1].name = "../../x";  // as if the parser had let it through: the path layer holds
      RunConfig cfg;
      cfg.quiet = true;
      RunResult r;
      {
        InDir in(work);
        r = run_graph(g, cfg);
      }
      const fs::path run = work / r.out_dir;
      CHECK(run.lexically_normal().parent_path() == work / "runs");
      CHECK(mode_of(run) == 0700);
      CHECK(mode_of(work / "runs") == 0700);
      // The sink's checkpoint directory is named by the repaired node name ...
      CHECK(files_under(run).count("checkpoint/" + safe_file_name("../../x") + "/state") == 1);
      // ... and nothing was written anywhere but in the run directory.
      fs::remove_all(work / "runs");
      CHECK(files_under(tmp.path) == std::set<std::string>{"a/b/..yaml"});
    }
  }

  SECTION("a head's <node>.pt and a preview's <node>-epoch<E>.png stay in the run directory") {
    TempDir tmp;
    const fs::path run = tmp.path / "a" / "b" / "run";
    fs::create_directories(run);
    RunInfo info;
    info.seed = 1;
    info.classes = {"a", "b"};
    info.out_dir = run.string();
    testing::HarnessOptions opt;
    opt.node = "../../evil";
    testing::Harness head("{stage: dense_head, hidden: 4}", opt);
    head.begin_run(info);
    std::vector<Sample> samples;
    for (int i = 0; i < 4; ++i) {
      float* x = nullptr;
      Tensor t = Tensor::zeros({4}, &x);
      x[i] = 1;
      samples.push_back(testing::features_sample(t, i, 1, Split::train, i % 2));
    }
    head.run_epoch(Split::train, 1, samples, 2);
    dynamic_cast<SinkStage&>(head.stage()).save(run.string());
    testing::Harness preview("{stage: preview}", opt);
    preview.begin_run(info);
    preview.begin_epoch(Split::train, 1);
    preview.consume({testing::image_sample(cv::Mat(8, 8, CV_8UC3, cv::Scalar(1, 2, 3)))});
    preview.end_epoch();
    const std::string safe = safe_file_name("../../evil");
    CHECK(files_under(tmp.path) == std::set<std::string>{"a/b/run/" + safe + ".pt", "a/b/run/" + safe + "-epoch1.png"});
  }
}

TEST_CASE("a run refuses a cache directory that other users can write") {
  test::register_test_stages();
  TempDir tmp;
  const fs::path open = tmp.path / "open";
  fs::create_directories(open);
  fs::permissions(open, fs::perms::all);
  Diagnostics diag("c.yaml");
  GraphSpec g = parse_graph(fmt::format("data: {{source: t_count, n: 10}}\nnodes:\n  memo: {{stage: cache, dir: '{}'}}\n"
                                        "  s: {{stage: t_sink}}\nedges: [memo -> s]\ntrain: {{epochs: 1, batch: 5}}\n",
                                        open.string()),
                            "c.yaml", {}, Registry::global(), diag);
  REQUIRE(diag.ok());
  RunConfig cfg;
  cfg.quiet = true;
  cfg.write_outputs = false;
  CHECK_THROWS_WITH(run_graph(g, cfg),
                    fmt::format("cache directory {0} is writable by every user (mode 0777): anyone could replace cached "
                                "features; run 'chmod o-w {0}' or set PIPE_CACHE_DIR to a private directory "
                                "(docs/security.md)", open.string()));
  CHECK(files_under(open).empty());
}
