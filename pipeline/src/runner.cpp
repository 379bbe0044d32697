#include "runner.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <thread>

#include <fmt/format.h>
#include <oneapi/tbb/global_control.h>

#include "cache_store.h"
#include "torch_runtime.h"
#include "cache.h"

namespace fs = std::filesystem;

namespace pipeline {

int configure_threads(int n) {
  if (n <= 0) n = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  // One global_control for the process: TBB runs per-sample stages on at most n threads,
  // and LibTorch's intra-op pool (OpenMP) is sized to the same n. The conv base runs on a
  // TBB thread that becomes the OpenMP master, so its team reuses that thread.
  static std::unique_ptr<oneapi::tbb::global_control> control;
  control.reset();
  control = std::make_unique<oneapi::tbb::global_control>(
      oneapi::tbb::global_control::max_allowed_parallelism, static_cast<size_t>(n));
  torch_set_threads(n);
  return n;
}

namespace {

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

std::string timestamp() {
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  localtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y%m%d-%H%M%S", &tm);
  return buf;
}

// A deterministic permutation of [0, n) for (seed, epoch): the training order.
std::vector<int64_t> shuffled(int64_t n, uint64_t seed, int epoch) {
  std::vector<int64_t> order(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) order[static_cast<size_t>(i)] = i;
  Rng rng(seed, hash64("(shuffle)"), static_cast<uint64_t>(epoch), 0, 0);
  for (int64_t i = n - 1; i > 0; --i) std::swap(order[static_cast<size_t>(i)], order[static_cast<size_t>(rng.below(i + 1))]);
  return order;
}

struct Node {
  const NodeSpec* spec;
  std::unique_ptr<Stage> impl;
};

// A progress line on a terminal, redrawn at most ~10 times a second.
class Progress {
 public:
  explicit Progress(bool enabled) : enabled_(enabled) {}
  void update(const std::string& label, int64_t done, int64_t total) {
    if (!enabled_ || total <= 0) return;
    const double t = now_s();
    if (done < total && t - last_ < 0.1) return;
    last_ = t;
    const int width = 30;
    const int filled = static_cast<int>(width * done / total);
    std::fprintf(stderr, "\r  %-24s [%s%s] %lld/%lld", label.c_str(), std::string(static_cast<size_t>(filled), '#').c_str(),
                 std::string(static_cast<size_t>(width - filled), '.').c_str(), static_cast<long long>(done),
                 static_cast<long long>(total));
    std::fflush(stderr);
  }
  void clear() {
    if (enabled_) std::fprintf(stderr, "\r%80s\r", "");
  }

 private:
  bool enabled_;
  double last_ = 0;
};

class Run {
 public:
  Run(const GraphSpec& spec, const RunConfig& cfg) : spec_(spec), cfg_(cfg), progress_(cfg.progress) {}

