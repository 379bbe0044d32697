// Executor properties on the real flow graph: deterministic at any thread count, bounded,
// ordered, failing cleanly, skipping bad samples.
#include <catch2/catch.hpp>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <memory>
#include <mutex>
#include <random>
#include <set>
#include <thread>

#include <nlohmann/json.hpp>

#include "executor.h"
#include "runner.h"
#include "spec.h"
#include "torch_runtime.h"
#include "run_support.h"

#include <oneapi/tbb/global_control.h>

using namespace pipeline;

namespace {

using test::graph;

const char* kRandomGraph = R"(
data: {source: t_count, n: 200}
nodes:
  noise: {stage: t_noise, amp: 0.4, sleep_us: 300}
  dbl:   {stage: t_batch, batch: 7}
  sink:  {stage: t_sink}
edges: [noise -> dbl -> sink]
train: {epochs: 3, batch: 5, seed: 42}
)";

struct Record {
  std::vector<test::Seen> seen;
  std::string summary_metrics;
};

Record run_with_threads(int threads, const std::string& yaml, std::vector<std::string> sets = {}) {
  GraphSpec g = graph(yaml, sets);
  RunConfig cfg;
  cfg.threads = threads;
  cfg.write_outputs = false;
  cfg.quiet = true;
  RunResult r = run_graph(g, cfg);
  Record rec;
  rec.seen = test::last_seen();
  auto m = nlohmann::json::array();
  for (const EpochMetrics& e : r.epochs)
    m.push_back({e.train.loss, e.train.accuracy, e.validation.loss, e.validation.accuracy});
  m.push_back(r.test.accuracy);
  rec.summary_metrics = m.dump();
  return rec;
}

}  // namespace

TEST_CASE("a seeded graph with a random stage gives identical results at 1 and 2 threads") {
  const Record a = run_with_threads(1, kRandomGraph);
  const Record b = run_with_threads(2, kRandomGraph);
  auto census = [](const Record& r) {
    std::map<std::pair<int, int>, int> c;
    for (const auto& s : r.seen) ++c[{static_cast<int>(s.split), s.epoch}];
    std::string out;
    for (const auto& [k, v] : c) out += fmt::format("{}/{}:{} ", k.first, k.second, v);
    return out;
  };
  INFO("1 thread: " << census(a) << "; 2 threads: " << census(b));
  REQUIRE(a.seen.size() == b.seen.size());
  // train 200 x 3 epochs + validation 100 x 3 + test 100
  REQUIRE(a.seen.size() == 200 * 3 + 100 * 3 + 100);
  for (size_t i = 0; i < a.seen.size(); ++i) {
    INFO("record " << i);
    REQUIRE(a.seen[i].id == b.seen[i].id);
    REQUIRE(a.seen[i].value == b.seen[i].value);  // bitwise: same draws, same order
  }
  CHECK(a.summary_metrics == b.summary_metrics);

  SECTION("the noise really is random, per epoch and per seed") {
    // Same sample in epochs 1 and 2 of training gets different noise.
    std::map<int64_t, float> first;
    bool differs = false;
    for (const auto& s : a.seen)
      if (s.split == Split::train) {
        if (s.epoch == 1) first[s.id] = s.value;
        if (s.epoch == 2 && first.count(s.id) && first[s.id] != s.value) differs = true;
      }
    CHECK(differs);
    const Record c = run_with_threads(2, kRandomGraph, {"train.seed=43"});
    CHECK(c.summary_metrics != a.summary_metrics);
  }
  SECTION("random stages do not touch validation and test samples") {
    for (const auto& s : a.seen)
      if (s.split != Split::train) REQUIRE(s.value == static_cast<float>(s.id) * 2);
  }
  SECTION("training order is reshuffled each epoch, evaluation runs in id order") {
    std::vector<int64_t> e1, e2, val;
    for (const auto& s : a.seen) {
      if (s.split == Split::train && s.epoch == 1) e1.push_back(s.id);
      if (s.split == Split::train && s.epoch == 2) e2.push_back(s.id);
      if (s.split == Split::validation && s.epoch == 1) val.push_back(s.id);
    }
    CHECK(e1 != e2);
    std::vector<int64_t> sorted = e1;
    std::sort(sorted.begin(), sorted.end());
    for (int64_t i = 0; i < 200; ++i) REQUIRE(sorted[static_cast<size_t>(i)] == i);
    for (int64_t i = 0; i < 100; ++i) REQUIRE(val[static_cast<size_t>(i)] == i);
  }
}

