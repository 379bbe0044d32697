#include "executor.h"

#include <algorithm>
#include <exception>

#include <fmt/format.h>
#include <oneapi/tbb/flow_graph.h>

namespace pipeline {

namespace flow = oneapi::tbb::flow;

namespace {

int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// What travels on the graph's edges: small and cheap to copy (TBB copies messages).
struct Msg {
  int64_t seq = 0;
  std::shared_ptr<Sample> sample;
  std::shared_ptr<SkippedSample> skipped;  // set once a stage rejected the sample
  NodeProfile* from = nullptr;             // the node that produced this message
  int64_t t_out = 0;                       // when it did
};

std::string sample_name(const Sample& s) { return s.origin.empty() ? s.describe() : s.origin; }

// Per-node profile accounting around a stage call.
struct Timed {
  NodeProfile& p;
  int64_t t0 = now_ns();
  explicit Timed(NodeProfile& prof, const Msg* in = nullptr) : p(prof) {
    if (in && in->from) in->from->blocked_ns += t0 - in->t_out;
  }
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

// The serial, ordered part of a pass: everything from the first batching node on.
class Tail {
 public:
  Tail(const PassSpec& pass, std::vector<const PassNode*> ops, std::vector<NodeProfile*> profs,
       std::function<void()> release)
      : pass_(pass), ops_(std::move(ops)), profs_(std::move(profs)), bufs_(ops_.size()),
        release_(std::move(release)) {}

  void push(Sample&& s) { push_at(0, std::move(s)); }

  void skip(SkippedSample&& sk) {
    result.skipped.push_back(std::move(sk));
    retire(1);
  }

  // End of pass: drain partial batches in chain order.
  void flush() {
    for (size_t i = 0; i < ops_.size(); ++i) {
      if (bufs_[i].empty()) continue;
      std::vector<Sample> rest;
      rest.swap(bufs_[i]);
      run_batch(i, std::move(rest));
    }
  }

  PassResult result;

 private:
  void push_at(size_t i, Sample&& s) {
    if (i == ops_.size()) {
      retire(1);
      return;
    }
    const PassNode& op = *ops_[i];
    switch (op.kind) {
      case StageKind::map: {
        Timed t(*profs_[i]);
        try {
          Rng rng = Rng::for_sample(pass_.seed, op.name, s.epoch, s.id, s.view);
          static_cast<MapStage*>(op.impl)->process(s, rng);
        } catch (const SampleError& e) {
          t.done();
          if (!pass_.skip_bad) throw NodeError(op.name, s.describe(), e.what(), op.context);
          skip({s.id, sample_name(s), e.what(), op.name, s.split});
          return;
        } catch (const NodeError&) {
          throw;
        } catch (const std::exception& e) {
          throw NodeError(op.name, s.describe(), e.what(), op.context);
        }
        t.done();
        push_at(i + 1, std::move(s));
        return;
      }
      case StageKind::cache: {
        Timed t(*profs_[i]);
        try {
          if (op.write) op.write(s);
        } catch (const std::exception& e) {
          throw NodeError(op.name, s.describe(), e.what());
        }
        t.done();
        push_at(i + 1, std::move(s));
        return;
      }
      case StageKind::batch_map:
      case StageKind::sink: {
        const size_t want = op.kind == StageKind::sink
                                ? static_cast<size_t>(std::max(1, pass_.sink_batch))
                                : static_cast<size_t>(std::max(1, static_cast<BatchStage*>(op.impl)->batch_size()));
        bufs_[i].push_back(std::move(s));
        if (bufs_[i].size() >= want) {
          std::vector<Sample> full;
          full.swap(bufs_[i]);
          run_batch(i, std::move(full));
        }
        return;
      }
      case StageKind::source:
        throw std::logic_error("a source inside a pass");
    }
  }

