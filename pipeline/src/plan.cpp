#include "plan.h"

#include <algorithm>
#include <map>
#include <set>

#include <fmt/format.h>

#include "cache_store.h"
#include "pipe/rng.h"

namespace pipeline {

const char* op_kind_name(OpKind k) {
  switch (k) {
    case OpKind::feed: return "feed";
    case OpKind::load: return "load";
    case OpKind::cache_read: return "cache-read";
    case OpKind::map: return "map";
    case OpKind::batch: return "batch";
    case OpKind::join: return "join";
    case OpKind::cache_write: return "cache-write";
    case OpKind::sink: return "sink";
  }
  return "?";
}

int cache_view_for(uint64_t seed, const std::string& cache_node, int views, int epoch, int64_t id) {
  if (views <= 1) return 0;
  Rng rng = Rng::for_sample(seed, cache_node, epoch, id, 0);
  return static_cast<int>(rng.below(views));
}

namespace {

bool is(const NodeSpec& n, StageKind k) { return n.entry->schema.kind == k; }

// The graph as one split sees it: random nodes act on training data only (elsewhere they
// pass their input through), `train_only` sinks sit out evaluation passes.
struct Active {
  std::vector<char> on;
  std::vector<std::vector<int>> in;  // effective inputs; -1 (or none at all): the source
};

Active activate(const GraphSpec& g, Split split) {
  Active a;
  const size_t n = g.nodes.size();
  a.on.assign(n, 1);
  a.in.resize(n);
  for (size_t i = 0; i < n; ++i) {
    const StageSchema& s = g.nodes[i].entry->schema;
    if (split != Split::train && (s.random || (s.kind == StageKind::sink && s.train_only))) a.on[i] = 0;
    for (int in : g.nodes[i].inputs) {
      // A bypassed node hands on what it was given.
      while (in >= 0 && !a.on[static_cast<size_t>(in)])
        in = a.in[static_cast<size_t>(in)].empty() ? -1 : a.in[static_cast<size_t>(in)][0];
      a.in[i].push_back(in);  // -1: the source, when a bypassed node was fed by it
    }
  }
  return a;
}

// Everything that decides the bytes of `producer`'s output on `split`: the source, each
// upstream node (stage, params, fingerprint, how it is wired) and, for random ones, the name
// and seed of their streams and the views kept. Cache nodes pass values through unchanged
// and are left out, like node names of deterministic nodes.
std::string cache_key(const GraphSpec& g, const Active& a, int producer, Split split, int views,
                      const PlanContext& ctx, std::string* description) {
  std::set<int> up;
  std::vector<int> todo{producer};
  while (!todo.empty()) {
    const int i = todo.back();
    todo.pop_back();
    if (i < 0 || !up.insert(i).second) continue;
    for (int in : a.in[static_cast<size_t>(i)]) todo.push_back(in);
  }
  std::map<int, int> pos;  // node -> position among the non-cache upstream nodes
  const auto wired = [&](int i) {
    // Through cache nodes to the node that computed the value.
    while (i >= 0 && is(g.nodes[static_cast<size_t>(i)], StageKind::cache))
      i = a.in[static_cast<size_t>(i)].empty() ? -1 : a.in[static_cast<size_t>(i)][0];
    return i < 0 ? -1 : pos.at(i);
  };
  Hasher h;
  std::string d = fmt::format("source {} [{}]", g.source, ctx.source_identity);
  h.field("pipe-cache-v2").field(d).field(split_name(split));
  for (int i : up) {
    const NodeSpec& n = g.nodes[static_cast<size_t>(i)];
    if (is(n, StageKind::cache)) continue;
    std::vector<std::string> ins;
    for (int in : a.in[static_cast<size_t>(i)]) ins.push_back(fmt::format("#{}", wired(in)));
    if (ins.empty()) ins.push_back("#-1");  // the source
    const std::string& fp = ctx.fingerprints.at(static_cast<size_t>(i));
    std::string part = fmt::format("{}({}){}", n.stage, n.params.canonical(), fp.empty() ? "" : "[" + fp + "]");
    if (ins.size() != 1 || ins[0] != fmt::format("#{}", static_cast<int>(pos.size()) - 1))
      part += fmt::format("<-[{}]", fmt::join(ins, ","));
    if (n.entry->schema.random) part += fmt::format("{{random '{}' seed {}}}", n.name, g.train.seed);
    h.field(part);
    d += " -> " + part;
    pos[i] = static_cast<int>(pos.size());
  }
  h.field(fmt::format("views={}", views));
  d += fmt::format(" | split={} views={}", split_name(split), views);
  *description = d;
  return h.hex();
}

// Whether node i, or a node upstream of it on this split, is of kind k.
bool kind_upstream(const GraphSpec& g, const Active& a, int i, StageKind k) {
  if (i < 0) return false;
  if (is(g.nodes[static_cast<size_t>(i)], k)) return true;
  for (int in : a.in[static_cast<size_t>(i)])
    if (kind_upstream(g, a, in, k)) return true;
  return false;
}

std::vector<int> active_sinks(const GraphSpec& g, const Active& a) {
  std::vector<int> out;
  for (size_t i = 0; i < g.nodes.size(); ++i)
    if (a.on[i] && is(g.nodes[i], StageKind::sink)) out.push_back(static_cast<int>(i));
  return out;
}

// Explicit cache nodes, then implicit memos: evaluation features a batch stage computes
// and no explicit cache stores are memoized before the sink, since validation and test
// images are the same every epoch.
std::vector<CachePoint> cache_points(const GraphSpec& g, const Active& a, Split split, const PlanContext& ctx) {
  std::vector<CachePoint> out;
  for (size_t i = 0; i < g.nodes.size(); ++i) {
    const NodeSpec& n = g.nodes[i];
    if (!a.on[i] || !is(n, StageKind::cache)) continue;
    CachePoint c;
    c.name = n.name;
    c.node = static_cast<int>(i);
    c.producer = a.in[i].empty() ? -1 : a.in[i][0];  // -1: the source itself
    c.split = split;
    c.root = resolve_cache_dir(resolve_path(n.params.string("dir"), g.dir));
    const int views = split == Split::train ? static_cast<int>(n.params.integer("views")) : 0;
    c.views = std::max(1, views);
    c.key = cache_key(g, a, c.producer, split, views, ctx, &c.description);
    out.push_back(std::move(c));
  }
  if (split == Split::train) return out;
  std::vector<int> producers;
  for (int s : active_sinks(g, a)) {
    if (a.in[static_cast<size_t>(s)].empty()) continue;
    const int p = a.in[static_cast<size_t>(s)][0];
    if (p >= 0 && kind_upstream(g, a, p, StageKind::batch_map) && !kind_upstream(g, a, p, StageKind::cache) &&
        std::find(producers.begin(), producers.end(), p) == producers.end())
      producers.push_back(p);
  }
  for (int p : producers) {
    CachePoint c;
    c.name = producers.size() == 1 ? "(memo)" : fmt::format("(memo {})", g.nodes[static_cast<size_t>(p)].name);
    c.producer = p;
    c.split = split;
    c.root = resolve_cache_dir("");
    c.key = cache_key(g, a, p, split, 0, ctx, &c.description);
    out.push_back(std::move(c));
  }
  return out;
}

// Builds the ops of one pass. `targets`: the nodes whose values the pass must deliver (the
// sinks, or a cache's producer for an extraction pass); `write_only`: extraction of that
// cache point.
class PassBuilder {
 public:
  PassBuilder(const GraphSpec& g, const Active& a, PassPlan& pass) : g_(g), a_(a), p_(pass) {
    compute_.assign(g.nodes.size(), 0);
    read_.assign(pass.caches.size(), 0);
    write_.assign(pass.caches.size(), 0);
  }

