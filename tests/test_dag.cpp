// Graphs as DAGs on an explicit plan: the planner's ops and cache keys, fan-out to several
// sinks from one extraction, fan-in joined by sample id at any thread count, and the cache
// invariant (a warm cache never changes a result, errors included).
#include <catch2/catch.hpp>

#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <map>

#include <fmt/format.h>

#include "executor.h"
#include "plan.h"
#include "runner.h"
#include "spec.h"
#include "run_support.h"

using namespace pipeline;
namespace fs = std::filesystem;

namespace {

using test::graph;
const auto metrics = test::sink_results;

// A fresh cache directory for implicit memos and `dir: CACHE` nodes.
std::string fresh_cache(const std::string& name) {
  const fs::path d = fs::temp_directory_path() / fmt::format("pipe-test-dag-{}-{}", name, ::getpid());
  fs::remove_all(d);
  fs::create_directories(d);
  ::setenv("PIPE_CACHE_DIR", d.c_str(), 1);
  return d.string();
}

RunResult run(const std::string& yaml, std::vector<std::string> sets = {}, int threads = 2) {
  const GraphSpec g = graph(yaml, std::move(sets));
  RunConfig cfg;
  cfg.threads = threads;
  cfg.write_outputs = false;
  cfg.quiet = true;
  return run_graph(g, cfg);
}

std::vector<std::string> op_names(const PassPlan& p) {
  std::vector<std::string> out;
  for (const PlanOp& op : p.ops) out.push_back(fmt::format("{}:{}", op_kind_name(op.kind), op.name));
  return out;
}

PlanContext context(const GraphSpec& g, bool present) {
  PlanContext ctx;
  ctx.source_identity = "test-source";
  ctx.fingerprints.assign(g.nodes.size(), "");
  if (present) ctx.present = [](const CachePoint&) { return true; };
  return ctx;
}

std::string key_of(const std::string& yaml, std::vector<std::string> sets, Split split, const std::string& cache) {
  const GraphSpec g = graph(yaml, std::move(sets));
  for (const PassPlan& p : plan_split(g, split, 1, context(g, false)))
    for (const CachePoint& c : p.caches)
      if (c.name == cache) return c.key;
  FAIL("no cache point " << cache);
  return "";
}

const char* kHeads = R"(
data: {source: t_count, n: 40}
nodes:
  dbl:  {stage: t_batch, batch: 8}
  memo: {stage: cache}
  s1:   {stage: t_sink}
  s2:   {stage: t_sink, sleep_us: 200}
  s3:   {stage: t_sink}
edges: [dbl -> memo, memo -> s1, memo -> s2, memo -> s3]
train: {epochs: 3, batch: 6, seed: 3}
)";

// Two branches of different speed and batching, joined by sample id.
const char* kJoin = R"(
data: {source: t_count, n: 120}
nodes:
  noise: {stage: t_noise, amp: 0.25, sleep_us: 400}
  plain: {stage: t_map, amp: 0}
  dbl:   {stage: t_batch, batch: 7}
  sum:   {stage: t_sum}
  sink:  {stage: t_sink}
edges: [noise -> sum, plain -> dbl -> sum, sum -> sink]
train: {epochs: 2, batch: 5, seed: 9}
)";

const char* kViews = R"(
data: {source: t_count, n: 60}
nodes:
  noise: {stage: t_noise, amp: 0.4}
  views: {stage: cache, views: 3}
  sink:  {stage: t_sink}
edges: [noise -> views -> sink]
train: {epochs: 3, batch: 4, seed: 1}
)";

const char* kBad = R"(
data: {source: t_count, n: 40}
nodes:
  check: {stage: t_map, amp: 0, bad: [7, 3]}
  dbl:   {stage: t_batch, batch: 4}
  memo:  {stage: cache}
  sink:  {stage: t_sink}
edges: [check -> dbl -> memo -> sink]
train: {epochs: 2, batch: 4, seed: 1}
)";

}  // namespace

