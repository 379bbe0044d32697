// Graph validation: every class of error, reported all at once with exact 1-based positions.
#include <catch2/catch.hpp>

#include <filesystem>

#include "spec.h"
#include "support.h"

using namespace pipeline;

namespace {

std::vector<std::string> errors(const std::string& yaml, const std::vector<std::string>& sets = {}) {
  test::register_test_stages();
  Diagnostics diag("g.yaml");
  parse_graph(yaml, "g.yaml", sets, Registry::global(), diag);
  std::vector<std::string> out;
  for (const Diagnostic& d : diag.items()) out.push_back(d.str());
  return out;
}

using V = std::vector<std::string>;

}  // namespace

TEST_CASE("a valid graph resolves defaults and chain order") {
  test::register_test_stages();
  Diagnostics diag("g.yaml");
  GraphSpec g = parse_graph(R"(
data: {source: t_count}
nodes:
  sink: {stage: t_sink}
  a: {stage: t_map}
edges: [a -> sink]
train: {epochs: 2}
)", "dir/g.yaml", {}, Registry::global(), diag);
  REQUIRE(diag.ok());
  REQUIRE(g.nodes.size() == 2);
  CHECK(g.nodes[0].name == "a");
  CHECK(g.nodes[1].name == "sink");
  CHECK(g.nodes[0].params.number("amp") == 0.25);
  CHECK(g.source_params.integer("n") == 100);
  CHECK(g.train.epochs == 2);
  CHECK(g.train.batch == 20);
  CHECK(g.name == "g");
  // Absolute: paths resolved against it stay right wherever the run's graph.yaml is read.
  CHECK(g.dir == (std::filesystem::current_path() / "dir").string());
}