  void need_node(int i) {
    if (i < 0) {
      source_ = true;
      return;
    }
    const int k = explicit_point(i);
    if (k >= 0) {
      if (p_.caches[static_cast<size_t>(k)].present) read_[static_cast<size_t>(k)] = 1;
      else if (!write_[static_cast<size_t>(k)]) {
        write_[static_cast<size_t>(k)] = 1;
        need_node(p_.caches[static_cast<size_t>(k)].producer);
      }
      return;
    }
    if (compute_[static_cast<size_t>(i)]) return;
    compute_[static_cast<size_t>(i)] = 1;
    const bool sink = is(g_.nodes[static_cast<size_t>(i)], StageKind::sink);
    if (a_.in[static_cast<size_t>(i)].empty()) source_ = true;
    for (int in : a_.in[static_cast<size_t>(i)]) {
      const int k2 = sink ? implicit_point(in) : -1;
      if (k2 < 0) need_node(in);
      else if (p_.caches[static_cast<size_t>(k2)].present) read_[static_cast<size_t>(k2)] = 1;
      else {
        write_[static_cast<size_t>(k2)] = 1;
        need_node(in);
      }
    }
  }

  void need_write(int k) {
    write_[static_cast<size_t>(k)] = 1;
    need_node(p_.caches[static_cast<size_t>(k)].producer);
  }