  RunResult go() {
    const double t0 = now_s();
    res_.out_dir = cfg_.resume_dir.empty() ? out_dir() : cfg_.resume_dir;
    if (cfg_.write_outputs) fs::create_directories(res_.out_dir);
    threads_ = configure_threads(cfg_.threads);
    torch_manual_seed(spec_.train.seed);

    SourceContext sctx{spec_.dir};
    source_ = spec_.source_entry->make_source(spec_.source_params, sctx);
    for (const NodeSpec& n : spec_.nodes) {
      StageContext ctx{n.name, spec_.dir, spec_.train.seed};
      nodes_.push_back({&n, n.entry->make(n.params, ctx)});
    }
    sink_ = dynamic_cast<SinkStage*>(nodes_.back().impl.get());
    RunInfo info;
    info.seed = spec_.train.seed;
    info.epochs = spec_.train.epochs;
    info.batch = spec_.train.batch;
    info.classes = source_->classes();
    info.out_dir = cfg_.write_outputs ? res_.out_dir : "";
    info.threads = threads_;
    sink_->begin_run(info);

    int first_epoch = 1;
    if (!cfg_.resume_dir.empty()) first_epoch = resume() + 1;
    std::ofstream metrics;
    if (cfg_.write_outputs) {
      if (cfg_.resume_dir.empty())
        write_file((fs::path(res_.out_dir) / "graph.yaml").string(),
                   "# resolved from " + spec_.file + "\n" + YAML::Dump(spec_.resolved) + "\n");
      metrics.open(fs::path(res_.out_dir) / "metrics.jsonl", cfg_.resume_dir.empty() ? std::ios::trunc : std::ios::app);
    }
    const int64_t n_train = source_->size(Split::train), n_val = source_->size(Split::validation),
                  n_test = source_->size(Split::test);
    if (!cfg_.quiet) std::fprintf(stderr, "pipe: %s\n", torch_runtime_info().c_str());
    if (!cfg_.quiet)
      std::fprintf(stderr, "pipe: %s: %lld train, %lld validation, %lld test samples; %d epochs; %d threads\n",
                   spec_.name.c_str(), static_cast<long long>(n_train), static_cast<long long>(n_val),
                   static_cast<long long>(n_test), spec_.train.epochs, threads_);

    for (int e = first_epoch; e <= spec_.train.epochs && !res_.interrupted; ++e) {
      EpochMetrics m;
      m.epoch = e;
      const double te = now_s();
      m.train = sink_pass(Split::train, e);
      if (!res_.interrupted && n_val > 0) m.validation = sink_pass(Split::validation, e);
      if (res_.interrupted) break;
      m.seconds = now_s() - te;
      m.images_per_s = m.seconds > 0 ? static_cast<double>(m.train.count) / m.seconds : 0;
      if (n_val > 0 && m.validation.accuracy > res_.best_val_acc) {
        res_.best_val_acc = m.validation.accuracy;
        res_.best_epoch = e;
        sink_->mark_best(e);
      }
      res_.epochs.push_back(m);
      Json line = Json::object();
      line.set("epoch", e);
      line.set("train_loss", m.train.loss);
      line.set("train_acc", m.train.accuracy);
      line.set("val_loss", n_val > 0 ? Json(m.validation.loss) : Json());
      line.set("val_acc", n_val > 0 ? Json(m.validation.accuracy) : Json());
      line.set("seconds", m.seconds);
      line.set("images_per_s", m.images_per_s);
      if (cfg_.write_outputs && !(metrics << line.dump() << "\n" << std::flush)) {
        const int e = errno;  // a stream hides it; the failed write(2) (a full disk) left it set
        throw std::runtime_error(fmt::format("cannot write {}: {}", (fs::path(res_.out_dir) / "metrics.jsonl").string(),
                                             std::strerror(e)));
      }
      if (cfg_.write_outputs && sink_->can_resume()) checkpoint(e);
      if (!cfg_.quiet) {
        progress_.clear();
        std::fprintf(stderr, "epoch %3d/%d  train loss %.4f acc %.4f  val loss %.4f acc %.4f  %.1fs  %.0f img/s\n", e,
                     spec_.train.epochs, m.train.loss, m.train.accuracy, m.validation.loss,
                     m.validation.accuracy, m.seconds, m.images_per_s);
      }
    }
    if (!res_.interrupted && n_test > 0) {
      sink_->restore_best();
      res_.test = sink_pass(Split::test, spec_.train.epochs);
    }
    if (cfg_.write_outputs && !res_.interrupted) sink_->save(res_.out_dir);
    res_.seconds = now_s() - t0;
    finish();
    return std::move(res_);
  }