TEST_CASE("the planner: ops per pass, what a cache serves, implicit memos, train-only sinks") {
  SECTION("one cache read feeds three sinks once the entry exists") {
    const GraphSpec g = graph(kHeads);
    const auto cold = plan_split(g, Split::train, 1, context(g, false));
    REQUIRE(cold.size() == 1);
    CHECK(op_names(cold[0]) == std::vector<std::string>{"feed:(feed)", "load:(load)", "batch:dbl", "cache-write:memo",
                                                         "sink:s1", "sink:s2", "sink:s3"});
    const auto warm = plan_split(g, Split::train, 2, context(g, true));
    REQUIRE(warm.size() == 1);
    CHECK(op_names(warm[0]) == std::vector<std::string>{"feed:(feed)", "cache-read:memo", "sink:s1", "sink:s2", "sink:s3"});
    for (size_t i = 2; i < 5; ++i) CHECK(warm[0].ops[i].inputs == std::vector<int>{1});
  }
  SECTION("evaluation: random nodes pass through, batch features are memoized before the sink") {
    const GraphSpec g = graph(R"(
data: {source: t_count, n: 10}
nodes:
  noise: {stage: t_noise}
  dbl:   {stage: t_batch}
  sink:  {stage: t_sink}
  look:  {stage: t_train_sink}
edges: [noise -> dbl -> sink, noise -> look]
)");
    const auto train = plan_split(g, Split::train, 1, context(g, false));
    CHECK(op_names(train.back()) == std::vector<std::string>{"feed:(feed)", "load:(load)", "map:noise", "batch:dbl",
                                                              "sink:sink", "sink:look"});
    const auto val = plan_split(g, Split::validation, 1, context(g, false));
    CHECK(op_names(val.back()) == std::vector<std::string>{"feed:(feed)", "load:(load)", "batch:dbl", "cache-write:(memo)",
                                                            "sink:sink"});
    const auto val2 = plan_split(g, Split::validation, 2, context(g, true));
    CHECK(op_names(val2.back()) == std::vector<std::string>{"feed:(feed)", "cache-read:(memo)", "sink:sink"});
  }
  SECTION("a missing views cache is extracted up front, one pass per view") {
    const GraphSpec g = graph(kViews);
    const auto passes = plan_split(g, Split::train, 1, context(g, false));
    REQUIRE(passes.size() == 4);
    for (int v = 0; v < 3; ++v) {
      CHECK(passes[static_cast<size_t>(v)].extract_view == v);
      CHECK(op_names(passes[static_cast<size_t>(v)]) ==
            std::vector<std::string>{"feed:(feed)", "load:(load)", "map:noise", "cache-write:views"});
    }
    CHECK(op_names(passes[3]) == std::vector<std::string>{"feed:(feed)", "cache-read:views", "sink:sink"});
  }
}

TEST_CASE("cache keys cover what decides the bytes and nothing else") {
  const std::string det = kHeads, rnd = kViews;
  const std::string k = key_of(det, {}, Split::train, "memo");
  CHECK(k.size() == 32);
  // Deterministic upstream: seed and node names do not matter; parameters and split do.
  CHECK(key_of(det, {"train.seed=7"}, Split::train, "memo") == k);
  std::string renamed = det;
  for (size_t p; (p = renamed.find("dbl")) != std::string::npos;) renamed.replace(p, 3, "twice");
  CHECK(key_of(renamed, {}, Split::train, "memo") == k);
  CHECK(key_of(det, {"nodes.dbl.batch=4"}, Split::train, "memo") != k);
  CHECK(key_of(det, {"data.n=41"}, Split::train, "memo") == k);  // identity is the context's here
  CHECK(key_of(det, {}, Split::validation, "memo") != k);
  // Random upstream: the seed, the random node's name and the views kept all matter.
  const std::string v = key_of(rnd, {}, Split::train, "views");
  CHECK(key_of(rnd, {"train.seed=2"}, Split::train, "views") != v);
  CHECK(key_of(rnd, {"nodes.views.views=4"}, Split::train, "views") != v);
  std::string renamed_rnd = rnd;
  renamed_rnd.replace(renamed_rnd.find("noise:"), 5, "jitter");
  renamed_rnd.replace(renamed_rnd.find("noise ->"), 5, "jitter");
  CHECK(key_of(renamed_rnd, {}, Split::train, "views") != v);
  // Evaluation splits never run the random node: its seed does not reach their key.
  CHECK(key_of(rnd, {"train.seed=2"}, Split::validation, "views") == key_of(rnd, {}, Split::validation, "views"));
}