  void emit() {
    add({OpKind::feed, "(feed)", "", -1, -1, {}});
    const int src = source_ ? add({OpKind::load, "(load)", "", -1, -1, {0}}) : -1;
    std::vector<int> read_op(p_.caches.size(), -1), write_op(p_.caches.size(), -1), value(g_.nodes.size(), -1);
    for (size_t k = 0; k < p_.caches.size(); ++k)
      if (read_[k]) read_op[k] = add({OpKind::cache_read, p_.caches[k].name, "cache", -1, static_cast<int>(k), {0}});
    // A cache whose producer is the source itself.
    for (size_t c = 0; c < p_.caches.size(); ++c)
      if (write_[c] && p_.caches[c].producer < 0)
        write_op[c] = add({OpKind::cache_write, p_.caches[c].name, "cache", -1, static_cast<int>(c), {src}});
    const auto value_of = [&](int i) { return i < 0 ? src : value[static_cast<size_t>(i)]; };
    for (size_t i = 0; i < g_.nodes.size(); ++i) {
      const NodeSpec& n = g_.nodes[i];
      const int k = explicit_point(static_cast<int>(i));
      if (k >= 0) {
        value[i] = read_[static_cast<size_t>(k)] ? read_op[static_cast<size_t>(k)] : write_op[static_cast<size_t>(k)];
        continue;
      }
      if (!compute_[i]) continue;
      PlanOp op{kind_of(n), n.name, n.stage, static_cast<int>(i), -1, {}};
      for (int in : a_.in[i]) {
        const int k2 = is(n, StageKind::sink) ? implicit_point(in) : -1;
        op.inputs.push_back(k2 < 0 ? value_of(in)
                                   : read_[static_cast<size_t>(k2)] ? read_op[static_cast<size_t>(k2)]
                                                                    : write_op[static_cast<size_t>(k2)]);
      }
      if (op.inputs.empty()) op.inputs.push_back(src);
      value[i] = add(std::move(op));
      // Writes of what node i produced follow it.
      for (size_t c = 0; c < p_.caches.size(); ++c)
        if (write_[c] && p_.caches[c].producer == static_cast<int>(i))
          write_op[c] = add({OpKind::cache_write, p_.caches[c].name, "cache", -1, static_cast<int>(c), {value[i]}});
    }
  }

