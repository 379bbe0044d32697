#include "executor.h"

#include <algorithm>
#include <condition_variable>
#include <deque>
#include <exception>
#include <future>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <thread>
#include <unordered_map>

#include <fmt/format.h>
#include <oneapi/tbb/flow_graph.h>
#include <unistd.h>

#include "torch_runtime.h"

namespace pipeline {

namespace flow = oneapi::tbb::flow;

namespace {

int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

std::string sample_name(const Sample& s) { return s.origin.empty() ? s.describe() : s.origin; }

// Per-node profile accounting around a stage call.
struct Timed {
  NodeProfile& p;
  int64_t t0 = now_ns();
  explicit Timed(NodeProfile& prof) : p(prof) {}
  int64_t done(int64_t items = 1) {
    const int64_t t1 = now_ns();
    p.busy_ns += t1 - t0;
    p.items += items;
    return t1;
  }
};

}  // namespace

NodeProfile& Profile::node(const std::string& name, const std::string& stage) {
  std::lock_guard<std::mutex> lock(mu_);
  for (auto& n : nodes_)
    if (n->node == name) return *n;
  nodes_.push_back(std::make_unique<NodeProfile>());
  nodes_.back()->node = name;
  nodes_.back()->stage = stage;
  return *nodes_.back();
}

std::vector<const NodeProfile*> Profile::nodes() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<const NodeProfile*> out;
  for (const auto& n : nodes_) out.push_back(n.get());
  return out;
}

NodeError::NodeError(std::string node_, std::string sample_, const std::string& what, const std::string& context)
    : std::runtime_error(sample_.empty()
                             ? fmt::format("node '{}'{}: {}", node_, context, what)
                             : fmt::format("node '{}'{} failed on sample {}: {}", node_, context, sample_, what)),
      node(std::move(node_)),
      sample(std::move(sample_)),
      reason(what) {}

namespace {

// The pass's ops with their edges resolved: who feeds whom, and which ops run per sample in
// the parallel region rather than in the serial tail.
struct Topology {
  std::vector<std::vector<int>> inputs;                     // per op; -1: the feed
  std::vector<std::vector<std::pair<int, int>>> consumers;  // per producer + 1 (0: the feed): (op, port)
  std::vector<char> region;
  int terminals = 0;  // ops nothing consumes (sinks; a cache write ending an extraction pass; a benchmark's base)
  int64_t held = 0;  // samples the tail may hold in partial batches