TEST_CASE("validation errors name file, line and column") {
  SECTION("YAML syntax") {
    CHECK(errors("data: {source: t_count\nnodes: x\n") ==
          V{"g.yaml:2:6: error: YAML syntax: end of map flow not found"});
  }
  SECTION("empty file") {
    CHECK(errors("") == V{"g.yaml:1:1: error: empty graph file: expected a map with 'data', 'nodes' and 'edges'"});
  }
  SECTION("unknown stage with a did-you-mean") {
    CHECK(errors("data: {source: t_count}\nnodes:\n  s: {stage: t_snk}\nedges: [s]\n") ==
          V{"g.yaml:3:14: error: unknown stage 't_snk' in node 's' (did you mean 't_sink'?)"});
  }
  SECTION("unknown parameter with a did-you-mean") {
    CHECK(errors("data: {source: t_count}\nnodes:\n  a: {stage: t_map, apm: 1}\n  s: {stage: t_sink}\nedges: [a -> s]\n") ==
          V{"g.yaml:3:21: error: unknown parameter 'apm' for stage 't_map' (did you mean 'amp'?)"});
  }
  SECTION("ill-typed and out-of-range parameters, all reported") {
    CHECK(errors("data: {source: t_count, n: many}\nnodes:\n  a: {stage: t_map, amp: 11}\n  s: {stage: t_sink}\nedges: [a -> s]\n") ==
          V{"g.yaml:1:28: error: parameter 'n' of source 't_count' must be integer, got 'many'",
            "g.yaml:3:26: error: parameter 'amp' of stage 't_map' is 11, out of range [0, 10]"});
  }
  SECTION("missing required parameter") {
    Registry& r = Registry::global();
    test::register_test_stages();
    if (!r.find("t_required")) {
      StageSchema s;
      s.name = "t_required";
      s.consumes = s.produces = Payload::features;
      s.param({"path", ParamType::string, "a path", std::nullopt, {}, {}, {}, -1});
      r.add(s, [](const Params& p, const StageContext&) { return std::make_unique<test::NoiseStage>(p); });
    }
    CHECK(errors("data: {source: t_count}\nnodes:\n  a: {stage: t_required}\n  s: {stage: t_sink}\nedges: [a -> s]\n") ==
          V{"g.yaml:3:6: error: missing required parameter 'path' for stage 't_required'"});
  }
  SECTION("edge to an unknown node points into the chain string") {
    CHECK(errors("data: {source: t_count}\nnodes:\n  a: {stage: t_map}\n  s: {stage: t_sink}\nedges: [a -> b -> s]\n") ==
          V{"g.yaml:5:14: error: edge to unknown node 'b'"});
  }
  SECTION("duplicate node") {
    CHECK(errors("data: {source: t_count}\nnodes:\n  a: {stage: t_map}\n  a: {stage: t_map}\n  s: {stage: t_sink}\nedges: [a -> s]\n") ==
          V{"g.yaml:4:3: error: duplicate node 'a' (first defined at line 3)"});
  }
  SECTION("cycle") {
    CHECK(errors("data: {source: t_count}\nnodes:\n  a: {stage: t_map}\n  b: {stage: t_map}\n  s: {stage: t_sink}\nedges: [s, a -> b, b -> a]\n") ==
          V{"g.yaml:6:17: error: cycle: 'a' -> 'b' leads back to 'a'"});
  }
  SECTION("disconnected node") {
    CHECK(errors("data: {source: t_count}\nnodes:\n  a: {stage: t_map}\n  lost: {stage: t_map}\n  s: {stage: t_sink}\nedges: [a -> s]\n") ==
          V{"g.yaml:4:3: error: node 'lost' is on no edge: it is not connected to the graph"});
  }
  SECTION("kinds in an impossible order") {
    CHECK(errors("data: {source: t_count}\nnodes:\n  a: {stage: t_map}\n  s: {stage: t_sink}\nedges: [s -> a]\n") ==
          V{"g.yaml:5:9: error: sink 's' (t_sink) must end its branch, but it feeds 'a'",
            "g.yaml:3:3: error: the branch ends at 'a' (t_map), which is not a sink: every branch needs a head or another sink at its end"});
    CHECK(errors("data: {source: t_count}\nnodes:\n  a: {stage: t_needs_image}\n  s: {stage: t_sink}\nedges: [a -> s]\n") ==
          V{"g.yaml:5:9: error: node 'a' (t_needs_image) consumes image but receives features from the source"});
  }
  SECTION("a random stage upstream of a cache that keeps no views") {
    CHECK(errors("data: {source: t_count}\nnodes:\n  r: {stage: t_noise}\n  c: {stage: cache}\n  s: {stage: t_sink}\nedges: [r -> c -> s]\n") ==
          V{"g.yaml:6:14: error: cache 'c' keeps no views but random stage 'r' (t_noise) runs upstream: it would "
            "freeze one augmented view forever; set 'views: K' on the cache or move it before 'r'"});
    CHECK(errors("data: {source: t_count}\nnodes:\n  r: {stage: t_noise}\n  c: {stage: cache, views: 3}\n  s: {stage: t_sink}\nedges: [r -> c -> s]\n").empty());
  }
  SECTION("unknown top-level key and bad on_error") {
    CHECK(errors("data: {source: t_count}\nnodes:\n  s: {stage: t_sink}\nedges: [s]\ntrian: {epochs: 2}\non_error: ignore\n") ==
          V{"g.yaml:5:1: error: unknown top-level key 'trian' (did you mean 'train'?)",
            "g.yaml:6:11: error: 'on_error' must be 'fail' or 'skip', got 'ignore'"});
  }
  SECTION("bad train values") {
    CHECK(errors("data: {source: t_count}\nnodes:\n  s: {stage: t_sink}\nedges: [s]\ntrain: {epochs: 0, batch: x}\n") ==
          V{"g.yaml:5:17: error: parameter 'epochs' in 'train' is 0, out of range [1, 100000]",
            "g.yaml:5:27: error: parameter 'batch' in 'train' must be integer, got 'x'"});
  }
}

