// Distributed runs (docs/distributed.md): the launcher environment, the shard arithmetic, the
// c10d group (collectives, and failures that name the rank), and whole runs over the
// loopback: `pipe launch --nproc 2` against one process on both regimes, a rank killed in
// the middle of extraction, and ranks that disagree.
#include <catch2/catch.hpp>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <thread>

#include <nlohmann/json.hpp>

#include "distributed.h"
#include "launch.h"
#include "process.h"

namespace fs = std::filesystem;
using nlohmann::json;
using pipeline::DistEnv;
using pipeline::Group;
using pipeline::test::Child;
using pipeline::test::finish;
using pipeline::test::spawn;

namespace {

DistEnv env_of(const std::map<std::string, std::string>& vars) {
  return pipeline::read_dist_env([&](const char* k) -> const char* {
    const auto it = vars.find(k);
    return it == vars.end() ? nullptr : it->second.c_str();
  });
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("the launcher's environment: torchrun, Slurm, Open MPI, and bad values named") {
  const DistEnv none = env_of({});
  CHECK(none.world == 1);
  CHECK(!none.distributed());
  CHECK(none.launcher.empty());

  const DistEnv t = env_of({{"RANK", "3"}, {"WORLD_SIZE", "4"}, {"LOCAL_RANK", "1"}, {"MASTER_ADDR", "10.0.0.7"},
                            {"MASTER_PORT", "29400"}});
  CHECK(t.rank == 3);
  CHECK(t.world == 4);
  CHECK(t.local_rank == 1);
  CHECK(t.master_addr == "10.0.0.7");
  CHECK(t.master_port == 29400);
  CHECK(t.launcher == "torchrun");

  const DistEnv s = env_of({{"SLURM_PROCID", "5"}, {"SLURM_NTASKS", "8"}, {"SLURM_LOCALID", "1"}, {"MASTER_ADDR", "node1"}});
  CHECK((s.rank == 5 && s.world == 8 && s.local_rank == 1 && s.launcher == "slurm" && s.master_addr == "node1"));
  const DistEnv m = env_of({{"OMPI_COMM_WORLD_RANK", "1"}, {"OMPI_COMM_WORLD_SIZE", "2"}});
  CHECK((m.rank == 1 && m.world == 2 && m.local_rank == 1 && m.launcher == "openmpi" && m.master_port == 29500));
  // torchrun's names win when a launcher runs inside a Slurm allocation.
  const DistEnv both = env_of({{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"SLURM_PROCID", "7"}, {"SLURM_NTASKS", "16"}});
  CHECK((both.rank == 0 && both.world == 2 && both.launcher == "torchrun"));

  CHECK_THAT(error_of([] { env_of({{"RANK", "2"}, {"WORLD_SIZE", "2"}}); }), Catch::Contains("RANK='2'"));
  CHECK_THAT(error_of([] { env_of({{"WORLD_SIZE", "2"}}); }), Catch::Contains("WORLD_SIZE is set and RANK is not"));
  CHECK_THAT(error_of([] { env_of({{"RANK", "0"}, {"WORLD_SIZE", "two"}}); }), Catch::Contains("WORLD_SIZE='two'"));
  CHECK_THAT(error_of([] { env_of({{"MASTER_PORT", "70000"}}); }), Catch::Contains("MASTER_PORT='70000'"));
  CHECK(pipeline::dist_timeout_s([](const char*) -> const char* { return nullptr; }) == 300);
  CHECK(pipeline::dist_timeout_s([](const char* k) -> const char* { return std::string(k) == "PIPE_DIST_TIMEOUT" ? "12" : nullptr; }) == 12);
}

TEST_CASE("global batches are shared out exactly: every position once, in order, the same steps everywhere") {
  for (int world = 1; world <= 4; ++world)
    for (int batch = world; batch <= 23; batch += 3)
      for (int64_t n = world; n <= 61; n += 5) {
        INFO("world " << world << " batch " << batch << " n " << n);
        std::vector<int> owner(static_cast<size_t>(n), -1);
        const size_t steps = static_cast<size_t>((n + batch - 1) / batch);
        for (int r = 0; r < world; ++r) {
          const pipeline::ShardPlan p = pipeline::shard_batches(n, batch, r, world);
          REQUIRE(p.steps.size() == steps);  // every rank takes part in every step's all-reduce
          int64_t k = 0;
          for (size_t s = 0; s < steps; ++s) {
            const pipeline::StepShard& st = p.steps[s];
            CHECK(st.global == std::min<int64_t>(batch, n - static_cast<int64_t>(s) * batch));
            // This rank's rows are one contiguous run of the global batch, in feed order.
            for (int64_t i = 0; i < st.local; ++i, ++k) {
              const int64_t pos = p.positions[static_cast<size_t>(k)];
              CHECK(pos == static_cast<int64_t>(s) * batch + st.offset + i);
              CHECK(owner[static_cast<size_t>(pos)] == -1);
              owner[static_cast<size_t>(pos)] = r;
            }
          }
          CHECK(k == static_cast<int64_t>(p.positions.size()));
          // The executor cuts the rank's feed into batches of local_batch: every step but the
          // last must be exactly that, the last at most that.
          for (size_t s = 0; s + 1 < steps; ++s) CHECK(p.steps[s].local == p.local_batch);
          CHECK(p.steps.back().local <= p.local_batch);
        }
        for (int64_t i = 0; i < n; ++i) CHECK(owner[static_cast<size_t>(i)] >= 0);
        // Ranks own rows in rank order within each batch.
        for (int64_t i = 1; i < n; ++i)
          if (i % batch != 0) CHECK(owner[static_cast<size_t>(i)] >= owner[static_cast<size_t>(i - 1)]);
      }
  CHECK_THAT(error_of([] { pipeline::shard_batches(100, 3, 0, 4); }), Catch::Contains("train.batch 3"));
  CHECK_THAT(error_of([] { pipeline::shard_batches(3, 20, 0, 4); }), Catch::Contains("3 samples"));
  CHECK(pipeline::part_split_name("train", 1, 4) == "train-part1of4");
}

TEST_CASE("a c10d group in two threads: all-reduce, gather, broadcast, and failures that name the rank") {
  DistEnv e;
  e.world = 2;
  e.master_port = pipeline::free_local_port();

  SECTION("collectives") {
    std::vector<float> f0{1, 2, 3}, f1{10, 20, 30};
    std::vector<double> d0{0.25}, d1{0.5};
    std::vector<std::string> g0, g1;
    std::string b1;
    const auto rank = [&](int r, std::vector<float>& f, std::vector<double>& d, std::vector<std::string>& g) {
      DistEnv me = e;
      me.rank = r;
      Group grp(me, 30);
      grp.all_reduce_sum(f.data(), f.size(), "floats");
      grp.all_reduce_sum(d.data(), d.size(), "doubles");
      g = grp.all_gather("names", "rank" + std::to_string(r));
      const std::string b = grp.broadcast("dir", r == 0 ? "/runs/x" : "ignored");
      if (r == 1) b1 = b;
      grp.finish();
    };
    std::thread t0([&] { rank(0, f0, d0, g0); });
    rank(1, f1, d1, g1);
    t0.join();
    CHECK(f0 == std::vector<float>{11, 22, 33});
    CHECK(f1 == f0);
    CHECK(d0[0] == 0.75);
    CHECK(d1[0] == 0.75);
    CHECK(g0 == std::vector<std::string>{"rank0", "rank1"});
    CHECK(g1 == g0);
    CHECK(b1 == "/runs/x");
  }

  SECTION("a rank that reports a failure is named with its reason") {
    std::string err0;
    std::thread t0([&] {
      DistEnv me = e;
      err0 = error_of([&] {
        Group grp(me, 30);
        grp.barrier("extraction of memo (train)");
      });
    });
    DistEnv me = e;
    me.rank = 1;
    Group grp(me, 30);
    grp.report_failure("disk full");
    t0.join();
    CHECK_THAT(err0, Catch::Contains("rank 0 of 2: extraction of memo (train): rank 1 failed: disk full"));
  }

  SECTION("a rank that never arrives is named at the deadline") {
    const auto t = std::chrono::steady_clock::now();
    const std::string err = error_of([&] { Group grp(e, 2); });
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
    CHECK_THAT(err, Catch::Contains("rank 1 did not arrive within 2 s"));
    CHECK(s < 10);
  }
}

// --- whole runs, through the real binary ---

namespace {

const std::string kPipe = std::string(PIPE_BINARY_DIR) + "/pipe";

fs::path fresh(const std::string& name) {
  const fs::path p = fs::path(PIPE_BINARY_DIR) / "test-distributed" / name;
  fs::remove_all(p);
  fs::create_directories(p.parent_path());
  return p;
}

// A small version of a shipped graph: 60 + 60 training images, 3 epochs.
std::vector<std::string> run_args(const std::string& graph, const fs::path& out, std::vector<std::string> more = {}) {
  std::vector<std::string> a{"run", std::string(PIPE_SOURCE_DIR) + "/graphs/" + graph, "--out", out.string(), "-q",
                             "--set", "data.per_class=[60,20,20]", "--set", "train.epochs=3"};
  a.insert(a.end(), more.begin(), more.end());
  return a;
}

// `pipe launch --nproc 2 -- <args>`.
std::vector<std::string> launched(const std::vector<std::string>& args) {
  std::vector<std::string> l{"launch", "--nproc", "2", "--timeout", "120", "--"};
  l.insert(l.end(), args.begin(), args.end());
  return l;
}

int pipe_exit(std::vector<std::string> args, const fs::path& cache, std::string* err = nullptr) {
  args.insert(args.begin(), kPipe);
  Child c = spawn(args, cache.string());
  std::string text;
  const int rc = finish(c, &text);
  INFO(text);
  if (err) *err = text;
  return rc;
}

json read_json(const fs::path& p) {
  std::ifstream in(p);
  REQUIRE(in);
  return json::parse(in);
}

std::vector<json> metrics(const fs::path& run) {
  std::vector<json> out;
  std::ifstream in(run / "metrics.jsonl");
  for (std::string line; std::getline(in, line);) out.push_back(json::parse(line));
  return out;
}

// Accuracies equal, losses within 1e-5 relative (docs/distributed.md: the sum of two halves'
// gradients is not the bits of one product over the whole batch).
void check_same_metrics(const fs::path& one, const fs::path& two, size_t epochs = 3) {
  const std::vector<json> a = metrics(one), b = metrics(two);
  REQUIRE(a.size() == epochs);
  REQUIRE(b.size() == a.size());
  for (size_t e = 0; e < a.size(); ++e) {
    INFO("epoch " << e + 1 << ": " << a[e].dump() << " vs " << b[e].dump());
    CHECK(a[e]["train_acc"] == b[e]["train_acc"]);
    CHECK(a[e]["val_acc"] == b[e]["val_acc"]);
    for (const char* k : {"train_loss", "val_loss"})
      CHECK(std::abs(a[e][k].get<double>() - b[e][k].get<double>()) <= 1e-5 * std::abs(a[e][k].get<double>()));
  }
  CHECK(read_json(one / "summary.json")["test_acc"] == read_json(two / "summary.json")["test_acc"]);
}

std::string bytes_of(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  REQUIRE(in);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

int64_t misses(const fs::path& run, const std::string& file) { return read_json(run / file)["cache"]["misses"].get<int64_t>(); }

}  // namespace

TEST_CASE("pipe launch --nproc 2 gives one process's metrics on both regimes, each image extracted once") {
  for (const std::string graph : {"cached.yaml", "augmented.yaml"}) {
    INFO(graph);
    const fs::path dir = fresh(graph), cache1 = dir / "cache1", cache2 = dir / "cache2";
    REQUIRE(pipe_exit(run_args(graph, dir / "one"), cache1) == 0);
    REQUIRE(pipe_exit(launched(run_args(graph, dir / "two")), cache2) == 0);
    check_same_metrics(dir / "one", dir / "two");
    const json s = read_json(dir / "two" / "summary.json");
    CHECK(s["distributed"]["world"] == 2);
    // Both ranks extracted, disjoint halves: their misses add up to one process's.
    const int64_t m0 = misses(dir / "two", "summary.json"), m1 = misses(dir / "two", "rank1.json");
    CHECK(m0 > 0);
    CHECK(m1 > 0);
    CHECK(m0 + m1 == misses(dir / "one", "summary.json"));
    // The parts are gone once merged; the merged entries are what one process writes.
    for (const fs::path& f : pipeline::test::files_named(cache2, "-part")) CHECK(f.extension() == ".lock");
    CHECK(pipeline::test::files_named(cache2, "-part").size() == (graph == "cached.yaml" ? 6 : 4));  // 2 ranks x 3 or 2 splits
    if (graph != "cached.yaml") continue;
    // A repetition, now from the warm cache, gives the same metrics again.
    REQUIRE(pipe_exit(launched(run_args(graph, dir / "again")), cache2) == 0);
    CHECK(misses(dir / "again", "summary.json") + misses(dir / "again", "rank1.json") == 0);
    check_same_metrics(dir / "two", dir / "again");
  }
}

namespace {

// A rank started by hand, as a cluster launcher starts it.
Child start_rank(int rank, int port, const std::vector<std::string>& args, const fs::path& cache) {
  std::vector<std::string> a{kPipe};
  a.insert(a.end(), args.begin(), args.end());
  const std::string r = std::to_string(rank), p = std::to_string(port);
  return spawn(a, cache.string(), [r, p] {
    ::setenv("RANK", r.c_str(), 1);
    ::setenv("WORLD_SIZE", "2", 1);
    ::setenv("MASTER_PORT", p.c_str(), 1);
    ::setenv("PIPE_DIST_TIMEOUT", "60", 1);
    ::setenv("PIPE_THREADS", "1", 1);
  });
}

// Ranks 0 and 1 started with these arguments both exit 1 with `message`.
void check_both_refused(const std::vector<std::string>& args0, const std::vector<std::string>& args1,
                        const fs::path& cache, const std::string& message) {
  const int port = pipeline::free_local_port();
  Child r0 = start_rank(0, port, args0, cache);
  Child r1 = start_rank(1, port, args1, cache);
  std::string e0, e1;
  CHECK(finish(r0, &e0) == 1);
  CHECK(finish(r1, &e1) == 1);
  for (const std::string& e : {e0, e1}) {
    INFO(e);
    CHECK_THAT(e, Catch::Contains(message));
  }
}

}  // namespace

TEST_CASE("a rank killed during extraction ends the other with its name, and the rerun completes from the cache") {
  const fs::path dir = fresh("killed"), cache = dir / "cache";
  // 96 px: extraction takes long enough to be interrupted in the middle.
  const std::vector<std::string> args = run_args("cached.yaml", dir / "cut", {"--set", "nodes.decode.size=[96,96]"});
  const int port = pipeline::free_local_port();
  Child r0 = start_rank(0, port, args, cache);
  Child r1 = start_rank(1, port, args, cache);
  // Rank 1's part of the training entry is being written: kill it there.
  REQUIRE(pipeline::test::wait_until(r1.pid, [&] { return !pipeline::test::files_named(cache, "train-part1of2.npy.tmp").empty(); }));
  const auto killed = std::chrono::steady_clock::now();
  ::kill(r1.pid, SIGKILL);
  pipeline::test::finish_killed(r1);
  std::string err;
  CHECK(finish(r0, &err) == 1);
  const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - killed).count();
  INFO(err);
  CHECK_THAT(err, Catch::Contains("rank 0 of 2") && Catch::Contains("rank 1 stopped"));
  CHECK(waited < 60);  // within the timeout: the heartbeat tells a dead rank in seconds
  // Rank 0 finished its part before it waited for rank 1: the rerun reuses it.
  CHECK(pipeline::test::files_named(cache, "train-part0of2.json").size() == 1);
  REQUIRE(pipe_exit(launched(run_args("cached.yaml", dir / "rerun", {"--set", "nodes.decode.size=[96,96]"})), cache) == 0);
  // 120 training, 40 validation, 40 test images; each rank's part is half of each.
  CHECK(misses(dir / "rerun", "summary.json") == 20 + 20);     // validation and test: its train part was reused
  CHECK(misses(dir / "rerun", "rank1.json") == 60 + 20 + 20);  // all three
}

namespace {

// metrics.jsonl without each line's timing fields.
std::vector<json> metrics_without_times(const fs::path& run) {
  std::vector<json> out = metrics(run);
  for (json& m : out)
    for (const char* k : {"seconds", "images_per_s"}) m.erase(k);
  return out;
}

}  // namespace

// A preempted job (Slurm's SIGTERM at the time limit) continues where it stopped, on any
// number of processes, to the metrics it would have had.
TEST_CASE("a distributed run stopped by SIGTERM resumes to an uninterrupted run's metrics") {
  const fs::path dir = fresh("resume"), cache = dir / "cache";
  const auto args = [&](const std::string& out) {
    return launched({"run", std::string(PIPE_SOURCE_DIR) + "/graphs/cached.yaml", "--out", (dir / out).string(),
                     "--no-progress", "--set", "data.per_class=[150,50,50]", "--set", "train.epochs=40"});
  };
  REQUIRE(pipe_exit(args("whole"), cache) == 0);

  std::vector<std::string> cut = args("cut");
  cut.insert(cut.begin(), kPipe);
  Child c = spawn(cut, cache.string());
  std::string err = pipeline::test::read_until(c.err, "epoch   3/40");
  REQUIRE(err.find("epoch   3/40") != std::string::npos);
  ::kill(c.pid, SIGTERM);  // to the launcher alone, as a scheduler sends it: it forwards it
  CHECK(finish(c, &err) == 143);
  INFO(err);
  const json s = read_json(dir / "cut" / "summary.json");
  CHECK(s["status"] == "interrupted");
  const int done = s["epochs_completed"].get<int>();
  CHECK((done >= 3 && done < 40));

  fs::copy(dir / "cut", dir / "one", fs::copy_options::recursive);
  fs::copy(dir / "cut", dir / "other", fs::copy_options::recursive);
  std::ofstream(dir / "other" / "checkpoint" / "state.json", std::ios::app) << "\n";  // same values, other bytes

  // Ranks given different checkpoints are refused, before either trains.
  check_both_refused({"run", "--resume", (dir / "cut").string(), "-q"}, {"run", "--resume", (dir / "other").string(), "-q"},
                     cache, "rank 1 and rank 0 differ in their checkpoint");
  // On the same two processes: the same bits as the uninterrupted run.
  REQUIRE(pipe_exit(launched({"run", "--resume", (dir / "cut").string(), "--no-progress"}), cache) == 0);
  CHECK(metrics_without_times(dir / "cut") == metrics_without_times(dir / "whole"));
  const json a = read_json(dir / "whole" / "summary.json"), b = read_json(dir / "cut" / "summary.json");
  for (const char* k : {"val_acc", "best_val_acc", "best_epoch", "test_acc", "test_loss", "train_loss", "status"})
    CHECK(a[k] == b[k]);
  // On one process: one process's metrics (within the tolerance above).
  REQUIRE(pipe_exit({"run", "--resume", (dir / "one").string(), "--no-progress"}, cache) == 0);
  check_same_metrics(dir / "whole", dir / "one", 40);
}

// train_base over two processes: synchronized BatchNorm (stages/sync_batch_norm.h; its
// arithmetic is tested exactly in test_sync_batch_norm). 129 training images in batches of 64:
// the last batch has one row, so one rank takes an empty step, backward and all.
TEST_CASE("train_base trains data-parallel: one process's network, repeatably") {
  const fs::path dir = fresh("pretrain"), cache = dir / "cache";
  const auto args = [&](const std::string& out) {
    return std::vector<std::string>{
        "run", std::string(PIPE_SOURCE_DIR) + "/graphs/pretrain.yaml", "--out", (dir / out).string(), "-q", "--set",
        "data.classes=[trouser, pullover, dress]", "--set", "data.per_class=[43, 10, 0]", "--set", "train.epochs=2",
        "--set", "nodes.trainer.out=" + (dir / (out + ".pt")).string(), "--threads", "1"};
  };
  REQUIRE(pipe_exit(args("one"), cache) == 0);
  std::string err;
  REQUIRE(pipe_exit(launched(args("two")), cache, &err) == 0);
  // Each process has 1 thread (--threads 1, as pipe launch gives each of 2 processes on 2
  // cores); the trainer keeps its 2.
  CHECK_THAT(err, Catch::Contains("train_base 'trainer' trains on 2 intra-op threads (its `threads`) in each of 2 "
                                  "processes") && Catch::Contains("set its threads to 1"));
  REQUIRE(pipe_exit(launched(args("again")), cache) == 0);
  CHECK(metrics_without_times(dir / "two") == metrics_without_times(dir / "again"));
  CHECK(bytes_of(dir / "two.pt") == bytes_of(dir / "again.pt"));
  // Against one process: the first steps agree to rounding (measured 6e-8); Adam, whose
  // eps (1e-7) is far below many of its gradients' noise, then amplifies the rounding
  // differences of summing in other orders (docs/distributed.md: measured 2.3e-4 by epoch 2).
  // BatchNorm over each rank's rows instead of the global batch was 1.1e-2 off in epoch 1.
  const std::vector<json> a = metrics(dir / "one"), b = metrics(dir / "two");
  REQUIRE(a.size() == 2);
  REQUIRE(b.size() == 2);
  for (size_t e = 0; e < a.size(); ++e) {
    INFO("epoch " << e + 1 << ": " << a[e].dump() << " vs " << b[e].dump());
    CHECK(a[e]["train_acc"] == b[e]["train_acc"]);
    CHECK(a[e]["val_acc"] == b[e]["val_acc"]);
    for (const char* k : {"train_loss", "val_loss"}) {
      const double tol = e == 0 && std::string(k) == "train_loss" ? 1e-5 : 5e-3;
      CHECK(std::abs(a[e][k].get<double>() - b[e][k].get<double>()) <= tol * std::abs(a[e][k].get<double>()));
    }
  }
}

TEST_CASE("ranks that would not run the same thing are refused, naming what differs") {
  const fs::path dir = fresh("mismatch"), cache = dir / "cache";
  check_both_refused(run_args("cached.yaml", dir / "run"),
                     run_args("cached.yaml", dir / "run", {"--set", "nodes.head.lr=0.001"}), cache,
                     "rank 1 and rank 0 differ in their resolved graph");
}