  const std::vector<std::pair<int, int>>& out(int producer) const {
    return consumers[static_cast<size_t>(producer + 1)];
  }
};

bool per_sample(const PassNode& n) {
  return n.kind == StageKind::map || n.kind == StageKind::cache || n.kind == StageKind::join;
}

Topology resolve(const PassSpec& pass) {
  Topology t;
  const int n = static_cast<int>(pass.nodes.size());
  t.inputs.resize(static_cast<size_t>(n));
  t.consumers.resize(static_cast<size_t>(n + 1));
  t.region.assign(static_cast<size_t>(n), 0);
  for (int i = 0; i < n; ++i) {
    const PassNode& op = pass.nodes[static_cast<size_t>(i)];
    std::vector<int> ins = op.inputs.empty() ? std::vector<int>{i - 1} : op.inputs;
    if (op.kind == StageKind::source) throw std::logic_error("a source inside a pass");
    if ((op.kind == StageKind::join) != (ins.size() > 1))
      throw std::logic_error(fmt::format("op '{}' has {} inputs", op.name, ins.size()));
    bool in_region = per_sample(op);
    for (size_t port = 0; port < ins.size(); ++port) {
      const int in = ins[port];
      if (in < -1 || in >= i) throw std::logic_error(fmt::format("op '{}' takes op {} as input: not before it", op.name, in));
      t.consumers[static_cast<size_t>(in + 1)].push_back({i, static_cast<int>(port)});
      in_region = in_region && (in == -1 || t.region[static_cast<size_t>(in)]);
    }
    t.region[static_cast<size_t>(i)] = in_region;
    t.inputs[static_cast<size_t>(i)] = std::move(ins);
    if (op.kind == StageKind::sink) t.held += pass.sink_batch;
    if (op.kind == StageKind::batch_map) t.held += static_cast<BatchStage*>(op.impl)->batch_size();
  }
  for (int i = 0; i < n; ++i) t.terminals += t.out(i).empty();
  if (t.terminals == 0) throw std::logic_error("a pass with no end");
  return t;
}

// A copy of a sample for one more consumer. Copies of a cv::Mat share pixels, and a stage may
// draw on its image in place: every branch gets pixels of its own.
Sample branch_copy(const Sample& s) {
  Sample c = s;
  if (!s.image.empty()) c.image = s.image.clone();
  return c;
}

// The one place the error policy is applied: runs `body` for `op` on `s`. A SampleError
// skips the sample under on_error: skip (returns false, *skipped says why) and fails the
// pass otherwise; any other exception fails the pass. Both name node and sample.
template <typename F>
bool guarded(const PassSpec& pass, const PassNode& op, const Sample& s, F&& body,
             std::shared_ptr<SkippedSample>* skipped) {
  try {
    body();
    return true;
  } catch (const SampleError& e) {
    const bool replayed = !e.node().empty() && e.node() != op.name;
    const std::string node = replayed ? e.node() : op.name;
    if (!pass.skip_bad) throw NodeError(node, s.describe(), e.what(), replayed ? "" : op.context);
    *skipped = std::make_shared<SkippedSample>(SkippedSample{s.id, sample_name(s), e.what(), node, s.split});
    return false;
  } catch (const NodeError&) {
    throw;
  } catch (const std::exception& e) {
    throw NodeError(op.name, s.describe(), e.what(), op.context);
  }
}

void apply_map(const PassSpec& pass, const PassNode& op, Sample& s) {
  if (op.fn) return op.fn(s);
  if (op.kind == StageKind::cache) {
    if (op.write) op.write(s);
    return;
  }
  Rng rng = Rng::for_sample(pass.seed, op.name, s.epoch, s.id, s.view);
  static_cast<MapStage*>(op.impl)->process(s, rng);
}

Sample apply_join(const PassNode& op, std::vector<Sample>& ins) {
  Sample out = ins.front().metadata();
  static_cast<JoinStage*>(op.impl)->process(ins, out);
  return out;
}

// Closed while a batch op that fills every core runs (FillsCores, pipe/stage.h): per-sample
// work waits here instead of preempting the op's thread team. On 2 cores, decode beside a
// 32 px CPU forward cost the forward about twice decode's own CPU time (the team's barrier
// waited for its preempted thread while the other core spun); taking turns costs only decode's.
class CoreGate {
 public:
  // Returns the nanoseconds spent waiting (0 when open: one atomic load).
  int64_t wait_open() {
    if (!closed_.load(std::memory_order_acquire)) return 0;
    const int64_t t0 = now_ns();
    std::unique_lock<std::mutex> lock(mu_);
    open_.wait(lock, [&] { return !closed_.load(std::memory_order_relaxed); });
    return now_ns() - t0;
  }

  // Closes the gate for its lifetime: opened again on every exit, exceptions included.
  class Closed {
   public:
    explicit Closed(CoreGate& g) : g_(g) { g_.set(true); }
    ~Closed() { g_.set(false); }
    Closed(const Closed&) = delete;
    Closed& operator=(const Closed&) = delete;

   private:
    CoreGate& g_;
  };

 private:
  void set(bool closed) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      closed_.store(closed, std::memory_order_release);
    }
    if (!closed) open_.notify_all();
  }

  std::mutex mu_;
  std::condition_variable open_;
  std::atomic<bool> closed_{false};
};

// The one thread that runs every batch op (or sink) that fills the cores. An OpenMP team belongs to
// the thread that starts it: when the serial tail ran such an op on whichever TBB thread took
// the tail's turn, each of them kept a team of its own, and the team left idle spun on cores
// the running one needed (a 32 px forward took 14.5-16 ms a batch after changing threads, 13.7
// on the same thread; the first batch on a new thread 45 ms). Jobs run one at a time in the
// order they were handed over, each on the intra-op count the process had configured when it
// was handed over (torch_threads()): a thread's OpenMP count is its own, so a later --threads
// reaches the team only this way. Created on first use; after fork() the child makes its own
// (the parent's thread does not exist there), leaving the parent's object unused.
class CoreThread {
 public:
  static CoreThread& get() {
    static std::mutex mu;
    static CoreThread* instance = nullptr;
    std::lock_guard<std::mutex> lock(mu);
    if (!instance || instance->pid_ != ::getpid()) instance = new CoreThread();  // reachable, never destroyed
    return *instance;
  }