 private:
  // state.json + checkpoint/: everything `--resume` needs, replaced atomically per epoch.
  void checkpoint(int epoch) {
    const fs::path dir(res_.out_dir);
    const fs::path tmp = dir / "checkpoint.tmp", final_dir = dir / "checkpoint", old = dir / "checkpoint.old";
    fs::remove_all(tmp);
    fs::create_directories(tmp);
    sink_->save_state(tmp.string());
    Json st = Json::object();
    st.set("graph_file", spec_.file);
    Json ov = Json::array();
    for (const std::string& o : cfg_.overrides) ov.push(o);
    st.set("overrides", ov);
    st.set("resolved_hash", resolved_hash(spec_));
    st.set("epochs_completed", epoch);
    Json eps = Json::array();
    for (const EpochMetrics& m : res_.epochs) {
      Json e = Json::object();
      e.set("epoch", m.epoch);
      e.set("train", Json(Json::Array{Json(m.train.loss), Json(m.train.accuracy), Json(m.train.count)}));
      e.set("validation", Json(Json::Array{Json(m.validation.loss), Json(m.validation.accuracy), Json(m.validation.count)}));
      e.set("seconds", m.seconds);
      e.set("images_per_s", m.images_per_s);
      eps.push(std::move(e));
    }
    st.set("epochs", eps);
    st.set("best_val_acc", res_.best_val_acc);
    st.set("best_epoch", res_.best_epoch);
    st.set("cache_hits", res_.cache_hits);
    st.set("cache_misses", res_.cache_misses);
    st.set("extraction_seconds", res_.extraction_seconds);
    Json sk = Json::array();
    for (const SkippedSample& k : res_.skipped)
      sk.push(Json(Json::Array{Json(k.id), Json(k.sample), Json(k.reason), Json(k.node), Json(static_cast<int>(k.split))}));
    st.set("skipped", sk);
    write_file_atomic((tmp / "state.json").string(), st.dump(1) + "\n");
    // Swap in the new checkpoint: a crash between the renames leaves checkpoint.old, which
    // resume() falls back to.
    fs::remove_all(old);
    if (fs::exists(final_dir)) fs::rename(final_dir, old);
    fs::rename(tmp, final_dir);
    fs::remove_all(old);
  }

  // Restores the state of the last completed epoch; returns its number.
  int resume() {
    fs::path dir = fs::path(res_.out_dir) / "checkpoint";
    if (!fs::exists(dir / "state.json") && fs::exists(fs::path(res_.out_dir) / "checkpoint.old" / "state.json"))
      dir = fs::path(res_.out_dir) / "checkpoint.old";
    if (!sink_->can_resume())
      throw std::runtime_error(fmt::format("sink '{}' ({}) cannot resume", nodes_.back().spec->name, nodes_.back().spec->stage));
    const YAML::Node st = YAML::LoadFile((dir / "state.json").string());
    for (const auto& e : st["epochs"]) {
      EpochMetrics m;
      m.epoch = e["epoch"].as<int>();
      m.train = {e["train"][0].as<double>(), e["train"][1].as<double>(), e["train"][2].as<int64_t>()};
      m.validation = {e["validation"][0].as<double>(), e["validation"][1].as<double>(), e["validation"][2].as<int64_t>()};
      m.seconds = e["seconds"].as<double>();
      m.images_per_s = e["images_per_s"].as<double>();
      res_.epochs.push_back(m);
    }
    res_.best_val_acc = st["best_val_acc"].as<double>();
    res_.best_epoch = st["best_epoch"].as<int>();
    res_.cache_hits = st["cache_hits"].as<int64_t>();
    res_.cache_misses = st["cache_misses"].as<int64_t>();
    res_.extraction_seconds = st["extraction_seconds"].as<double>();
    for (const auto& k : st["skipped"]) {
      const auto split = static_cast<Split>(k[4].as<int>());
      res_.skipped.push_back({k[0].as<int64_t>(), k[1].as<std::string>(), k[2].as<std::string>(), k[3].as<std::string>(), split});
      skip_seen_.insert({static_cast<int>(split), k[0].as<int64_t>()});
    }
    sink_->load_state(dir.string());
    // metrics.jsonl keeps exactly the completed epochs: a line of the interrupted epoch
    // was never written, since lines are written only when an epoch completes.
    const int done = st["epochs_completed"].as<int>();
    if (!cfg_.quiet) std::fprintf(stderr, "pipe: resuming %s after epoch %d\n", res_.out_dir.c_str(), done);
    return done;
  }

  std::string out_dir() const {
    if (!cfg_.out_dir.empty()) return cfg_.out_dir;
    if (!spec_.output_dir.empty()) return spec_.output_dir;
    return (fs::path("runs") / fmt::format("{}-{}", spec_.name, timestamp())).string();
  }

  // Nodes active on a split: random stages act on training data only.
  std::vector<Node*> active(Split split) {
    std::vector<Node*> out;
    for (Node& n : nodes_)
      if (!(n.spec->entry->schema.random && split != Split::train)) out.push_back(&n);
    return out;
  }