  void run_batch(size_t i, std::vector<Sample>&& samples) {
    const PassNode& op = *ops_[i];
    Batch b;
    b.split = pass_.split;
    b.epoch = pass_.epoch;
    b.samples = std::move(samples);
    const size_t n = b.samples.size();
    const auto range = [&] {
      return n == 1 ? b.samples.front().describe()
                    : fmt::format("{}..{}", b.samples.front().describe(), b.samples.back().describe());
    };
    Timed t(*profs_[i]);
    try {
      if (op.kind == StageKind::sink) static_cast<SinkStage*>(op.impl)->consume(b);
      else static_cast<BatchStage*>(op.impl)->process(b);
    } catch (const NodeError&) {
      throw;
    } catch (const std::exception& e) {
      throw NodeError(op.name, range(), e.what(), op.context);
    }
    t.done(static_cast<int64_t>(n));
    if (op.kind == StageKind::sink) {
      retire(static_cast<int64_t>(n));
      return;
    }
    if (b.samples.size() != n)
      throw NodeError(op.name, range(),
                      fmt::format("stage returned {} samples for a batch of {}", b.samples.size(), n), op.context);
    for (Sample& s : b.samples) push_at(i + 1, std::move(s));
  }

  void retire(int64_t n) {
    result.consumed += n;
    // Report before releasing tokens: observers never see a new admission first.
    if (pass_.progress) pass_.progress(result.consumed, pass_.count);
    for (int64_t k = 0; k < n; ++k) release_();
  }