  // Hands `job` over and returns at once; the future says when it has run and rethrows what
  // it threw. Runs it here and now on the core thread itself, and on a thread of its team (a
  // job that runs a pass of its own, or per-sample work that does): there, waiting for the
  // core thread would wait for ourselves.
  std::future<void> start(std::function<void()> job) {
    std::packaged_task<void()> task(std::move(job));
    std::future<void> done = task.get_future();
    if (std::this_thread::get_id() == id_ || t_in_team) {
      task();
      return done;
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      jobs_.push_back({std::move(task), torch_threads()});
    }
    wake_.notify_one();
    return done;
  }

  // Set while a thread runs per-sample work on the core thread's team (run_team).
  static thread_local bool t_in_team;

 private:
  struct Job {
    std::packaged_task<void()> task;
    int threads = 1;
  };

  CoreThread() : pid_(::getpid()) {
    std::thread t([this] { loop(); });
    id_ = t.get_id();
    t.detach();
  }

  void loop() {
    for (;;) {
      Job job;
      {
        std::unique_lock<std::mutex> lock(mu_);
        wake_.wait(lock, [&] { return !jobs_.empty(); });
        job = std::move(jobs_.front());
        jobs_.pop_front();
      }
      torch_threads_here(job.threads);
      job.task();  // an exception goes to the job's future
    }
  }

  const pid_t pid_;
  std::thread::id id_;
  std::mutex mu_;
  std::condition_variable wake_;
  std::deque<Job> jobs_;  // at most one per waiting caller, plus a pass's next chunk (run_team)
};

thread_local bool CoreThread::t_in_team = false;

bool fills_cores(const PassNode& op) {
  const auto* f = dynamic_cast<const FillsCores*>(op.impl);
  return f && f->fills_cores();
}

// Where the per-sample work runs on the core thread's team (run_team): the batch size of the
// first tail op that fills the cores, in a pass without a sink (an extraction into the cache);
// 0 elsewhere. A sink's step on the calling thread (a head's training) ran beside the team's
// next chunk and was slowed by it: regime B epochs took 0.73-0.80 s on the team against
// 0.74-0.76 s on TBB threads (graphs/augmented.yaml, 5 interleaved runs of 8 epochs).
int64_t team_chunk(const PassSpec& pass, const Topology& t) {
  for (const PassNode& op : pass.nodes)
    if (op.kind == StageKind::sink) return 0;
  for (size_t i = 0; i < pass.nodes.size(); ++i) {
    const PassNode& op = pass.nodes[i];
    if (!t.region[i] && op.kind == StageKind::batch_map && fills_cores(op))
      return std::max(1, static_cast<BatchStage*>(op.impl)->batch_size());
  }
  return 0;
}

// One sample's values on its way through the region: per producer (index 0: the feed), and
// how many consumers have yet to take each (the last one takes it without a copy).
struct Bundle {
  int64_t seq = 0;
  std::vector<Sample> values;
  std::vector<int> uses;
  std::shared_ptr<SkippedSample> skipped;
  NodeProfile* from = nullptr;  // the op that finished last, for blocked-time accounting
  int64_t t_out = 0;

  Sample take(int producer) {
    const size_t k = static_cast<size_t>(producer + 1);
    return --uses[k] == 0 ? std::move(values[k]) : branch_copy(values[k]);
  }
};

// The per-sample region: evaluates its ops in order for one sample. Called concurrently for
// different samples; serial ops are serialized by their own mutex.
class Region {
 public:
  Region(const PassSpec& pass, const Topology& t, Profile& profile, NodeProfile& load_prof, CoreGate& gate)
      : pass_(pass), t_(t), load_prof_(load_prof), gate_(gate), locks_(pass.nodes.size()) {
    for (size_t i = 0; i < pass.nodes.size(); ++i) {
      const PassNode& n = pass.nodes[i];
      profs_.push_back(&profile.node(n.name, n.stage));
      if (t.region[i] && n.concurrency == Concurrency::serial && !n.fn) locks_[i] = std::make_unique<std::mutex>();
    }
    for (const auto& c : t.consumers) uses_.push_back(static_cast<int>(c.size()));
    load_op_.name = pass.load_name;
    load_op_.fn = pass.load;
  }