namespace {

// A pass straight on the executor with the tests' stages.
struct PassFixture {
  test::CountSource source{[] {
    Params p;
    p.set("n", int64_t{400});
    return p;
  }()};
  std::unique_ptr<test::NoiseStage> noise;
  std::unique_ptr<test::RecordSink> sink;
  PassSpec pass;
  Profile profile;

  PassFixture(int64_t sleep_us, int64_t sink_sleep_us, int64_t fail_on = -1, std::vector<int64_t> bad = {}) {
    Params np;
    np.set("amp", 0.0);
    np.set("sleep_us", sleep_us);
    np.set("fail_on", fail_on);
    np.set("bad", bad);
    noise = std::make_unique<test::NoiseStage>(np);
    Params sp;
    sp.set("sleep_us", sink_sleep_us);
    sink = std::make_unique<test::RecordSink>(sp);
    pass.split = Split::train;
    pass.epoch = 1;
    pass.seed = 7;
    pass.count = 400;
    pass.describe = [this](int64_t seq) { return source.describe(Split::train, seq); };
    pass.load = [this](Sample& s) { source.load(s); };
    PassNode n;
    n.name = "noise";
    n.stage = "t_noise";
    n.kind = StageKind::map;
    n.impl = noise.get();
    n.random = true;
    PassNode k;
    k.name = "sink";
    k.stage = "t_sink";
    k.kind = StageKind::sink;
    k.impl = sink.get();
    k.concurrency = Concurrency::serial;
    pass.nodes = {n, k};
    pass.sink_batch = 4;
    sink->begin_epoch(Split::train, 1);
  }
};

}  // namespace

using test::Latch;

TEST_CASE("samples in flight never exceed the limit, and the limit is what holds the feed back") {
  oneapi::tbb::global_control c(oneapi::tbb::global_control::max_allowed_parallelism, 2);
  PassFixture f(/*sleep_us=*/0, /*sink_sleep_us=*/0);
  f.pass.in_flight = 16;
  // The test's own counter: +1 when a sample is loaded, -1 when the sink has consumed it.
  std::atomic<int64_t> live{0}, peak{0};
  Latch latch;
  f.pass.load = [&](Sample& s) {
    const int64_t now = ++live;
    int64_t p = peak.load();
    while (now > p && !peak.compare_exchange_weak(p, now)) {}
    latch.notify();
    f.source.load(s);
  };
  // Consumed samples leave the graph: the executor reports them through progress.
  std::atomic<int64_t> retired{0};
  f.pass.progress = [&](int64_t done, int64_t) {
    live -= done - retired.load();
    retired = done;
  };
  // The sink holds its first batch until 16 samples are loaded and none has retired: the feed
  // can only stop there if the limiter stops it (a limit below 16 never releases the sink).
  bool first = true, filled = false;
  f.sink->on_consume = [&](const Batch&) {
    if (!first) return;
    first = false;
    filled = latch.wait([&] { return live.load() >= 16; });
  };
  PassResult r = run_pass(f.pass, f.profile);
  CHECK(filled);
  CHECK(r.consumed == 400);
  CHECK(f.sink->consumed == 400);
  CHECK(peak.load() == 16);
}