  // Where the memo sits in `act` (index of the cache node, or of the sink for an implicit
  // memo of evaluation features), or -1.
  int memo_position(const std::vector<Node*>& act, Split split, int* views, std::string* root,
                    const stages::CacheStage** cache) {
    *views = 0;
    *root = resolve_cache_dir("");
    *cache = nullptr;
    for (size_t i = 0; i < act.size(); ++i)
      if (act[i]->spec->entry->schema.kind == StageKind::cache) {
        auto* c = dynamic_cast<const stages::CacheStage*>(act[i]->impl.get());
        if (!c) throw std::logic_error("cache node without a CacheStage");
        *views = split == Split::train ? c->views() : 0;
        *root = c->root();
        *cache = c;
        return static_cast<int>(i);
      }
    // Validation and test images are never augmented, so their features are the same
    // every epoch: memoize them before the sink whenever a batch stage (the conv base)
    // would otherwise recompute them.
    if (split != Split::train) {
      bool expensive = false;
      for (Node* n : act) expensive |= n->spec->entry->schema.kind == StageKind::batch_map;
      if (expensive && act.back()->spec->entry->schema.kind == StageKind::sink)
        return static_cast<int>(act.size()) - 1;
    }
    return -1;
  }

  std::string fingerprint(const std::vector<Node*>& act, int upto, Split split, int views,
                          std::string* description) {
    Hasher h;
    std::string d = fmt::format("source {} [{}]", spec_.source, source_->identity());
    h.field("pipe-cache-v1").field(d).field(split_name(split));
    for (int i = 0; i < upto; ++i) {
      const Node& n = *act[static_cast<size_t>(i)];
      if (n.spec->entry->schema.kind == StageKind::cache) continue;
      const std::string part = fmt::format("{}({}){}", n.spec->stage, n.spec->params.canonical(),
                                           n.impl->fingerprint().empty() ? "" : "[" + n.impl->fingerprint() + "]");
      h.field(part);
      d += " -> " + part;
    }
    h.field(fmt::format("views={}", views));
    d += fmt::format(" | split={} views={}", split_name(split), views);
    *description = d;
    return h.hex();
  }

  PassSpec base_pass(Split split, int epoch) {
    PassSpec p;
    p.split = split;
    p.epoch = epoch;
    p.seed = spec_.train.seed;
    p.sink_batch = spec_.train.batch;
    p.in_flight = spec_.train.in_flight;
    p.skip_bad = spec_.on_error == OnError::skip;
    p.ordered = cfg_.ordered;
    p.stop = cfg_.stop;
    return p;
  }

  static PassNode pass_node(Node& n) {
    PassNode p;
    p.name = n.spec->name;
    p.stage = n.spec->stage;
    p.kind = n.spec->entry->schema.kind;
    p.impl = n.impl.get();
    p.random = n.spec->entry->schema.random;
    p.concurrency = n.spec->entry->schema.concurrency;
    if (n.spec->entry->origin != "built-in")
      p.context = fmt::format(" (stage '{}' from {})", n.spec->stage, n.spec->entry->origin);
    return p;
  }

  void record_skips(const std::vector<SkippedSample>& skips, Split split) {
    // Skips are reported once per sample, not once per epoch.
    for (const SkippedSample& s : skips)
      if (skip_seen_.insert({static_cast<int>(split), s.id}).second) res_.skipped.push_back(s);
  }