  // True when every region op is a memory read: running inline beats thread hand-offs.
  bool cheap() const {
    if (pass_.load && !pass_.cheap_load) return false;
    for (size_t i = 0; i < pass_.nodes.size(); ++i)
      if (t_.region[i] && !pass_.nodes[i].cheap) return false;
    return true;
  }

  // `gated`: waits while an op that fills the cores runs; per-sample work on the core thread's
  // own team (run_team) cannot run beside such an op, and must not wait for the tail.
  void run(Bundle& b, Sample&& fed, bool gated = true) const {
    b.values.resize(pass_.nodes.size() + 1);
    b.uses = uses_;
    if (pass_.load) {
      if (gated) load_prof_.gated_ns += gate_.wait_open();
      Timed t(load_prof_);
      const bool ok = guarded(pass_, load_op_, fed, [&] { pass_.load(fed); }, &b.skipped);
      finish(b, load_prof_, t.done());
      if (!ok) return;
    }
    b.values[0] = std::move(fed);
    for (size_t i = 0; i < pass_.nodes.size(); ++i) {
      if (!t_.region[i]) continue;
      const PassNode& op = pass_.nodes[i];
      Sample s;
      std::vector<Sample> ins;
      if (op.kind == StageKind::join)
        for (int in : t_.inputs[i]) ins.push_back(b.take(in));
      else
        s = b.take(t_.inputs[i][0]);
      if (gated) profs_[i]->gated_ns += gate_.wait_open();
      std::unique_lock<std::mutex> lock;
      if (locks_[i]) lock = std::unique_lock<std::mutex>(*locks_[i]);
      Timed t(*profs_[i]);
      const Sample& ref = op.kind == StageKind::join ? ins.front() : s;
      const bool ok = guarded(pass_, op, ref, [&] {
        if (op.kind == StageKind::join) s = apply_join(op, ins);
        else apply_map(pass_, op, s);
      }, &b.skipped);
      finish(b, *profs_[i], t.done());
      if (!ok) return;
      b.values[i + 1] = std::move(s);
    }
  }

 private:
  static void finish(Bundle& b, NodeProfile& p, int64_t t) {
    b.from = &p;
    b.t_out = t;
  }

  const PassSpec& pass_;
  const Topology& t_;
  NodeProfile& load_prof_;
  CoreGate& gate_;
  PassNode load_op_;
  std::vector<NodeProfile*> profs_;
  std::vector<std::unique_ptr<std::mutex>> locks_;
  std::vector<int> uses_;
};

// The serial, ordered part of a pass: batch ops, sinks and everything after a batch op.
// Receives bundles in feed order; a sample's token is released once every op that ends a
// branch (a sink, or the cache write of an extraction pass) took it.
class Tail {
 public:
  Tail(const PassSpec& pass, const Topology& t, Profile& profile, CoreGate& gate, std::function<void()> release)
      : pass_(pass), t_(t), gate_(gate), bufs_(pass.nodes.size()), joins_(pass.nodes.size()),
        release_(std::move(release)) {
    for (const PassNode& n : pass.nodes) profs_.push_back(&profile.node(n.name, n.stage));
  }

  void push(Bundle&& b) {
    if (b.skipped) record(b.seq, b.skipped);
    for (size_t i = 0; i < pass_.nodes.size(); ++i) {
      if (t_.region[i] && t_.out(static_cast<int>(i)).empty()) retire(b.seq);  // ended in the region
      if (t_.region[i]) continue;
      const std::vector<int>& ins = t_.inputs[i];
      for (size_t port = 0; port < ins.size(); ++port) {
        const int q = ins[port];
        if (q != -1 && !t_.region[static_cast<size_t>(q)]) continue;
        Item it{b.seq, Sample(), b.skipped};
        if (!b.skipped) it.s = b.take(q);
        deliver(static_cast<int>(i), static_cast<int>(port), std::move(it));
      }
    }
  }

  // End of pass: partial batches in op order (each may feed later ops).
  void flush() {
    for (size_t i = 0; i < bufs_.size(); ++i)
      if (!bufs_[i].empty()) run_batch(static_cast<int>(i));
    for (size_t i = 0; i < joins_.size(); ++i)
      if (!joins_[i].empty())
        throw std::logic_error(fmt::format("join '{}' holds unmatched samples at the end of a pass", pass_.nodes[i].name));
  }