TEST_CASE("batches keep feed order when later samples finish first") {
  oneapi::tbb::global_control c(oneapi::tbb::global_control::max_allowed_parallelism, 4);
  // Sample 100 waits in the region until sample 107 is past a point: the sink (reachable
  // first only without the sequencer), or its own load (with it). One hold at a time, so the
  // other thread is always free to bring 107 along.
  const auto hold = [](PassFixture& f, bool ordered, std::vector<int>& failed) {
    auto loaded = std::make_shared<std::vector<std::atomic<bool>>>(400);
    auto consumed = std::make_shared<std::vector<std::atomic<bool>>>(400);
    auto latch = std::make_shared<Latch>();
    f.pass.ordered = ordered;
    f.pass.load = [&f, &failed, ordered, loaded, consumed, latch](Sample& s) {
      (*loaded)[static_cast<size_t>(s.id)] = true;
      latch->notify();
      if (s.id == 100) {
        auto& flag = ordered ? (*loaded)[static_cast<size_t>(s.id + 7)] : (*consumed)[static_cast<size_t>(s.id + 7)];
        if (!latch->wait([&] { return flag.load(); })) failed.push_back(static_cast<int>(s.id));
      }
      f.source.load(s);
    };
    f.sink->on_consume = [consumed, latch](const Batch& b) {
      for (const Sample& s : b.samples) (*consumed)[static_cast<size_t>(s.id)] = true;
      latch->notify();
    };
  };
  PassFixture f(/*sleep_us=*/0, 0);
  f.pass.in_flight = 64;
  std::vector<int> failed;
  hold(f, true, failed);
  PassResult r = run_pass(f.pass, f.profile);
  CHECK(failed.empty());
  REQUIRE(r.consumed == 400);
  REQUIRE(f.sink->seen.size() == 400);
  for (size_t i = 0; i < 400; ++i) REQUIRE(f.sink->seen[i].id == static_cast<int64_t>(i));
  for (size_t i = 0; i < f.sink->batches.size(); ++i) REQUIRE(f.sink->batches[i] == 4);

  SECTION("without the sequencer, the same holds do reorder (the test can see disorder)") {
    PassFixture g(0, 0);
    g.pass.in_flight = 64;
    std::vector<int> g_failed;
    hold(g, false, g_failed);
    run_pass(g.pass, g.profile);
    CHECK(g_failed.empty());  // sample id + 7 reached the sink while id was held
    REQUIRE(g.sink->seen.size() == 400);
    bool disordered = false;
    for (size_t i = 0; i < g.sink->seen.size(); ++i) disordered |= g.sink->seen[i].id != static_cast<int64_t>(i);
    CHECK(disordered);
  }
}

TEST_CASE("an exception in a node cancels the pass once, naming node and sample") {
  oneapi::tbb::global_control c(oneapi::tbb::global_control::max_allowed_parallelism, 2);
  PassFixture f(200, 0, /*fail_on=*/137);
  try {
    run_pass(f.pass, f.profile);
    FAIL("run_pass did not throw");
  } catch (const NodeError& e) {
    CHECK(e.node == "noise");
    CHECK(e.sample == "train#137 (count:train#137)");
    CHECK(std::string(e.what()) == "node 'noise' failed on sample train#137 (count:train#137): boom");
  }
  CHECK(f.sink->consumed < 400);

  SECTION("a data error fails the pass under on_error: fail") {
    PassFixture g(0, 0, -1, {5});
    CHECK_THROWS_WITH(run_pass(g.pass, g.profile), Catch::Contains("train#5") && Catch::Contains("bad sample data"));
  }
  SECTION("and is counted and listed under on_error: skip") {
    PassFixture g(0, 0, -1, {5, 17, 399});
    g.pass.skip_bad = true;
    PassResult r = run_pass(g.pass, g.profile);
    CHECK(g.sink->consumed == 397);
    REQUIRE(r.skipped.size() == 3);
    CHECK(r.skipped[0].id == 5);
    CHECK(r.skipped[1].id == 17);
    CHECK(r.skipped[2].id == 399);
    CHECK(r.skipped[0].sample == "count:train#5");
    CHECK(r.skipped[0].reason == "bad sample data");
    CHECK(r.skipped[0].node == "noise");
  }
}

TEST_CASE("the profile counts items and busy time per node") {
  oneapi::tbb::global_control c(oneapi::tbb::global_control::max_allowed_parallelism, 2);
  PassFixture f(1000, 0);
  const auto t0 = std::chrono::steady_clock::now();
  run_pass(f.pass, f.profile);
  const auto wall_ns = std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - t0).count();
  std::map<std::string, const NodeProfile*> by;
  for (const NodeProfile* p : f.profile.nodes()) by[p->node] = p;
  REQUIRE(by.count("noise"));
  CHECK(by["noise"]->items == 400);
  CHECK(by["sink"]->items == 400);
  // Bounds that hold on any machine, however loaded: each sample sleeps at least
  // (id * 7919 % 1000) us inside the node, and busy time is measured inside the pass on at
  // most 2 threads.
  int64_t slept_ns = 0;
  for (int64_t id = 0; id < 400; ++id) slept_ns += (id * 7919 % 1000) * 1000;
  CHECK(by["noise"]->busy_ns >= slept_ns);
  CHECK(by["noise"]->busy_ns <= 2 * wall_ns);
}