  // A pass over `split` that ends in the sink; returns the sink's metrics.
  SplitMetrics sink_pass(Split split, int epoch) {
    const int64_t n = source_->size(split);
    std::vector<Node*> act = active(split);
    int views = 0;
    std::string cache_root;
    const stages::CacheStage* cache_node = nullptr;
    const int memo = memo_position(act, split, &views, &cache_root, &cache_node);
    // Training order is reshuffled every epoch (seeded); evaluation runs in id order.
    std::vector<int64_t> order = shuffled(split == Split::train ? n : 0, spec_.train.seed, epoch);
    if (split != Split::train)
      for (int64_t i = 0; i < n; ++i) order.push_back(i);

    std::shared_ptr<const FeatureCache::Entry> entry;
    std::string fp, description;
    std::unique_ptr<FeatureCache> store;
    if (memo >= 0) {
      fp = fingerprint(act, memo, split, views, &description);
      store = std::make_unique<FeatureCache>(cache_root);
      entry = store->open(fp, split_name(split));
      if (!entry && views > 0) {
        // Extract K views up front; each epoch then picks one of them.
        extract_views(act, memo, split, views, fp, description, *store);
        if (res_.interrupted) return {};
        entry = store->open(fp, split_name(split));
        if (!entry) throw std::runtime_error(fmt::format("cache entry {} vanished after it was written", fp));
      }
    }

    sink_->begin_epoch(split, epoch);
    PassSpec p = base_pass(split, epoch);
    p.count = n;
    std::optional<FeatureCache::Writer> writer;
    if (memo >= 0 && !entry) {
      // Blocks while another process writes this entry; it may have finished it meanwhile.
      writer.emplace(store->begin(fp, split_name(split), n, std::max(views, 1), description));
      entry = store->open(fp, split_name(split));
      if (entry) writer.reset();
    }
    const std::string label = fmt::format("epoch {} {}", epoch, split_name(split));
    p.progress = [this, label](int64_t done, int64_t total) { progress_.update(label, done, total); };
    if (entry) {
      // The cut: nodes upstream of the memo do not run at all.
      res_.cache_hits += n;
      p.load_name = "(cache read)";
      p.cheap_load = true;
      p.describe = [this, &order, split, epoch, views, &entry, cache_node](int64_t seq) {
        Sample s;
        s.id = order[static_cast<size_t>(seq)];
        s.split = split;
        s.epoch = epoch;
        s.label = entry->label(s.id);
        s.view = views > 0 && cache_node ? cache_node->view_for(epoch, s.id) : 0;
        s.origin = source_->describe(split, s.id).origin;
        return s;
      };
      p.load = [&entry](Sample& s) {
        if (entry->skipped(s.id)) throw SampleError(fmt::format("(cached) {}", entry->skip_reason(s.id)));
        s.features = entry->features(s.id, s.view);
      };
      // After an explicit cache node; an implicit memo sits just before the sink.
      const size_t resume = static_cast<size_t>(memo) + (cache_node ? 1 : 0);
      for (size_t i = resume; i < act.size(); ++i) p.nodes.push_back(pass_node(*act[i]));
      // A sample skipped at extraction stays skipped, whatever on_error says now.
      p.skip_bad = true;
    } else {
      describe_from_source(p, order, split, epoch);
      for (size_t i = 0; i < act.size(); ++i) {
        if (static_cast<int>(i) == memo) {
          PassNode w;
          w.name = act[i]->spec->entry->schema.kind == StageKind::cache ? act[i]->spec->name : "(memo)";
          w.stage = "cache";
          w.kind = StageKind::cache;
          FeatureCache::Writer* wp = &*writer;
          w.write = [wp](const Sample& s) { wp->add(s.id, 0, s.label, s.features); };
          p.nodes.push_back(std::move(w));
          if (act[i]->spec->entry->schema.kind == StageKind::cache) continue;
        }
        p.nodes.push_back(pass_node(*act[i]));
      }
    }
    Profile& prof = profile_;
    const int64_t sink_busy0 = prof.node(nodes_.back().spec->name, nodes_.back().spec->stage).busy_ns.load();
    PassResult r = run_pass(p, prof);
    progress_.clear();
    record_skips(r.skipped, split);
    if (r.interrupted) res_.interrupted = true;
    if (writer) {
      res_.cache_misses += n;
      const int64_t sink_busy = prof.node(nodes_.back().spec->name, nodes_.back().spec->stage).busy_ns.load() - sink_busy0;
      res_.extraction_seconds += std::max(0.0, r.seconds - static_cast<double>(sink_busy) / 1e9);
      if (!r.interrupted) {
        for (const SkippedSample& s : r.skipped) writer->skip(s.id, s.reason);
        writer->commit();
      }
    }
    return sink_->end_epoch();
  }