  PassResult result;
  // Called once an op that fills the cores has been handed to the core thread: a job handed
  // over now runs there right after it, with no wake-up in between.
  std::function<void()> after_core_op;

 private:
  struct Item {
    int64_t seq = 0;
    Sample s;
    std::shared_ptr<SkippedSample> skip;
  };
  struct Pending {
    std::vector<Sample> ins;
    int arrived = 0;
    std::shared_ptr<SkippedSample> skip;
  };

  void deliver(int i, int port, Item&& it) {
    const PassNode& op = pass_.nodes[static_cast<size_t>(i)];
    switch (op.kind) {
      case StageKind::map:
      case StageKind::cache: {
        if (!it.skip) {
          Timed t(*profs_[static_cast<size_t>(i)]);
          std::shared_ptr<SkippedSample> sk;
          if (!guarded(pass_, op, it.s, [&] { apply_map(pass_, op, it.s); }, &sk)) {
            record(it.seq, sk);
            it.skip = sk;
          }
          t.done();
        }
        return emit(i, std::move(it));
      }
      case StageKind::join: return join(i, port, std::move(it));
      case StageKind::batch_map:
      case StageKind::sink: {
        if (it.skip) return op.kind == StageKind::sink ? retire(it.seq) : emit(i, std::move(it));
        std::vector<Item>& buf = bufs_[static_cast<size_t>(i)];
        buf.push_back(std::move(it));
        const int want = op.kind == StageKind::sink ? pass_.sink_batch : static_cast<BatchStage*>(op.impl)->batch_size();
        if (static_cast<int>(buf.size()) >= std::max(1, want)) run_batch(i);
        return;
      }
      case StageKind::source: break;
    }
    throw std::logic_error("a source inside a pass");
  }

  // Inputs arrive in sample order on each port, so completed samples leave in order too.
  void join(int i, int port, Item&& it) {
    const PassNode& op = pass_.nodes[static_cast<size_t>(i)];
    const size_t ports = t_.inputs[static_cast<size_t>(i)].size();
    Pending& p = joins_[static_cast<size_t>(i)][it.seq];
    if (p.ins.empty()) p.ins.resize(ports);
    if (it.skip) p.skip = it.skip;
    else p.ins[static_cast<size_t>(port)] = std::move(it.s);
    if (++p.arrived < static_cast<int>(ports)) return;
    Item out{it.seq, Sample(), p.skip};
    if (!out.skip) {
      Timed t(*profs_[static_cast<size_t>(i)]);
      std::shared_ptr<SkippedSample> sk;
      if (!guarded(pass_, op, p.ins.front(), [&] { out.s = apply_join(op, p.ins); }, &sk)) {
        record(it.seq, sk);
        out.skip = sk;
      }
      t.done();
    }
    joins_[static_cast<size_t>(i)].erase(it.seq);
    emit(i, std::move(out));
  }

  void emit(int i, Item&& it) {
    const auto& outs = t_.out(i);
    if (outs.empty()) return retire(it.seq);
    for (size_t k = 0; k < outs.size(); ++k) {
      Item copy{it.seq, Sample(), it.skip};
      if (!it.skip) copy.s = k + 1 < outs.size() ? branch_copy(it.s) : std::move(it.s);
      deliver(outs[k].first, outs[k].second, std::move(copy));
    }
  }

  void run_batch(int i) {
    const PassNode& op = pass_.nodes[static_cast<size_t>(i)];
    std::vector<Item> items;
    items.swap(bufs_[static_cast<size_t>(i)]);
    Batch b;
    b.split = pass_.split;
    b.epoch = pass_.epoch;
    for (Item& it : items) b.samples.push_back(std::move(it.s));
    const size_t n = b.samples.size();
    const auto range = [&] {
      return n == 1 ? b.samples.front().describe()
                    : fmt::format("{}..{}", b.samples.front().describe(), b.samples.back().describe());
    };
    std::optional<CoreGate::Closed> closed;
    if (fills_cores(op)) closed.emplace(gate_);
    const auto call = [&] {
      if (op.kind == StageKind::sink) static_cast<SinkStage*>(op.impl)->consume(b);
      else static_cast<BatchStage*>(op.impl)->process(b);
    };
    Timed t(*profs_[static_cast<size_t>(i)]);
    try {
      if (closed) {
        std::future<void> done = CoreThread::get().start(call);
        if (after_core_op) after_core_op();
        done.get();
      } else {
        call();
      }
    } catch (const NodeError&) {
      throw;
    } catch (const std::exception& e) {
      throw NodeError(op.name, range(), e.what(), op.context);
    }
    t.done(static_cast<int64_t>(n));
    // The gate covers this op alone: what its outputs reach next in the tail (a cache write,
    // a head's step on one thread) leaves a core to the per-sample work of the next samples.
    closed.reset();
    if (op.kind == StageKind::sink) {
      for (const Item& it : items) retire(it.seq);
      return;
    }
    if (b.samples.size() != n)
      throw NodeError(op.name, range(), fmt::format("stage returned {} samples for a batch of {}", b.samples.size(), n),
                      op.context);
    for (size_t k = 0; k < n; ++k) emit(i, Item{items[k].seq, std::move(b.samples[k]), nullptr});
  }