 private:
  static OpKind kind_of(const NodeSpec& n) {
    switch (n.entry->schema.kind) {
      case StageKind::batch_map: return OpKind::batch;
      case StageKind::join: return OpKind::join;
      case StageKind::sink: return OpKind::sink;
      default: return OpKind::map;
    }
  }
  int explicit_point(int node) const {
    for (size_t k = 0; k < p_.caches.size(); ++k)
      if (p_.caches[k].node == node) return static_cast<int>(k);
    return -1;
  }
  int implicit_point(int producer) const {
    for (size_t k = 0; k < p_.caches.size(); ++k)
      if (p_.caches[k].node < 0 && p_.caches[k].producer == producer) return static_cast<int>(k);
    return -1;
  }
  int add(PlanOp op) {
    p_.ops.push_back(std::move(op));
    return static_cast<int>(p_.ops.size()) - 1;
  }

  const GraphSpec& g_;
  const Active& a_;
  PassPlan& p_;
  std::vector<char> compute_, read_, write_;
  bool source_ = false;
};

}  // namespace

std::vector<PassPlan> plan_split(const GraphSpec& spec, Split split, int epoch, const PlanContext& ctx) {
  const Active a = activate(spec, split);
  std::vector<CachePoint> points = cache_points(spec, a, split, ctx);
  for (CachePoint& c : points) c.present = ctx.present && ctx.present(c);
  std::vector<PassPlan> out;
  for (size_t k = 0; k < points.size(); ++k) {
    // A `views: K` cache is filled up front, one pass per view, then read like any hit; so
    // is every cache when the context asks (a distributed run shards these passes by id).
    if (points[k].present || (points[k].views <= 1 && !ctx.extract_first)) continue;
    for (int v = 0; v < points[k].views; ++v) {
      PassPlan x;
      x.split = split;
      x.extract_view = v;
      x.extract_cache = static_cast<int>(k);
      x.purpose = points[k].views > 1 ? fmt::format("extract view {}/{}", v + 1, points[k].views)
                                       : fmt::format("extract {}", points[k].name);
      x.caches = points;
      PassBuilder b(spec, a, x);
      b.need_write(static_cast<int>(k));
      b.emit();
      out.push_back(std::move(x));
    }
    points[k].present = true;
  }
  PassPlan p;
  p.split = split;
  p.epoch = epoch;
  p.purpose = split_name(split);
  p.caches = points;
  PassBuilder b(spec, a, p);
  for (int s : active_sinks(spec, a)) b.need_node(s);
  b.emit();
  out.push_back(std::move(p));
  return out;
}

std::string format_pass(const PassPlan& pass, const GraphSpec& spec) {
  (void)spec;
  std::string out;
  for (size_t i = 0; i < pass.ops.size(); ++i) {
    const PlanOp& op = pass.ops[i];
    std::vector<std::string> ins;
    for (int in : op.inputs) ins.push_back(fmt::format("#{}", in));
    std::string what = op.stage.empty() || op.kind == OpKind::cache_read || op.kind == OpKind::cache_write
                           ? op.name
                           : fmt::format("{} ({})", op.name, op.stage);
    std::string line = fmt::format("    #{:<2} {:<11} {}", i, op_kind_name(op.kind), what);
    if (!ins.empty()) line += fmt::format("{:<{}} <- {}", "", what.size() < 28 ? 28 - what.size() : 0, fmt::join(ins, ", "));
    if (op.cache >= 0) {
      const CachePoint& c = pass.caches[static_cast<size_t>(op.cache)];
      std::string state = c.present ? "present" : "missing";
      if (op.kind == OpKind::cache_write) state = "missing: written by this pass";
      if (pass.extract_view >= 0) state = fmt::format("missing: view {} written by this pass", pass.extract_view + 1);
      line += fmt::format("  key {} ({}{})", c.key, state, c.views > 1 ? fmt::format(", {} views", c.views) : "");
    }
    out += line + "\n";
  }
  return out;
}

}  // namespace pipeline
