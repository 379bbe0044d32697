// Plugins built in this tree: one loads and its stage runs in a graph; each mismatch is
// refused with a message naming the file and both sides.
#include <catch2/catch.hpp>

#include "plugin_loader.h"
#include "runner.h"
#include "spec.h"
#include "support.h"

using namespace pipeline;

namespace {
std::string plugin(const std::string& variant) {
  return std::string(PIPE_BINARY_DIR) + "/test-plugins/pipe_test_plugin_" + variant + ".so";
}
}  // namespace

TEST_CASE("a plugin built in the tree loads and its stage runs in a graph") {
  test::register_test_stages();
  load_plugin(plugin("good"), Registry::global());
  const StageEntry* e = Registry::global().find("t_scale");
  REQUIRE(e);
  CHECK(e->origin == "plugin " + plugin("good") + " (scale_plugin 1.0.0)");
  load_plugin(plugin("good"), Registry::global());  // loading twice is a no-op

  Diagnostics diag("p.yaml");
  GraphSpec g = parse_graph(R"(
data: {source: t_count, n: 10}
nodes:
  x3: {stage: t_scale, factor: 3}
  sink: {stage: t_sink}
edges: [x3 -> sink]
train: {epochs: 1, batch: 5}
)", "p.yaml", {}, Registry::global(), diag);
  REQUIRE(diag.ok());
  RunConfig cfg;
  cfg.write_outputs = false;
  cfg.quiet = true;
  run_graph(g, cfg);
  const auto& seen = test::last_seen();
  REQUIRE(seen.size() == 10 + 5 + 5);
  for (const auto& s : seen) CHECK(s.value == static_cast<float>(s.id) * 3);
}

TEST_CASE("mismatched plugins are refused with the file and both versions") {
  const std::string host = host_build_fingerprint();
  CHECK_THROWS_WITH(load_plugin(plugin("bad_abi"), Registry::global()),
                    "plugin " + plugin("bad_abi") + ": plugin ABI version 999 does not match pipe's 1");
  CHECK_THROWS_WITH(load_plugin(plugin("newer_api"), Registry::global()),
                    "plugin " + plugin("newer_api") +
                        ": built against pipe API 0.4, this pipe provides 0.3 (a plugin loads when the major "
                        "versions match and its minor is not newer)");
  CHECK_THROWS_WITH(load_plugin(plugin("bad_fingerprint"), Registry::global()),
                    "plugin " + plugin("bad_fingerprint") +
                        ": build fingerprint mismatch: plugin 'gcc-12;cxx11abi=1;torch=2.1;opencv=4.6.0;tbb=2021.8', "
                        "pipe '" + host + "'; rebuild the plugin against this pipe");
  CHECK_THROWS_WITH(load_plugin(plugin("no_entry"), Registry::global()),
                    "plugin " + plugin("no_entry") +
                        ": missing entry point 'pipe_plugin_entry' (define it with PIPE_PLUGIN(...) from <pipe/plugin.h>)");
  CHECK_THROWS_WITH(load_plugin(plugin("duplicate"), Registry::global()),
                    "plugin " + plugin("duplicate") + ": stage 'decode' from plugin " + plugin("duplicate") +
                        " (scale_plugin 1.0.0) is already registered by built-in");
  CHECK_THROWS_WITH(load_plugin("/nonexistent/x.so", Registry::global()), "plugin /nonexistent/x.so: file not found");
  CHECK(Registry::global().find("t_scale_abi") == nullptr);
  CHECK(Registry::global().find("t_scale_fp") == nullptr);
  CHECK(Registry::global().find("t_scale_api") == nullptr);
}