  void record(int64_t seq, const std::shared_ptr<SkippedSample>& sk) {
    if (recorded_.insert(seq).second) result.skipped.push_back(*sk);
  }

  void retire(int64_t seq) {
    auto it = remaining_.try_emplace(seq, t_.terminals).first;
    if (--it->second > 0) return;
    remaining_.erase(it);
    ++result.consumed;
    // Report before releasing the token: observers never see a new admission first.
    if (pass_.progress) pass_.progress(result.consumed, pass_.count);
    release_();
  }

  const PassSpec& pass_;
  const Topology& t_;
  CoreGate& gate_;
  std::vector<NodeProfile*> profs_;
  std::vector<std::vector<Item>> bufs_;
  std::vector<std::map<int64_t, Pending>> joins_;
  std::unordered_map<int64_t, int> remaining_;
  std::set<int64_t> recorded_;
  std::function<void()> release_;
};

// What travels on the flow graph's edges: small and cheap to copy (TBB copies messages).
struct Msg {
  int64_t seq = 0;
  std::shared_ptr<Bundle> bundle;
  NodeProfile* from = nullptr;
  int64_t t_out = 0;
};

}  // namespace

namespace {

// A pass whose region is only memory reads: run on the calling thread, no hand-offs. At most
// one partial batch per tail op is ever held, so memory stays bounded.
PassResult run_inline(const PassSpec& pass, const Topology& topo, const Region& region, Profile& profile,
                      CoreGate& gate, NodeProfile& feed_prof, int64_t t_start) {
  // Inline: at most one partial batch per tail op is ever held, so memory stays bounded.
  Tail tail(pass, topo, profile, gate, [] {});
  int64_t fed = 0;
  bool stopped = false;
  for (; fed < pass.count; ++fed) {
    if (pass.stop && pass.stop->load()) {
      stopped = true;
      break;
    }
    Timed tf(feed_prof);
    Sample s = pass.describe(fed);
    tf.done();
    if (pass.on_admit) pass.on_admit(1);
    Bundle b;
    b.seq = fed;
    region.run(b, std::move(s));
    tail.push(std::move(b));
  }
  tail.flush();
  PassResult r = std::move(tail.result);
  r.fed = fed;
  r.interrupted = stopped;
  r.seconds = static_cast<double>(now_ns() - t_start) / 1e9;
  return r;
}

// An extraction (a pass whose tail holds a batch op that fills the cores, and no sink: see
// team_chunk) runs its per-sample work on the core thread's own team, a chunk of samples (the
// op's batch size) at a time: the team takes the next chunk as soon as it has run the op on
// this one, while this thread writes the op's outputs to the cache. On TBB threads the same
// work ran beside the team's idle thread, which libgomp keeps spinning for about 3 ms after
// every parallel region: on 2 cores three threads shared them, and the core thread slept and
// woke twice a batch (pipe bench, extraction small_vgg 32 px, interleaved runs: 0.88-0.92 of
// the bare forward on the team, 0.79-0.86 on TBB threads). Feed order holds: chunks enter the
// tail in order, and a failing sample fails the pass once every sample before it has entered
// the tail, whichever failed first in time. Memory: two chunks, plus what the tail holds.
struct Chunk {
  std::vector<Sample> fed;
  std::vector<Bundle> bundles;
  std::vector<std::exception_ptr> errors;  // per sample
  std::future<void> done;                  // set when handed to the team
  bool started = false;                    // handed to the team (stays true once delivered)
};

class TeamFeed {
 public:
  TeamFeed(const PassSpec& pass, const Region& region, NodeProfile& feed_prof, int64_t chunk)
      : pass_(pass), region_(region), feed_prof_(feed_prof), chunk_(chunk) {}