TEST_CASE("graphs are DAGs: fan-out and fan-in resolve, and their mistakes are diagnosed") {
  test::register_test_stages();
  SECTION("fan-out and fan-in in topological order, inputs in edge order") {
    Diagnostics diag("g.yaml");
    const GraphSpec g = parse_graph(
        "data: {source: t_count}\nnodes:\n  s2: {stage: t_sink}\n  j: {stage: t_sum}\n  s: {stage: t_sink}\n"
        "  b: {stage: t_batch}\n  a: {stage: t_map}\nedges: [b -> j, a -> j, j -> s, a -> s2]\n",
        "g.yaml", {}, Registry::global(), diag);
    REQUIRE(diag.ok());
    std::vector<std::string> names;
    for (const NodeSpec& n : g.nodes) names.push_back(n.name);
    CHECK(names == std::vector<std::string>{"b", "a", "s2", "j", "s"});
    CHECK(g.find("j")->inputs == std::vector<int>{0, 1});  // b first: the edge order
    CHECK(g.find("s2")->inputs == std::vector<int>{1});
    CHECK(g.find("s")->inputs == std::vector<int>{3});
    CHECK(g.find("a")->inputs.empty());
    CHECK_FALSE(g.is_chain());
    CHECK(g.resolved["edges"].size() == 4);
  }
  SECTION("fan-in into a stage that takes one input") {
    CHECK(errors("data: {source: t_count}\nnodes:\n  a: {stage: t_map}\n  b: {stage: t_batch}\n  s: {stage: t_sink}\n"
                 "edges: [a -> s, b -> s]\n") ==
          V{"g.yaml:6:22: error: node 's' (t_sink) takes one input but is fed by 'a' and 'b'; join them first (e.g. a "
            "'concat' node)"});
  }
  SECTION("a join fed once") {
    CHECK(errors("data: {source: t_count}\nnodes:\n  a: {stage: t_map}\n  j: {stage: t_sum}\n  s: {stage: t_sink}\n"
                 "edges: [a -> j -> s]\n") ==
          V{"g.yaml:6:14: error: node 'j' (t_sum) joins several inputs but is fed by 'a' only"});
  }
  SECTION("a node fed twice by one edge, a node on no edge and a bad parameter: all at once") {
    CHECK(errors("data: {source: t_count}\nnodes:\n  a: {stage: t_map, amp: 20}\n  lost: {stage: t_map}\n"
                 "  s: {stage: t_sink}\nedges: [a -> s, a -> s]\n") ==
          V{"g.yaml:3:26: error: parameter 'amp' of stage 't_map' is 20, out of range [0, 10]",
            "g.yaml:6:22: error: edge 'a -> s' is listed twice: 's' would receive every sample twice",
            "g.yaml:4:3: error: node 'lost' is on no edge: it is not connected to the graph"});
  }
  SECTION("a random stage on one branch upstream of a plain cache") {
    CHECK(errors("data: {source: t_count}\nnodes:\n  r: {stage: t_noise}\n  b: {stage: t_batch}\n  j: {stage: t_sum}\n"
                 "  c: {stage: cache}\n  s: {stage: t_sink}\nedges: [r -> j, b -> j, j -> c -> s]\n") ==
          V{"g.yaml:8:30: error: cache 'c' keeps no views but random stage 'r' (t_noise) runs upstream: it would "
            "freeze one augmented view forever; set 'views: K' on the cache or move it before 'r'"});
  }
  SECTION("a cycle through a join") {
    CHECK(errors("data: {source: t_count}\nnodes:\n  a: {stage: t_map}\n  j: {stage: t_sum}\n  s: {stage: t_sink}\n"
                 "edges: [a -> j -> s, j -> a]\n") ==
          V{"g.yaml:6:14: error: cycle: 'a' -> 'j' leads back to 'a'"});
  }
}

TEST_CASE("overrides given with --set go through the same validation") {
  const std::string base = "data: {source: t_count}\nnodes:\n  a: {stage: t_map}\n  s: {stage: t_sink}\nedges: [a -> s]\n";
  test::register_test_stages();
  Diagnostics diag("g.yaml");
  GraphSpec g = parse_graph(base, "g.yaml", {"nodes.a.amp=0.5", "train.epochs=3"}, Registry::global(), diag);
  REQUIRE(diag.ok());
  CHECK(g.nodes[0].params.number("amp") == 0.5);
  CHECK(g.train.epochs == 3);
  CHECK(errors(base, {"nodes.a.apm=1"}) ==
        V{"--set nodes.a.apm=1: error: unknown parameter 'apm' for stage 't_map' (did you mean 'amp'?)"});
  CHECK(errors(base, {"nodes.a.amp=[1, 2]"}) ==
        V{"--set nodes.a.amp=[1, 2]: error: parameter 'amp' of stage 't_map' must be number, got a list"});
  CHECK(errors(base, {"nodes.a.stage.x=1"}) ==
        V{"--set nodes.a.stage.x=1: error: 'nodes.a.stage' is a scalar, not a map: cannot set a key inside it"});
  CHECK(errors(base, {"nodes.a.amp.x=1"}) ==
        V{"--set nodes.a.amp.x=1: error: parameter 'amp' of stage 't_map' must be number, got a map"});
  CHECK(errors(base, {"noequals"}) == V{"--set noequals: error: expected KEY.PATH=VALUE"});
}