namespace {

// A batch stage standing in for a CPU forward on the whole thread team: it says whether it
// fills the cores, and shows when it is running.
class TeamBatch : public BatchStage, public FillsCores {
 public:
  TeamBatch(bool fills, int fail_on_batch) : fills_(fills), fail_on_(fail_on_batch) {}
  int batch_size() const override { return 8; }
  bool fills_cores() const override { return fills_; }
  void process(Batch&) override {
    threads.insert(std::this_thread::get_id());  // serial: one call at a time
    running = true;
    std::this_thread::sleep_for(std::chrono::milliseconds(3));
    running = false;
    if (++batches == fail_on_) throw std::runtime_error("team failed");
  }
  std::atomic<bool> running{false};
  int batches = 0;
  std::set<std::thread::id> threads;  // that ran a batch

 private:
  bool fills_;
  int fail_on_;
};

// A sink standing in for a CPU training step on the whole thread team (train_base), or one
// that does not fill the cores (a head's step on one thread).
class TeamSink : public SinkStage, public FillsCores {
 public:
  explicit TeamSink(bool fills = true) : fills_(fills) {}
  bool fills_cores() const override { return fills_; }
  void begin_epoch(Split, int) override {}
  void consume(Batch& b) override {
    threads.insert(std::this_thread::get_id());
    running = true;
    std::this_thread::sleep_for(std::chrono::milliseconds(3));
    running = false;
    consumed += static_cast<int64_t>(b.size());
  }
  SplitMetrics end_epoch() override { return {}; }
  std::atomic<bool> running{false};
  int64_t consumed = 0;
  std::set<std::thread::id> threads;

 private:
  bool fills_;
};

struct GateRun {
  int64_t started_beside = 0;        // samples whose load began while the batch stage ran
  int64_t started_beside_after = 0;  // ... while the sink behind it (`after`) ran
  int64_t gated_ns = 0;              // what the profile says the load waited at the gate
  PassResult result;
};

// The per-sample work on TBB threads, held back by the gate (`on_core_team` false), or on the
// core thread's team (true, run_pass's default).
GateRun run_beside_team(PassFixture& f, TeamBatch& team, const TeamSink* after = nullptr, bool on_core_team = false) {
  f.pass.on_core_team = on_core_team;
  PassNode b;
  b.name = "team";
  b.stage = "t_team";
  b.kind = StageKind::batch_map;
  b.impl = &team;
  b.concurrency = Concurrency::serial;
  f.pass.nodes.insert(f.pass.nodes.begin() + 1, b);
  std::atomic<int64_t> beside{0}, beside_after{0};
  const auto load = f.pass.load;
  f.pass.load = [&, load](Sample& s) {
    if (team.running) ++beside;
    if (after && after->running) ++beside_after;
    load(s);
  };
  GateRun r;
  r.result = run_pass(f.pass, f.profile);
  r.started_beside = beside;
  r.started_beside_after = beside_after;
  for (const NodeProfile* p : f.profile.nodes())
    if (p->node == "load") r.gated_ns = p->gated_ns;
  return r;
}

}  // namespace