  // Describes the next chunk's samples (none once the pass is done or stopped).
  void describe(Chunk& c) {
    c = Chunk();
    while (fed_ < pass_.count && static_cast<int64_t>(c.fed.size()) < chunk_) {
      if (pass_.stop && pass_.stop->load()) {
        stopped_ = true;
        break;
      }
      Timed t(feed_prof_);
      c.fed.push_back(pass_.describe(fed_));
      t.done();
      c.bundles.emplace_back();
      c.bundles.back().seq = fed_++;
      if (pass_.on_admit) pass_.on_admit(fed_ - retired_);
    }
    c.errors.resize(c.fed.size());
  }

  // Hands the chunk's per-sample work to the core thread's team, once. Ungated: on the core
  // thread it cannot run beside the op that fills the cores, and must not wait for the tail.
  void start(Chunk& c) const {
    if (c.started || c.fed.empty()) return;
    c.started = true;
    c.done = CoreThread::get().start([this, &c] {
      torch_parallel_for_each(static_cast<int64_t>(c.fed.size()), [&](int64_t j) {
        const auto k = static_cast<size_t>(j);
        CoreThread::t_in_team = true;
        try {
          region_.run(c.bundles[k], std::move(c.fed[k]), /*gated=*/false);
        } catch (...) {
          c.errors[k] = std::current_exception();
        }
        CoreThread::t_in_team = false;
      });
    });
  }

  // Waits for the chunk, then pushes its bundles into the tail in order up to the first failure.
  static void deliver(Chunk& c, Tail& tail) {
    c.done.get();
    for (size_t k = 0; k < c.bundles.size(); ++k) {
      if (c.errors[k]) std::rethrow_exception(c.errors[k]);
      tail.push(std::move(c.bundles[k]));
    }
  }

  // Waits until the team is done with the chunk, whatever it threw (on the way out of a failed pass).
  static void settle(Chunk& c) {
    if (c.done.valid()) c.done.wait();
  }

  void retired() { ++retired_; }
  int64_t fed() const { return fed_; }
  bool stopped() const { return stopped_; }