  const PassSpec& pass_;
  std::vector<const PassNode*> ops_;
  std::vector<NodeProfile*> profs_;
  std::vector<std::vector<Sample>> bufs_;
  std::function<void()> release_;
};

}  // namespace

PassResult run_pass(const PassSpec& pass, Profile& profile) {
  const int64_t t_start = now_ns();

  // The parallel prefix: per-sample maps up to the first node that needs order.
  size_t prefix = 0;
  while (prefix < pass.nodes.size() && pass.nodes[prefix].kind == StageKind::map) ++prefix;
  std::vector<const PassNode*> tail_ops;
  std::vector<NodeProfile*> tail_profs;
  int64_t held = 0;  // samples the tail may hold in partial batches
  for (size_t i = prefix; i < pass.nodes.size(); ++i) {
    const PassNode& n = pass.nodes[i];
    tail_ops.push_back(&n);
    tail_profs.push_back(&profile.node(n.name, n.stage));
    if (n.kind == StageKind::sink) held += pass.sink_batch;
    if (n.kind == StageKind::batch_map) held += static_cast<BatchStage*>(n.impl)->batch_size();
  }
  // Samples wait in partial batches while holding tokens: the cap must exceed what the
  // tail can hold, or the feed would stall forever on a half-built batch.
  const int64_t cap = std::max<int64_t>(pass.in_flight, 2 * held + 2);

  NodeProfile& feed_prof = profile.node("(feed)", "source");
  NodeProfile& load_prof = profile.node(pass.load_name, "load");
  if (prefix == 0 && pass.cheap_load) {
    // Inline: at most one partial batch per tail stage is ever held, so memory stays bounded.
    Tail tail(pass, tail_ops, tail_profs, [] {});
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
      Timed tl(load_prof);
      try {
        if (pass.on_admit) pass.on_admit(1);
        pass.load(s);
      } catch (const SampleError& e) {
        tl.done();
        if (!pass.skip_bad) throw NodeError(pass.load_name, s.describe(), e.what());
        tail.skip({s.id, sample_name(s), e.what(), pass.load_name, s.split});
        continue;
      } catch (const std::exception& e) {
        throw NodeError(pass.load_name, s.describe(), e.what());
      }
      tl.done();
      tail.push(std::move(s));
    }
    tail.flush();
    PassResult r = std::move(tail.result);
    r.fed = fed;
    r.interrupted = stopped;
    r.seconds = static_cast<double>(now_ns() - t_start) / 1e9;
    return r;
  }

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
    m.sample = std::make_shared<Sample>(pass.describe(next));
    ++next;
    m.from = &feed_prof;
    m.t_out = t.done();
    return m;
  });

  flow::limiter_node<Msg> limiter(g, static_cast<size_t>(cap));

  // Wraps a per-sample step: profile, error policy, skip propagation.
  const auto step = [&](const std::string& name, NodeProfile& prof,
                        std::function<void(Sample&)> body, const std::string& context = "") {
    return [&pass, &prof, name, context, body = std::move(body)](Msg m) -> Msg {
      if (m.skipped) {
        if (m.from) m.from->blocked_ns += now_ns() - m.t_out;
        m.from = nullptr;
        return m;
      }
      Timed t(prof, &m);
      try {
        body(*m.sample);
      } catch (const SampleError& e) {
        if (!pass.skip_bad) throw NodeError(name, m.sample->describe(), e.what(), context);
        m.skipped = std::make_shared<SkippedSample>(
            SkippedSample{m.sample->id, sample_name(*m.sample), e.what(), name, m.sample->split});
      } catch (const NodeError&) {
        throw;
      } catch (const std::exception& e) {
        throw NodeError(name, m.sample->describe(), e.what(), context);
      }
      m.from = &prof;
      m.t_out = t.done();
      return m;
    };
  };

  std::vector<std::unique_ptr<flow::function_node<Msg, Msg>>> maps;
  maps.push_back(std::make_unique<flow::function_node<Msg, Msg>>(
      g, flow::unlimited,
      step(pass.load_name, load_prof, [&pass, &in_flight](Sample& s) {
        if (pass.on_admit) pass.on_admit(++in_flight);
        pass.load(s);
      })));
  for (size_t i = 0; i < prefix; ++i) {
    const PassNode& n = pass.nodes[i];
    NodeProfile& prof = profile.node(n.name, n.stage);
    auto* stage = static_cast<MapStage*>(n.impl);
    const uint64_t seed = pass.seed;
    const std::string name = n.name;
    // Parallel-safe stages run unlimited (bounded by the limiter); serial ones one at a time.
    const size_t conc = n.concurrency == Concurrency::serial ? flow::serial : flow::unlimited;
    maps.push_back(std::make_unique<flow::function_node<Msg, Msg>>(
        g, conc, step(n.name, prof, [stage, seed, name](Sample& s) {
          Rng rng = Rng::for_sample(seed, name, s.epoch, s.id, s.view);
          stage->process(s, rng);
        }, n.context)));
  }

  Tail tail(pass, tail_ops, tail_profs, [&] {
    --in_flight;
    limiter.decrementer().try_put(flow::continue_msg());
  });
  NodeProfile* tail_in = tail_profs.empty() ? nullptr : tail_profs.front();
  int64_t tail_busy = 0;
  // Serial: the tail batches, owns the device and updates the head in sample order.
  flow::function_node<Msg, flow::continue_msg> tail_node(g, flow::serial, [&](Msg m) {
    const int64_t t0 = now_ns();
    if (m.from) m.from->blocked_ns += t0 - m.t_out;
    if (m.skipped) tail.skip(std::move(*m.skipped));
    else tail.push(std::move(*m.sample));
    tail_busy += now_ns() - t0;
    return flow::continue_msg();
  });
  // Restores feed order; bounded because the limiter bounds what can arrive out of order.
  flow::sequencer_node<Msg> sequencer(g, [](const Msg& m) { return static_cast<size_t>(m.seq); });

  flow::make_edge(feed, limiter);
  flow::make_edge(limiter, *maps.front());
  for (size_t i = 0; i + 1 < maps.size(); ++i) flow::make_edge(*maps[i], *maps[i + 1]);
  if (pass.ordered) {
    flow::make_edge(*maps.back(), sequencer);
    flow::make_edge(sequencer, tail_node);
  } else {
    flow::make_edge(*maps.back(), tail_node);
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

}  // namespace pipeline