TEST_CASE("per-sample work waits while a batch stage that fills the cores runs") {
  oneapi::tbb::global_control c(oneapi::tbb::global_control::max_allowed_parallelism, 2);
  PassFixture f(/*sleep_us=*/100, 0);
  TeamBatch team(/*fills=*/true, /*fail_on_batch=*/0);
  const GateRun r = run_beside_team(f, team);
  CHECK(f.sink->consumed == 400);
  CHECK(team.batches == 50);
  // A load that passed the open gate just before the batch began may still start beside
  // it (a preemption in a window of nanoseconds); without the gate most loads do.
  CHECK(r.started_beside <= 8);
  CHECK(r.gated_ns > 0);
  // Every batch, in this pass and the next, on one thread that is none of the pass's: an
  // OpenMP team belongs to the thread that starts it, and the tail moves between TBB threads.
  PassFixture next(100, 0);
  run_beside_team(next, team);
  CHECK(team.batches == 100);
  CHECK(team.threads.size() == 1);
  CHECK(team.threads.count(std::this_thread::get_id()) == 0);

  SECTION("a batch stage that does not fill the cores (a GPU forward) is not waited for") {
    PassFixture g(100, 0);
    TeamBatch gpu(/*fills=*/false, 0);
    const GateRun q = run_beside_team(g, gpu);
    CHECK(g.sink->consumed == 400);
    CHECK(q.started_beside >= 100);
    CHECK(q.gated_ns == 0);
  }
  SECTION("the gate opens again when the batch stage throws: the pass fails, nothing hangs") {
    PassFixture g(100, 0);
    TeamBatch failing(/*fills=*/true, /*fail_on_batch=*/3);
    CHECK_THROWS_WITH(run_beside_team(g, failing), Catch::Contains("node 'team' failed") && Catch::Contains("team failed"));
    CHECK(failing.batches == 3);
  }
}

TEST_CASE("per-sample work goes on while what follows a batch stage that fills the cores runs") {
  // The gate covers the batch stage alone: the ops its outputs reach next in the tail (a
  // cache write, a head on one thread) leave a core free for decoding the next samples.
  oneapi::tbb::global_control c(oneapi::tbb::global_control::max_allowed_parallelism, 2);
  PassFixture f(/*sleep_us=*/100, 0);
  TeamSink head(/*fills=*/false);
  f.pass.nodes.back().impl = &head;
  f.pass.sink_batch = 4;
  TeamBatch team(/*fills=*/true, 0);
  const GateRun r = run_beside_team(f, team, &head);
  CHECK(head.consumed == 400);
  CHECK(r.started_beside <= 8);
  // The head sleeps 100 x 3 ms, a sample takes 0.1 ms: most loads start beside the head.
  // With the gate held until the batch's outputs had passed the head: 0.
  CHECK(r.started_beside_after >= 100);
}

namespace {

// An extraction pass: the fixture's sink replaced by a cache write that records what it wrote,
// `write_us` a sample, and whether a load began while it was writing.
struct CacheWrites {
  std::vector<int64_t> ids;
  std::atomic<bool> writing{false};
  std::atomic<int64_t> loads_beside{0};

  CacheWrites(PassFixture& f, int64_t write_us) {
    PassNode w;
    w.name = "memo";
    w.stage = "cache";
    w.kind = StageKind::cache;
    w.write = [this, write_us](const Sample& s) {
      writing = true;
      std::this_thread::sleep_for(std::chrono::microseconds(write_us));
      ids.push_back(s.id);
      writing = false;
    };
    f.pass.nodes.back() = w;
    const auto load = f.pass.load;
    f.pass.load = [this, load](Sample& s) {
      if (writing) ++loads_beside;
      load(s);
    };
  }
};

}  // namespace