  void describe_from_source(PassSpec& p, const std::vector<int64_t>& order, Split split, int epoch, int view = 0) {
    p.describe = [this, &order, split, epoch, view](int64_t seq) {
      Sample s = source_->describe(split, order[static_cast<size_t>(seq)]);
      s.epoch = epoch;
      s.view = view;
      return s;
    };
    const Source* src = source_.get();
    p.load = [src](Sample& s) { src->load(s); };
    p.load_name = "(load)";
  }

  void extract_views(const std::vector<Node*>& act, int memo, Split split, int views, const std::string& fp,
                     const std::string& description, FeatureCache& store) {
    const int64_t n = source_->size(split);
    FeatureCache::Writer writer = store.begin(fp, split_name(split), n, views, description);
    if (store.open(fp, split_name(split))) return;  // another process finished it meanwhile
    std::vector<int64_t> order(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) order[static_cast<size_t>(i)] = i;
    for (int v = 0; v < views; ++v) {
      PassSpec p = base_pass(split, 0);
      p.count = n;
      describe_from_source(p, order, split, 0, v);
      const std::string label = fmt::format("extract view {}/{}", v + 1, views);
      p.progress = [this, label](int64_t done, int64_t total) { progress_.update(label, done, total); };
      for (int i = 0; i < memo; ++i) p.nodes.push_back(pass_node(*act[static_cast<size_t>(i)]));
      PassNode w;
      w.name = act[static_cast<size_t>(memo)]->spec->name;
      w.stage = "cache";
      w.kind = StageKind::cache;
      w.write = [&writer](const Sample& s) { writer.add(s.id, s.view, s.label, s.features); };
      p.nodes.push_back(std::move(w));
      PassResult r = run_pass(p, profile_);
      progress_.clear();
      res_.extraction_seconds += r.seconds;
      res_.cache_misses += n;
      record_skips(r.skipped, split);
      if (r.interrupted) {
        res_.interrupted = true;
        return;
      }
      for (const SkippedSample& s : r.skipped) writer.skip(s.id, s.reason);
    }
    writer.commit();
  }

  void finish() {
    Json prof = Json::array();
    for (const NodeProfile* n : profile_.nodes()) {
      Json o = Json::object();
      o.set("node", n->node);
      o.set("stage", n->stage);
      o.set("items", n->items.load());
      const double busy = static_cast<double>(n->busy_ns.load()) / 1e9;
      o.set("busy_seconds", busy);
      // Summed over samples (sample-seconds): with many samples in flight this exceeds wall time.
      o.set("blocked_sample_seconds", static_cast<double>(n->blocked_ns.load()) / 1e9);
      o.set("waiting_seconds", static_cast<double>(n->wait_ns.load()) / 1e9);
      o.set("items_per_s", busy > 0 ? static_cast<double>(n->items.load()) / busy : 0.0);
      prof.push(std::move(o));
    }
    res_.profile = prof;

    Json s = Json::object();
    s.set("graph", spec_.name);
    s.set("graph_file", spec_.file);
    s.set("status", res_.interrupted ? "interrupted" : "completed");
    s.set("seed", spec_.train.seed);
    s.set("epochs", spec_.train.epochs);
    s.set("epochs_completed", static_cast<int>(res_.epochs.size()));
    s.set("threads", threads_);
    const EpochMetrics* last = res_.epochs.empty() ? nullptr : &res_.epochs.back();
    s.set("train_loss", last ? Json(last->train.loss) : Json());
    s.set("train_acc", last ? Json(last->train.accuracy) : Json());
    s.set("val_loss", last ? Json(last->validation.loss) : Json());
    s.set("val_acc", last ? Json(last->validation.accuracy) : Json());
    s.set("best_val_acc", res_.best_val_acc >= 0 ? Json(res_.best_val_acc) : Json());
    s.set("best_epoch", res_.best_epoch);
    s.set("test_loss", res_.test.count > 0 ? Json(res_.test.loss) : Json());
    s.set("test_acc", res_.test.count > 0 ? Json(res_.test.accuracy) : Json());
    s.set("test_count", res_.test.count);
    s.set("seconds", res_.seconds);
    s.set("extraction_seconds", res_.extraction_seconds);
    Json cache = Json::object();
    cache.set("hits", res_.cache_hits);
    cache.set("misses", res_.cache_misses);
    s.set("cache", cache);
    Json skipped = Json::array();
    for (const SkippedSample& k : res_.skipped) {
      Json o = Json::object();
      o.set("sample", k.sample);
      o.set("reason", k.reason);
      o.set("node", k.node);
      skipped.push(std::move(o));
    }
    s.set("skipped_count", static_cast<int64_t>(res_.skipped.size()));
    s.set("skipped", skipped);
    s.set("profile", prof);
    res_.summary = s;
    if (cfg_.write_outputs) {
      write_file_atomic((fs::path(res_.out_dir) / "summary.json").string(), s.dump(2) + "\n");
      write_file_atomic((fs::path(res_.out_dir) / "profile.json").string(), prof.dump(2) + "\n");
    }
  }

