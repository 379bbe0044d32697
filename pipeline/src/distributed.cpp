#include "distributed.h"

#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <mutex>
#include <stdexcept>
#include <system_error>
#include <thread>

#include <fmt/format.h>
#include <fmt/ranges.h>

// c10d's Gloo process group is compiled into Debian's libtorch_cpu; its header is guarded.
#ifndef USE_C10D_GLOO
#define USE_C10D_GLOO
#endif
#include <ATen/ATen.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

namespace pipeline {

namespace {

// Seconds without a heartbeat after which a rank counts as dead (it beats every second).
constexpr int kSilence_s = 5;

int env_int(const std::function<const char*(const char*)>& get, const char* name, int fallback, int lo, int hi) {
  const char* v = get(name);
  if (!v || !*v) return fallback;
  char* end = nullptr;
  errno = 0;
  const long x = std::strtol(v, &end, 10);
  if (errno || *end || x < lo || x > hi)
    throw std::runtime_error(fmt::format("{}='{}': expected an integer in [{}, {}]", name, v, lo, hi));
  return static_cast<int>(x);
}

bool has(const std::function<const char*(const char*)>& get, const char* name) {
  const char* v = get(name);
  return v && *v;
}

std::vector<uint8_t> bytes(const std::string& s) { return {s.begin(), s.end()}; }
std::string text(const std::vector<uint8_t>& b) { return {b.begin(), b.end()}; }

}  // namespace

DistEnv read_dist_env(const std::function<const char*(const char*)>& get) {
  DistEnv e;
  // Which launcher set the variables: torchrun's names first, as PyTorch reads them.
  const struct {
    const char *rank, *world, *local, *name;
  } kinds[] = {{"RANK", "WORLD_SIZE", "LOCAL_RANK", "torchrun"},
               {"SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "slurm"},
               {"OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK", "openmpi"}};
  for (const auto& k : kinds) {
    if (!has(get, k.world)) continue;
    e.world = env_int(get, k.world, 1, 1, 1 << 20);
    e.rank = env_int(get, k.rank, -1, 0, e.world - 1);
    if (e.rank < 0) throw std::runtime_error(fmt::format("{} is set and {} is not", k.world, k.rank));
    e.local_rank = env_int(get, k.local, e.rank, 0, e.world - 1);
    e.launcher = k.name;
    break;
  }
  if (const char* a = get("MASTER_ADDR"); a && *a) e.master_addr = a;
  e.master_port = env_int(get, "MASTER_PORT", 29500, 1, 65535);
  if (e.world == 1) e.launcher.clear();
  return e;
}

int dist_timeout_s(const std::function<const char*(const char*)>& get) {
  return env_int(get, "PIPE_DIST_TIMEOUT", 300, 1, 7 * 24 * 3600);
}

ShardPlan shard_batches(int64_t n, int batch, int rank, int world) {
  if (batch < world)
    throw std::runtime_error(fmt::format("train.batch {} is smaller than the {} processes of the run: every rank "
                                         "needs rows of each global batch",
                                         batch, world));
  if (n > 0 && n < world)
    throw std::runtime_error(fmt::format("a split of {} samples cannot be shared by {} processes", n, world));
  ShardPlan p;
  const auto lo = [&](int64_t g, int r) { return r * g / world; };
  p.local_batch = static_cast<int>(lo(batch, rank + 1) - lo(batch, rank));
  for (int64_t start = 0; start < n; start += batch) {
    const int64_t g = std::min<int64_t>(batch, n - start);
    StepShard s{g, lo(g, rank), lo(g, rank + 1) - lo(g, rank)};
    for (int64_t i = 0; i < s.local; ++i) p.positions.push_back(start + s.offset + i);
    p.steps.push_back(s);
  }
  return p;
}

std::string part_split_name(const std::string& split, int rank, int world) {
  return fmt::format("{}-part{}of{}", split, rank, world);
}

// The store (rank 0 hosts it), the Gloo group, and a heartbeat thread that stamps
// "beat/<rank>" every second so that a rank that notices a failure can tell which ranks
// stopped beating.
struct Group::Impl {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::ProcessGroupGloo> pg;
  std::thread beat;
  std::mutex mu;
  std::condition_variable cv;
  bool stop = false;
  bool finished = false;  // finish() ran: every rank is past its last use of the store
  int64_t seq = 0;  // sequence number of store-based collectives, the same on every rank

  void stop_beat() {
    {
      std::lock_guard<std::mutex> l(mu);
      stop = true;
    }
    cv.notify_all();
    if (beat.joinable()) beat.join();
  }
};

Group::Group(const DistEnv& env, int timeout_s) : env_(env), timeout_s_(timeout_s), impl_(std::make_unique<Impl>()) {
  const std::chrono::milliseconds timeout(static_cast<int64_t>(timeout_s) * 1000);
  c10d::TCPStoreOptions o;
  o.port = static_cast<uint16_t>(env.master_port);
  o.isServer = env.rank == 0;
  o.numWorkers = env.world;
  o.waitWorkers = false;  // arrival is checked below, naming who is missing
  o.timeout = timeout;
  try {
    impl_->store = c10::make_intrusive<c10d::TCPStore>(env.master_addr, o);
  } catch (const std::exception& e) {
    throw std::runtime_error(fmt::format("rank {}: cannot reach the store of rank 0 at {}:{} within {} s: {}", env.rank,
                                         env.master_addr, env.master_port, timeout_s, e.what()));
  }
  impl_->store->setTimeout(timeout);
  barrier("start");  // names the ranks that never arrived
  auto opts = c10d::ProcessGroupGloo::Options::create(timeout);
  // Gloo binds to the address this host resolves to; on one machine the loopback is enough.
  opts->devices.push_back(env.master_addr == "127.0.0.1" || env.master_addr == "localhost"
                              ? c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1")
                              : c10d::ProcessGroupGloo::createDefaultDevice());
  try {
    impl_->pg = c10::make_intrusive<c10d::ProcessGroupGloo>(c10::make_intrusive<c10d::PrefixStore>("gloo", impl_->store),
                                                            env.rank, env.world, opts);
  } catch (const std::exception& e) {
    lost("connecting the Gloo group", e.what());
  }
  impl_->beat = std::thread([this, key = fmt::format("beat/{}", env.rank)] {
    std::unique_lock<std::mutex> l(impl_->mu);
    for (int64_t n = 0; !impl_->stop; ++n) {
      try {
        impl_->store->set(key, bytes(std::to_string(n)));
      } catch (...) {
        return;  // the store is gone (rank 0 ended): the next collective says so
      }
      impl_->cv.wait_for(l, std::chrono::seconds(1), [this] { return impl_->stop; });
    }
  });
}

Group::~Group() {
  if (!impl_) return;
  impl_->stop_beat();
  // Rank 0 leaving early (it failed, or refused the others) would take the store with it
  // while the others still read from it: they would see a broken pipe instead of its reason.
  // It waits, briefly, until each has finished or reported its own failure.
  if (env_.rank != 0 || impl_->finished) return;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(kSilence_s);
  try {
    for (int r = 1; r < env_.world; ++r)
      while (!impl_->store->check({fmt::format("done/{}", r)}) && !impl_->store->check({fmt::format("failed/{}", r)}) &&
             std::chrono::steady_clock::now() < deadline)
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
  } catch (...) {
  }
}

void Group::lost(const std::string& what, const std::string& detail) {
  // Which ranks stopped: those that reported a failure, then those whose heartbeat did not
  // move in 2.5 s. If the store itself is unreachable, rank 0 (its host) is gone.
  std::vector<std::string> why;
  try {
    std::vector<std::string> before(static_cast<size_t>(env_.world)), failed;
    for (int r = 0; r < env_.world; ++r) {
      const std::string f = fmt::format("failed/{}", r);
      if (r != env_.rank && impl_->store->check({f})) failed.push_back(fmt::format("rank {} failed: {}", r, text(impl_->store->get(f))));
      if (impl_->store->check({fmt::format("beat/{}", r)})) before[static_cast<size_t>(r)] = text(impl_->store->get(fmt::format("beat/{}", r)));
    }
    if (!failed.empty()) why = failed;
    else {
      std::this_thread::sleep_for(std::chrono::milliseconds(2500));
      std::vector<int> silent;
      for (int r = 0; r < env_.world; ++r)
        if (r != env_.rank && text(impl_->store->get(fmt::format("beat/{}", r))) == before[static_cast<size_t>(r)]) silent.push_back(r);
      if (!silent.empty()) why.push_back(fmt::format("rank {} stopped answering (died or hangs)", fmt::join(silent, ", ")));
    }
  } catch (const std::exception&) {
    why.push_back(fmt::format("rank 0, which hosts the store at {}:{}, is gone", env_.master_addr, env_.master_port));
  }
  if (why.empty()) why.push_back("no rank reported why");
  throw std::runtime_error(
      fmt::format("rank {} of {}: {} failed: {}; {}", env_.rank, env_.world, what, fmt::join(why, "; "), detail));
}

void Group::all_reduce_sum(float* data, std::size_t n, const std::string& what) {
  all_reduce(at::from_blob(data, {static_cast<int64_t>(n)}, at::kFloat), what);
}

void Group::all_reduce_sum(double* data, std::size_t n, const std::string& what) {
  all_reduce(at::from_blob(data, {static_cast<int64_t>(n)}, at::kDouble), what);
}

void Group::all_reduce(const at::Tensor& t, const std::string& what) {
  std::vector<at::Tensor> ts{t};
  try {
    impl_->pg->allreduce(ts)->wait();
  } catch (const std::exception& e) {
    lost("all-reduce of " + what, e.what());
  }
}

std::vector<std::string> Group::all_gather(const std::string& what, const std::string& mine) {
  const std::string base = fmt::format("c/{}/", impl_->seq++);
  const auto fail = [&](const std::string& why) {
    return std::runtime_error(fmt::format("rank {} of {}: {}: {}", env_.rank, env_.world, what, why));
  };
  std::vector<std::string> out(static_cast<size_t>(env_.world));
  try {
    impl_->store->set(base + std::to_string(env_.rank), bytes(mine));
    const auto start = std::chrono::steady_clock::now();
    const auto deadline = start + std::chrono::seconds(timeout_s_);
    // Polled per rank (not one store->wait on all keys), so that a failure names who is
    // missing: a rank that reported one, one whose heartbeat stopped (it died: live ranks
    // beat every second however busy they are), or one still absent at the deadline.
    struct Beat {
      std::string value;
      std::chrono::steady_clock::time_point since;
    };
    std::vector<Beat> beats(static_cast<size_t>(env_.world), Beat{"", start});
    for (int r = 0; r < env_.world;) {
      const std::string key = base + std::to_string(r);
      if (impl_->store->check({key})) {
        ++r;
        continue;
      }
      if (const std::string f = fmt::format("failed/{}", r); impl_->store->check({f}))
        throw fail(fmt::format("rank {} failed: {}", r, text(impl_->store->get(f))));
      const auto now = std::chrono::steady_clock::now();
      if (const std::string b = fmt::format("beat/{}", r); impl_->store->check({b})) {
        Beat& last = beats[static_cast<size_t>(r)];
        if (const std::string v = text(impl_->store->get(b)); v != last.value) last = Beat{v, now};
        else if (now - last.since > std::chrono::seconds(kSilence_s))
          throw fail(fmt::format("rank {} stopped: no heartbeat for {} s (the process died, or its machine is unreachable)", r,
                                 kSilence_s));
      }
      if (now > deadline)
        throw fail(fmt::format("rank {} did not arrive within {} s (PIPE_DIST_TIMEOUT)", r, timeout_s_));
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    for (int r = 0; r < env_.world; ++r) out[static_cast<size_t>(r)] = text(impl_->store->get(base + std::to_string(r)));
  } catch (const c10::Error& e) {
    throw fail(fmt::format("rank 0, which hosts the store at {}:{}, is gone ({})", env_.master_addr, env_.master_port,
                           e.what_without_backtrace()));
  } catch (const std::system_error& e) {  // the store's socket: "Broken pipe", "Connection reset"
    throw fail(fmt::format("rank 0, which hosts the store at {}:{}, is gone ({})", env_.master_addr, env_.master_port, e.what()));
  }
  return out;
}

std::string Group::broadcast(const std::string& what, const std::string& value) {
  return all_gather(what, env_.rank == 0 ? value : std::string())[0];
}

void Group::barrier(const std::string& what) { all_gather(what, ""); }

void Group::report_failure(const std::string& why) noexcept {
  try {
    impl_->store->set(fmt::format("failed/{}", env_.rank), bytes(why));
  } catch (...) {
  }
}

void Group::finish() {
  impl_->stop_beat();
  barrier("finish");
  // Past this barrier a rank other than 0 touches the store once more (its "done" key);
  // rank 0 waits for those, so that its store outlives every use of it.
  if (env_.rank != 0) {
    impl_->store->set(fmt::format("done/{}", env_.rank), bytes("1"));
    return;
  }
  std::vector<std::string> keys;
  for (int r = 1; r < env_.world; ++r) keys.push_back(fmt::format("done/{}", r));
  if (!keys.empty()) impl_->store->wait(keys);
  impl_->finished = true;
}

}  // namespace pipeline