 private:
  const PassSpec& pass_;
  const Region& region_;
  NodeProfile& feed_prof_;
  const int64_t chunk_;
  int64_t fed_ = 0, retired_ = 0;
  bool stopped_ = false;
};

PassResult run_team(const PassSpec& pass, const Topology& topo, const Region& region, Profile& profile,
                    CoreGate& gate, NodeProfile& feed_prof, int64_t chunk, int64_t t_start) {
  TeamFeed feed(pass, region, feed_prof, chunk);
  Tail tail(pass, topo, profile, gate, [&] { feed.retired(); });
  Chunk chunks[2];
  Chunk* now = &chunks[0];
  Chunk* next = &chunks[1];
  // Handed over right behind the op that fills the cores: the core thread goes on to it
  // without a wake-up in between.
  tail.after_core_op = [&] { feed.start(*next); };
  try {
    feed.describe(*now);
    feed.start(*now);
    while (!now->fed.empty()) {
      feed.describe(*next);
      TeamFeed::deliver(*now, tail);
      feed.start(*next);  // where no op filled the cores while `now` went through
      std::swap(now, next);
    }
    tail.after_core_op = nullptr;  // `next` was delivered: nothing is left to start
    tail.flush();
  } catch (...) {
    for (Chunk& c : chunks) TeamFeed::settle(c);
    throw;
  }
  PassResult r = std::move(tail.result);
  r.fed = feed.fed();
  r.interrupted = feed.stopped();
  r.seconds = static_cast<double>(now_ns() - t_start) / 1e9;
  return r;
}

// The flow graph: feed -> limiter -> region (parallel) -> sequencer -> tail (serial).
PassResult run_flow(const PassSpec& pass, const Topology& topo, const Region& region, Profile& profile,
                    CoreGate& gate, NodeProfile& feed_prof, NodeProfile* tail_in, int64_t cap, int64_t t_start) {
  flow::graph g;
  std::atomic<int64_t> in_flight{0};
  std::atomic<bool> stopped{false};

  int64_t next = 0;
  flow::input_node<Msg> feed(g, [&](oneapi::tbb::flow_control& fc) -> Msg {
    if (next >= pass.count || (pass.stop && pass.stop->load())) {
      if (next < pass.count) stopped = true;
      fc.stop();
      return {};
    }
    Timed t(feed_prof);
    Msg m;
    m.seq = next;
    m.bundle = std::make_shared<Bundle>();
    m.bundle->seq = next;
    m.bundle->values.resize(1);
    m.bundle->values[0] = pass.describe(next);
    ++next;
    m.from = &feed_prof;
    m.t_out = t.done();
    return m;
  });

  flow::limiter_node<Msg> limiter(g, static_cast<size_t>(cap));

  // Per-sample work runs unlimited: the limiter bounds it.
  flow::function_node<Msg, Msg> region_node(g, flow::unlimited, [&](Msg m) -> Msg {
    if (m.from) m.from->blocked_ns += now_ns() - m.t_out;
    if (pass.on_admit) pass.on_admit(++in_flight);
    Sample fed = std::move(m.bundle->values[0]);
    region.run(*m.bundle, std::move(fed));
    m.from = m.bundle->from;
    m.t_out = m.bundle->t_out ? m.bundle->t_out : now_ns();
    return m;
  });

  Tail tail(pass, topo, profile, gate, [&] {
    --in_flight;
    limiter.decrementer().try_put(flow::continue_msg());
  });
  int64_t tail_busy = 0;
  // Serial: the tail batches, owns the device and updates the heads in sample order.
  flow::function_node<Msg, flow::continue_msg> tail_node(g, flow::serial, [&](Msg m) {
    const int64_t t0 = now_ns();
    if (m.from) m.from->blocked_ns += t0 - m.t_out;
    tail.push(std::move(*m.bundle));
    tail_busy += now_ns() - t0;
    return flow::continue_msg();
  });
  // Restores feed order; bounded because the limiter bounds what can arrive out of order.
  flow::sequencer_node<Msg> sequencer(g, [](const Msg& m) { return static_cast<size_t>(m.seq); });

  flow::make_edge(feed, limiter);
  flow::make_edge(limiter, region_node);
  if (pass.ordered) {
    flow::make_edge(region_node, sequencer);
    flow::make_edge(sequencer, tail_node);
  } else {
    flow::make_edge(region_node, tail_node);
  }

  feed.activate();
  try {
    g.wait_for_all();
  } catch (...) {
    // The graph is cancelled; wait_for_all rethrew the first exception. Let TBB settle.
    g.reset();
    throw;
  }
  tail.flush();
  PassResult r = std::move(tail.result);
  r.fed = next;
  r.interrupted = stopped.load();
  const int64_t wall = now_ns() - t_start;
  if (tail_in) tail_in->wait_ns += std::max<int64_t>(0, wall - tail_busy);
  r.seconds = static_cast<double>(wall) / 1e9;
  return r;
}


}  // namespace

void run_on_core_thread(const std::function<void()>& job) { CoreThread::get().start(job).get(); }

PassResult run_pass(const PassSpec& pass, Profile& profile) {
  const int64_t t_start = now_ns();
  const Topology topo = resolve(pass);
  // Samples wait in partial batches while holding tokens: the cap must exceed what the
  // tail can hold, or the feed would stall forever on a half-built batch.
  const int64_t cap = std::max<int64_t>(pass.in_flight, 2 * topo.held + 2);

  NodeProfile& feed_prof = profile.node("(feed)", "source");
  // Only a pass with a separate load step shows it in the profile (planned passes load in an op).
  NodeProfile& load_prof = pass.load ? profile.node(pass.load_name, "load") : feed_prof;
  CoreGate gate;
  const Region region(pass, topo, profile, load_prof, gate);
  NodeProfile* tail_in = nullptr;
  for (size_t i = 0; i < pass.nodes.size() && !tail_in; ++i)
    if (!topo.region[i]) tail_in = &profile.node(pass.nodes[i].name, pass.nodes[i].stage);

  if (region.cheap()) return run_inline(pass, topo, region, profile, gate, feed_prof, t_start);
  if (const int64_t chunk = team_chunk(pass, topo); chunk > 0 && pass.on_core_team)
    return run_team(pass, topo, region, profile, gate, feed_prof, chunk, t_start);
  return run_flow(pass, topo, region, profile, gate, feed_prof, tail_in, cap, t_start);
}

}  // namespace pipeline