  const GraphSpec& spec_;
  const RunConfig& cfg_;
  Progress progress_;
  int threads_ = 1;
  std::unique_ptr<Source> source_;
  std::vector<Node> nodes_;
  SinkStage* sink_ = nullptr;
  Profile profile_;
  RunResult res_;
  std::set<std::pair<int, int64_t>> skip_seen_;
};

}  // namespace

RunResult run_graph(const GraphSpec& spec, const RunConfig& config) { return Run(spec, config).go(); }

std::string resolved_hash(const GraphSpec& spec) {
  YAML::Node r = YAML::Clone(spec.resolved);
  r.remove("output");  // where the run writes does not change what it computes
  return hash_hex(YAML::Dump(r));
}

ResumeInfo read_resume_info(const std::string& run_dir) {
  fs::path st = fs::path(run_dir) / "checkpoint" / "state.json";
  if (!fs::exists(st)) st = fs::path(run_dir) / "checkpoint.old" / "state.json";
  if (!fs::exists(st))
    throw std::runtime_error(fmt::format("{}: no checkpoint to resume from (a run checkpoints at the end of each "
                                         "completed epoch)", run_dir));
  const YAML::Node n = YAML::LoadFile(st.string());
  ResumeInfo info;
  info.graph_file = n["graph_file"].as<std::string>();
  for (const auto& o : n["overrides"]) info.overrides.push_back(o.as<std::string>());
  info.resolved_hash = n["resolved_hash"].as<std::string>();
  info.epochs_completed = n["epochs_completed"].as<int>();
  return info;
}

std::string graph_dot(const GraphSpec& spec) {
  int cut = -1;
  for (size_t i = 0; i < spec.nodes.size(); ++i)
    if (spec.nodes[i].entry->schema.kind == StageKind::cache) cut = static_cast<int>(i);
  std::string out = fmt::format("digraph \"{}\" {{\n  rankdir=LR;\n  node [shape=box, fontname=\"Helvetica\"];\n", spec.name);
  out += fmt::format("  \"data\" [label=\"data\\n{}\", shape=cylinder];\n", spec.source);
  for (size_t i = 0; i < spec.nodes.size(); ++i) {
    const NodeSpec& n = spec.nodes[i];
    const StageSchema& s = n.entry->schema;
    std::string attrs;
    if (static_cast<int>(i) < cut) attrs = ", style=dashed, color=gray40, fontcolor=gray40";
    if (s.kind == StageKind::cache) attrs = ", shape=cylinder, style=filled, fillcolor=lightyellow";
    if (s.kind == StageKind::sink) attrs = ", style=filled, fillcolor=lightblue";
    std::string extra;
    if (static_cast<int>(i) < cut) extra = "\\n(cut: runs on a cache miss only)";
    if (s.random) extra += "\\n(random, train only)";
    out += fmt::format("  \"{}\" [label=\"{}\\n{}{}\"{}];\n", n.name, n.name, n.stage, extra, attrs);
  }
  std::string prev = "data";
  for (const NodeSpec& n : spec.nodes) {
    out += fmt::format("  \"{}\" -> \"{}\";\n", prev, n.name);
    prev = n.name;
  }
  return out + "}\n";
}

}  // namespace pipeline