TEST_CASE("fan-out: one extraction trains several sinks, each with its own results") {
  fresh_cache("heads");
  const RunResult r = run(kHeads);
  REQUIRE(r.sinks.size() == 3);
  // Misses = images once (40 train + 20 validation + 20 test), whatever the number of sinks.
  CHECK(r.cache_misses == 80);
  CHECK(r.cache_hits == 2 * 60);
  for (const SinkResult& s : r.sinks) {
    CHECK(s.reports);
    CHECK(s.epochs.size() == 3);
    CHECK(s.test.count == 20);
    CHECK(s.epochs.back().train.count == 40);
  }
  // The sinks saw the same samples: identical metrics (t_sink is a pure function of them).
  CHECK(r.sinks[0].epochs.back().train.loss == r.sinks[1].epochs.back().train.loss);
  const auto& sinks = r.summary.at("sinks");
  CHECK(sinks.size() == 3);
  for (const char* s : {"s1", "s2", "s3"}) {  // the metrics sit inside the sections
    CHECK(sinks.at(s).contains("val_acc"));
    CHECK(sinks.at(s).contains("best_epoch"));
  }
  // A graph with several heads has no flat metric keys: they would be ambiguous.
  CHECK_FALSE(r.summary.contains("test_acc"));
  CHECK_FALSE(r.summary.contains("train_loss"));
}

TEST_CASE("fan-in joins branches by sample id, identically at 1 and 2 threads") {
  std::map<int, std::vector<test::Seen>> seen;
  std::map<int, std::string> result;
  for (int threads : {1, 2}) {
    fresh_cache(fmt::format("join{}", threads));
    const RunResult r = run(kJoin, {}, threads);
    seen[threads] = test::last_seen();
    result[threads] = metrics(r);
  }
  CHECK(result[1] == result[2]);
  REQUIRE(seen[1].size() == seen[2].size());
  // Each joined value is id + noise(id) + 2*id on training data (noise from that sample's own
  // stream), and 3*id on evaluation data, where the random node passes its input through.
  std::map<std::tuple<int, int, int64_t>, int> count;
  for (size_t i = 0; i < seen[2].size(); ++i) {
    const test::Seen& s = seen[2][i];
    CHECK(s.id == seen[1][i].id);
    CHECK(s.value == seen[1][i].value);
    double expect = 3.0 * static_cast<double>(s.id);
    if (s.split == Split::train) {
      Rng rng = Rng::for_sample(9, "noise", s.epoch, s.id, 0);
      expect = static_cast<double>(static_cast<float>(static_cast<float>(s.id) + static_cast<float>(rng.uniform(-0.25, 0.25)))) +
               2.0 * static_cast<double>(s.id);
    }
    REQUIRE(s.value == Approx(expect).margin(1e-4));
    ++count[{static_cast<int>(s.split), s.epoch, s.id}];
  }
  for (const auto& [k, n] : count) CHECK(n == 1);  // every sample once per pass
  CHECK(count.size() == 2 * 120 + 2 * 60 + 60);
}