TEST_CASE("an extraction's per-sample work runs on the core thread's team, a batch at a time") {
  oneapi::tbb::global_control c(oneapi::tbb::global_control::max_allowed_parallelism, 2);
  configure_threads(2);
  PassFixture f(/*sleep_us=*/100, 0);
  CacheWrites memo(f, /*write_us=*/200);
  TeamBatch team(/*fills=*/true, 0);
  std::mutex mu;
  std::set<std::thread::id> loaders;
  const auto load = f.pass.load;
  f.pass.load = [&, load](Sample& s) {
    {
      std::lock_guard<std::mutex> lock(mu);
      loaders.insert(std::this_thread::get_id());
    }
    load(s);
  };
  const GateRun r = run_beside_team(f, team, nullptr, /*on_core_team=*/true);
  REQUIRE(memo.ids.size() == 400);
  for (size_t i = 0; i < 400; ++i) REQUIRE(memo.ids[i] == static_cast<int64_t>(i));
  CHECK(team.batches == 50);
  // One job at a time on the core thread: never a load beside the batch stage, nothing gated.
  CHECK(r.started_beside == 0);
  CHECK(r.gated_ns == 0);
  // The team: the core thread (which ran every batch) and its one other thread (none under
  // ThreadSanitizer, where the team's items run on the core thread alone).
  REQUIRE(team.threads.size() == 1);
  int team_threads = 0;
  run_on_core_thread([&] { team_threads = torch_parallel_for_each_threads(); });
#if !defined(__SANITIZE_THREAD__)
  CHECK(team_threads == 2);
#endif
  CHECK(loaders.size() == static_cast<size_t>(team_threads));
  CHECK(loaders.count(*team.threads.begin()) == 1);
  CHECK(loaders.count(std::this_thread::get_id()) == 0);
  // The team takes the next batch's samples as the batch stage returns, while this thread
  // writes its outputs (8 x 0.2 ms a batch; 8 x 0.1 ms of loads on two threads). Handed over
  // only once the writes were done: 0.
  CHECK(memo.loads_beside >= 100);

  SECTION("with a sink, on TBB threads and gated") {
    PassFixture g(/*sleep_us=*/100, 0);
    TeamBatch t2(/*fills=*/true, 0);
    const GateRun q = run_beside_team(g, t2, nullptr, /*on_core_team=*/true);
    CHECK(g.sink->consumed == 400);
    CHECK(q.gated_ns > 0);
  }
  SECTION("a failing sample fails the pass once the samples before it went on, whichever failed first") {
    // Samples 16..23 are one chunk (the batch stage takes 8). 21 fails at once and 18 after
    // 20 ms: the pass names 18, the first in feed order, once 0..15 have been written.
    PassFixture g(0, 0, -1, {18, 21});
    CacheWrites m2(g, 0);
    const auto slow = g.pass.load;
    g.pass.load = [slow](Sample& s) {
      if (s.id == 18) std::this_thread::sleep_for(std::chrono::milliseconds(20));
      slow(s);
    };
    TeamBatch t2(/*fills=*/true, 0);
    CHECK_THROWS_WITH(run_beside_team(g, t2, nullptr, true),
                      Catch::Contains("train#18") && !Catch::Contains("train#21"));
    CHECK(t2.batches == 2);
    CHECK(m2.ids.size() == 16);
  }
  SECTION("skipped samples are listed in feed order and the others go on in order") {
    PassFixture g(0, 0, -1, {5, 17, 399});
    g.pass.skip_bad = true;
    CacheWrites m2(g, 0);
    TeamBatch t2(/*fills=*/true, 0);
    const GateRun q = run_beside_team(g, t2, nullptr, true);
    REQUIRE(m2.ids.size() == 397);
    CHECK(m2.ids[5] == 6);
    CHECK(m2.ids[396] == 398);
    REQUIRE(q.result.skipped.size() == 3);
    CHECK(q.result.skipped[0].id == 5);
    CHECK(q.result.skipped[1].id == 17);
    CHECK(q.result.skipped[2].id == 399);
  }
}

TEST_CASE("configure_threads keeps multi-threaded LibTorch work on the core thread") {
  // A thread's count, read without changing it.
  const auto count_here = [] {
    const int n = torch_threads_here(1);
    torch_threads_here(n);
    return n;
  };
  for (int n : {2, 1, 3}) {
    configure_threads(n);
    INFO("configure_threads(" << n << ")");
    CHECK(torch_threads() == n);
    // The caller (a run's main thread: stages, checkpoints, model.pt) keeps no team of its own.
    CHECK(count_here() == 1);
    int core = 0;
    run_on_core_thread([&] { core = count_here(); });
    CHECK(core == n);  // a new count reaches the core thread, whose team had started before
  }
  configure_threads(2);
}

TEST_CASE("a sink that fills the cores takes turns too, on the same core thread") {
  oneapi::tbb::global_control c(oneapi::tbb::global_control::max_allowed_parallelism, 2);
  PassFixture f(/*sleep_us=*/100, 0);
  TeamSink team;
  f.pass.nodes.back().impl = &team;  // in place of the recording sink
  f.pass.sink_batch = 8;
  std::atomic<int64_t> beside{0};
  f.pass.load = [&](Sample& s) {
    if (team.running) ++beside;
    f.source.load(s);
  };
  run_pass(f.pass, f.profile);
  CHECK(team.consumed == 400);
  CHECK(beside <= 8);  // 386 of 400 without the gate
  CHECK(team.threads.size() == 1);
  CHECK(team.threads.count(std::this_thread::get_id()) == 0);
}