TEST_CASE("a warm cache never changes a result") {
  SECTION("a views cache filled under another seed is not reused (bug: the key ignored the seed)") {
    fresh_cache("views-a");
    run(kViews, {"train.seed=1"});
    const RunResult warm = run(kViews, {"train.seed=2"});
    CHECK(warm.cache_misses > 0);  // seed 2's views are extracted, not seed 1's reused
    fresh_cache("views-b");
    const RunResult cold = run(kViews, {"train.seed=2"});
    CHECK(metrics(warm) == metrics(cold));
    const RunResult again = run(kViews, {"train.seed=2"});
    CHECK(again.cache_misses == 0);
    CHECK(metrics(again) == metrics(cold));
  }
  SECTION("on_error: fail fails on a warm entry with skipped samples, like a cold run (bug: exited 0)") {
    fresh_cache("bad-a");
    CHECK_THROWS_WITH(run(kBad, {"on_error=fail"}), Catch::Contains("node 'check'") && Catch::Contains("bad sample data"));
    const RunResult cold = run(kBad, {"on_error=skip"});  // fills the cache; ids 3 and 7 of each split fail
    REQUIRE(cold.skipped.size() == 6);
    CHECK(cold.cache_misses > 0);
    CHECK_THROWS_WITH(run(kBad, {"on_error=fail"}), Catch::Contains("node 'check'") && Catch::Contains("bad sample data"));
    const RunResult warm = run(kBad, {"on_error=skip"});
    CHECK(warm.cache_misses == 0);
    CHECK(metrics(warm) == metrics(cold));  // the same skips, named by the same node and reason
  }
}

TEST_CASE("one limiter bounds every branch: a held sink holds the fast branch back") {
  test::register_test_stages();
  const auto params = [](std::vector<std::pair<std::string, ParamValue>> kv) {
    Params p;
    for (auto& [k, v] : kv) p.set(k, v);
    return p;
  };
  test::CountSource src(params({{"n", int64_t{400}}}));
  test::NoiseStage noise(params({{"amp", 0.1}, {"sleep_us", int64_t{0}}, {"fail_on", int64_t{-1}},
                                 {"bad", std::vector<int64_t>{}}}));
  test::RecordSink slow(params({{"sleep_us", int64_t{0}}}));
  test::DoubleBatch dbl(params({{"batch", int64_t{8}}}));
  test::RecordSink fast(params({{"sleep_us", int64_t{0}}}));
  PassSpec p;
  p.count = 400;
  p.in_flight = 16;
  p.sink_batch = 4;
  p.describe = [&](int64_t seq) { return src.describe(Split::train, seq); };
  const auto node = [](std::string name, StageKind kind, Stage* impl, std::vector<int> inputs) {
    PassNode n;
    n.name = std::move(name);
    n.kind = kind;
    n.impl = impl;
    n.inputs = std::move(inputs);
    return n;
  };
  PassNode load = node("(load)", StageKind::map, nullptr, {-1});
  load.fn = [&](Sample& s) { src.load(s); };
  p.nodes = {load, node("noise", StageKind::map, &noise, {0}), node("slow", StageKind::sink, &slow, {1}),
             node("dbl", StageKind::batch_map, &dbl, {1}), node("fast", StageKind::sink, &fast, {3})};
  // The cap: in_flight, raised to twice what partial batches can hold (4 + 8 + 4) plus 2.
  const int64_t cap = 34;
  std::atomic<int64_t> peak{0};
  test::Latch latch;
  p.on_admit = [&](int64_t n) {
    for (int64_t cur = peak.load(); n > cur && !peak.compare_exchange_weak(cur, n);) {
    }
    latch.notify();
  };
  // The slow sink holds its first batch (and with it the serial tail) until the pass has
  // admitted all it may: only the limiter can stop admission there, for both branches.
  bool first = true, filled = false;
  slow.on_consume = [&](const Batch&) {
    if (!first) return;
    first = false;
    filled = latch.wait([&] { return peak.load() >= cap; });
  };
  slow.begin_epoch(Split::train, 1);
  fast.begin_epoch(Split::train, 1);
  Profile prof;
  const PassResult r = run_pass(p, prof);
  CHECK(r.consumed == 400);
  CHECK(slow.consumed == 400);
  CHECK(fast.consumed == 400);
  CHECK(filled);
  CHECK(peak.load() == cap);
  for (size_t i = 0; i < 400; ++i) {
    CHECK(slow.seen[i].id == static_cast<int64_t>(i));
    CHECK(fast.seen[i].id == static_cast<int64_t>(i));
  }
}
