#include "runner.h"

#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <optional>
#include <sstream>
#include <thread>

#include <fmt/format.h>
#include <oneapi/tbb/global_control.h>

#include "cache_store.h"
#include "controls.h"
#include "curves.h"
#include "files.h"
#include "runs.h"
#include "torch_runtime.h"
#include "plan.h"
#include "plugin_loader.h"
#include "running_loss.h"

namespace fs = std::filesystem;

namespace pipeline {

int configure_threads(int n) {
  if (n <= 0) n = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  // One global_control for the process: TBB runs per-sample stages on at most n threads,
  // and LibTorch's intra-op pool (OpenMP) is sized to the same n. A CPU conv base runs on the
  // executor's core thread, the OpenMP master of its team (executor.cpp, CoreThread).
  static std::unique_ptr<oneapi::tbb::global_control> control;
  control.reset();
  control = std::make_unique<oneapi::tbb::global_control>(
      oneapi::tbb::global_control::max_allowed_parallelism, static_cast<size_t>(n));
  torch_set_threads(n);
  // The calling thread (a run's main thread: it builds stages, writes checkpoints and
  // model.pt) runs LibTorch on one thread, so that it never keeps an OpenMP team of its own
  // beside the core thread's (run_on_core_thread, executor.h): two teams on 2 cores made
  // libgomp cut the conv base's spin-wait, and the 32 px forward took 10% longer.
  torch_single_thread_here();
  return n;
}

namespace {

using json = nlohmann::ordered_json;  // keeps keys in insertion order

// Strings that are not UTF-8 (a file name in a skip reason) are written as U+FFFD.
std::string dump(const json& j, int indent) {
  return j.dump(indent, ' ', false, json::error_handler_t::replace);
}

// A JSON file a run wrote (checkpoint/state.json); errors name the file.
json read_json(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(fmt::format("cannot read {}: {}", path, std::strerror(errno)));
  try {
    return json::parse(in);
  } catch (const json::exception& e) {
    throw std::runtime_error(fmt::format("{}: {}", path, e.what()));
  }
}

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
  explicit Progress(bool enabled) : enabled_(enabled) {
    winsize ws{};
    if (enabled_ && ::ioctl(STDERR_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0) columns_ = ws.ws_col;
  }
  // A new pass: its clock starts now. `loss`: the running training loss, or empty.
  void start(const std::string& label, std::function<double()> loss) {
    line_ = ProgressLine{label, 0, 0, 0, -1};
    loss_ = std::move(loss);
    t0_ = now_s();
    last_ = 0;
  }
  void update(int64_t done, int64_t total) {
    if (!enabled_ || total <= 0) return;
    const double t = now_s();
    if (done < total && t - last_ < 0.1) return;
    last_ = t;
    line_.done = done;
    line_.total = total;
    line_.elapsed_s = t - t0_;
    line_.loss = loss_ ? loss_() : -1;
    // The bar takes what the terminal has left, up to 30: a line that wraps cannot be redrawn by '\r'.
    const int rest = columns_ - 1 - static_cast<int>(format_progress(line_, 0).size());
    const std::string text = format_progress(line_, std::clamp(rest, 0, 30));
    width_ = std::max(width_, text.size());
    std::fprintf(stderr, "\r%s", text.c_str());
    std::fflush(stderr);
  }
  void clear() {
    if (enabled_ && width_ > 0) std::fprintf(stderr, "\r%*s\r", static_cast<int>(width_), "");
    width_ = 0;
  }

 private:
  bool enabled_;
  ProgressLine line_;
  std::function<double()> loss_;
  double t0_ = 0, last_ = 0;
  size_t width_ = 0;  // the longest line drawn, for clear()
  int columns_ = 80;
};

// One sink of the graph and what it has reported so far.
struct SinkRun {
  int node = -1;
  SinkStage* impl = nullptr;
  SinkResult r;
  SplitMetrics train, validation;  // of the current epoch
  std::optional<Controls> controls;  // reporting sinks: best epoch, early stopping, LR
  LearningRate* lr = nullptr;        // when the sink's learning rate can be scheduled
};

class Run {
 public:
  Run(const GraphSpec& spec, const RunConfig& cfg) : spec_(spec), cfg_(cfg), progress_(cfg.progress) {}

  RunResult go() {
    try {
      RunResult r = go_alone();
      if (group_ && r.interrupted) group_->report_failure("was interrupted");
      else if (group_) group_->finish();
      return r;
    } catch (const std::exception& e) {
      // The other ranks name this one and its reason instead of only seeing it vanish.
      if (group_) group_->report_failure(e.what());
      throw;
    }
  }

 private:
  RunResult go_alone() {
    const double t0 = now_s();
    setup();
    const int first_epoch = cfg_.resume_dir.empty() ? 1 : resume() + 1;
    std::ofstream metrics = open_outputs();
    // A checkpoint of the untrained state: a run interrupted in its first epoch (during the
    // extraction, often the longest part of a run) can be resumed too.
    if (cfg_.write_outputs && cfg_.resume_dir.empty() && can_resume()) checkpoint(0);
    for (int e = first_epoch; e <= spec_.train.epochs && !res_.interrupted && !stopped(); ++e) epoch(e, metrics);
    if (!res_.interrupted && source_->size(Split::test) > 0) {
      for (SinkRun& s : sinks_)
        if (s.r.reports) s.impl->restore_best();
      const auto m = run_split(Split::test, spec_.train.epochs);
      for (SinkRun& s : sinks_)
        if (s.r.reports) s.r.test = m[static_cast<size_t>(&s - sinks_.data())];
    }
    if (cfg_.write_outputs && !res_.interrupted) {
      for (SinkRun& s : sinks_) s.impl->save(res_.out_dir);
      export_models();
    }
    res_.seconds = now_s() - t0;
    finish();
    return std::move(res_);
  }

  void setup() {
    if (cfg_.dist.distributed()) group_ = std::make_unique<Group>(cfg_.dist, cfg_.dist_timeout_s);
    res_.out_dir = cfg_.resume_dir.empty() ? out_dir() : cfg_.resume_dir;
    // Owner only: a run holds what was learnt from the user's images (docs/security.md). A
    // default name is taken by mkdir alone, so runs started in the same second never share one.
    if (cfg_.write_outputs && rank() == 0 && default_out_dir()) res_.out_dir = make_new_dir(res_.out_dir, kOwnerOnly.dir);
    else if (cfg_.write_outputs && rank() == 0) make_dirs(res_.out_dir, kOwnerOnly.dir);
    if (group_) join_ranks();
    threads_ = configure_threads(cfg_.threads);
    torch_manual_seed(spec_.train.seed);
    source_ = spec_.source_entry->make_source(spec_.source_params, SourceContext{spec_.dir});
    plan_ctx_.source_identity = source_->identity();
    for (const NodeSpec& n : spec_.nodes) {
      nodes_.push_back(n.entry->make(n.params, StageContext{n.name, spec_.dir, spec_.train.seed}));
      plan_ctx_.fingerprints.push_back(nodes_.back()->fingerprint());
    }
    plan_ctx_.present = [this](const CachePoint& c) { return open_entry(c) != nullptr; };
    plan_ctx_.extract_first = group_ != nullptr;
    if (group_) check_ranks_agree();
    RunInfo info;
    info.seed = spec_.train.seed;
    info.epochs = spec_.train.epochs;
    info.batch = spec_.train.batch;
    info.classes = source_->classes();
    info.out_dir = cfg_.write_outputs ? res_.out_dir : "";
    info.threads = threads_;
    info.parallel = group_.get();
    for (size_t i = 0; i < spec_.nodes.size(); ++i) {
      if (spec_.nodes[i].entry->schema.kind != StageKind::sink) continue;
      SinkRun s;
      s.node = static_cast<int>(i);
      s.impl = static_cast<SinkStage*>(nodes_[i].get());
      s.r.name = spec_.nodes[i].name;
      s.r.stage = spec_.nodes[i].stage;
      s.r.reports = s.impl->reports_metrics();
      s.lr = dynamic_cast<LearningRate*>(s.impl);
      if (s.r.reports) s.controls.emplace(spec_.train, s.lr ? s.lr->configured_lr() : -1.0);
      s.impl->begin_run(info);
      sinks_.push_back(std::move(s));
    }
    count_classes();
    const bool watches = spec_.train.early_stopping.enabled || spec_.train.lr_schedule.kind == LrSchedule::Kind::plateau;
    if (watches && source_->size(Split::validation) == 0)
      throw std::runtime_error(fmt::format("{}: train.early_stopping and lr_schedule 'plateau' watch the validation "
                                           "split, and this graph's source has none", spec_.file));
    if (cfg_.verbose) std::fprintf(stderr, "pipe: %s\n", torch_runtime_info().c_str());
    if (!cfg_.quiet) {
      std::fprintf(stderr, "pipe: %s: %lld train, %lld validation, %lld test samples; %d epochs; %d threads\n",
                   spec_.name.c_str(), static_cast<long long>(source_->size(Split::train)),
                   static_cast<long long>(source_->size(Split::validation)),
                   static_cast<long long>(source_->size(Split::test)), spec_.train.epochs, threads_);
      for (size_t c = 0; c < class_counts_.size(); ++c)
        std::fprintf(stderr, "pipe:   class %zu %-16s %6lld train %6lld validation %6lld test\n", c,
                     source_->classes()[c].c_str(), static_cast<long long>(class_counts_[c][0]),
                     static_cast<long long>(class_counts_[c][1]), static_cast<long long>(class_counts_[c][2]));
    }
  }

  // Samples per class and split, from the source's listing (no I/O).
  void count_classes() {
    class_counts_.assign(source_->classes().size(), {0, 0, 0});
    for (Split split : {Split::train, Split::validation, Split::test})
      for (int64_t i = 0, n = source_->size(split); i < n; ++i) {
        const int64_t label = source_->describe(split, i).label;
        if (label >= 0 && static_cast<size_t>(label) < class_counts_.size())
          ++class_counts_[static_cast<size_t>(label)][static_cast<size_t>(split)];
      }
  }

  json classes_json() const {
    json counts = json::object();
    for (Split split : {Split::train, Split::validation, Split::test}) {
      json per = json::object();
      for (size_t c = 0; c < class_counts_.size(); ++c) per[source_->classes()[c]] = class_counts_[c][static_cast<size_t>(split)];
      counts[split_name(split)] = per;
    }
    return counts;
  }

  std::ofstream open_outputs() {
    std::ofstream metrics;
    if (!cfg_.write_outputs) return metrics;
    if (cfg_.resume_dir.empty()) {
      // Every path in it is absolute and `output` is left out, so `pipe run RUN/graph.yaml`
      // reruns this graph from anywhere, into a new run directory.
      YAML::Node g = YAML::Clone(spec_.resolved);
      g.remove("output");
      write_file((fs::path(res_.out_dir) / "graph.yaml").string(),
                 graph_yaml_comment(spec_.file) + YAML::Dump(g) + "\n");
      write_file_atomic((fs::path(res_.out_dir) / "classes.json").string(), dump(json(source_->classes()), -1) + "\n");
    }
    metrics.open(fs::path(res_.out_dir) / "metrics.jsonl", cfg_.resume_dir.empty() ? std::ios::trunc : std::ios::app);
    // A resumed run appends to its metrics.csv; a fresh one starts it at its first epoch (so
    // that, on a full disk, metrics.jsonl's line is what fails).
    if (cfg_.resume_dir.empty())
      for (size_t k = 0; k < reporting().size(); ++k)
        for (const std::string& f : sink_file_names("metrics.csv", reporting_names(), k)) fs::remove(run_file(f));
    return metrics;
  }

  // model.pt from the first sink that reports metrics and can export (ModelExport), and
  // model-<node>.pt from the others. A path that cannot be exported is noted, not an error.
  void export_models() {
    bool first = true;
    for (SinkRun& s : sinks_) {
      auto* exporter = dynamic_cast<ModelExport*>(s.impl);
      if (!s.r.reports || !exporter) continue;
      const std::string file = first ? "model.pt" : safe_file_name("model-" + s.r.name + ".pt", kMaxFileName);
      std::vector<PathStep> path;
      std::string why = eval_path(s.node, path);
      if (why.empty()) why = exporter->export_model(path, (fs::path(res_.out_dir) / file).string());
      if (!why.empty()) {
        s.r.no_model_reason = why;
        if (!cfg_.quiet) std::fprintf(stderr, "pipe: no model file for '%s': %s\n", s.r.name.c_str(), why.c_str());
        continue;
      }
      s.r.model = file;
      first = false;
    }
  }

  // "model.pt" when the run wrote one, else null.
  json model_file() const {
    for (const SinkRun& s : sinks_)
      if (s.r.model == "model.pt") return s.r.model;
    return nullptr;
  }

  // The nodes an evaluation sample passes on its way into `sink`, source side first: random
  // stages are left out (evaluation bypasses them). A join has no single path.
  std::string eval_path(int sink, std::vector<PathStep>& out) const {
    for (int n = sink; !spec_.nodes[static_cast<size_t>(n)].inputs.empty();) {
      const NodeSpec& at = spec_.nodes[static_cast<size_t>(n)];
      if (at.inputs.size() > 1) return fmt::format("node '{}' joins {} branches, and joins have no model form yet", at.name, at.inputs.size());
      n = at.inputs[0];
      const NodeSpec& up = spec_.nodes[static_cast<size_t>(n)];
      if (!up.entry->schema.random) out.push_back({up.name, up.stage, &up.params, nodes_[static_cast<size_t>(n)].get()});
    }
    std::reverse(out.begin(), out.end());
    return "";
  }

  // The sinks that report metrics: one of them keeps the summary's flat keys.
  std::vector<SinkRun*> reporting() {
    std::vector<SinkRun*> out;
    for (SinkRun& s : sinks_)
      if (s.r.reports) out.push_back(&s);
    return out;
  }

  // Early stopping ends the run when every sink that reports has stopped improving.
  bool stopped() const {
    bool any = false;
    for (const SinkRun& s : sinks_) {
      if (!s.controls) continue;
      if (!s.controls->stopped()) return false;
      any = true;
    }
    return any;
  }

  void epoch(int e, std::ofstream& metrics) {
    const bool has_val = source_->size(Split::validation) > 0;
    for (SinkRun& s : sinks_)
      if (s.lr && s.controls) s.lr->set_lr(s.controls->lr_for(e));
    const double te = now_s();
    const auto train = run_split(Split::train, e);
    if (res_.interrupted) return;
    std::vector<SplitMetrics> val(sinks_.size());
    if (has_val) val = run_split(Split::validation, e);
    if (res_.interrupted) return;
    const double seconds = now_s() - te;
    for (size_t k = 0; k < sinks_.size(); ++k) {
      SinkRun& s = sinks_[k];
      if (!s.r.reports) continue;
      EpochMetrics m;
      m.epoch = e;
      m.train = train[k];
      m.validation = val[k];
      m.seconds = seconds;
      m.images_per_s = seconds > 0 ? static_cast<double>(m.train.count) / seconds : 0;
      m.lr = s.lr ? s.controls->lr_for(e) : -1;
      if (has_val && s.controls->end_epoch(m.validation).best) {
        s.r.best_val_acc = m.validation.accuracy;
        s.r.best_epoch = e;
        s.impl->mark_best(e);
      }
      s.r.epochs.push_back(m);
    }
    write_metrics_line(e, seconds, has_val, metrics);
    write_epoch_files(has_val);
    if (cfg_.write_outputs && can_resume()) checkpoint(e);
    if (cfg_.quiet) return;
    progress_.clear();
    for (SinkRun* s : reporting()) {
      const EpochMetrics& m = s->r.epochs.back();
      const std::string who = reporting().size() > 1 ? fmt::format("{:<10} ", s->r.name) : "";
      const std::string lr = spec_.train.lr_schedule.kind != LrSchedule::Kind::none && m.lr >= 0 ? fmt::format("  lr {:.3g}", m.lr) : "";
      std::fprintf(stderr, "epoch %3d/%d  %strain loss %.4f acc %.4f  val loss %.4f acc %.4f%s  %.1fs  %.0f img/s\n", e,
                   spec_.train.epochs, who.c_str(), m.train.loss, m.train.accuracy, m.validation.loss,
                   m.validation.accuracy, lr.c_str(), m.seconds, m.images_per_s);
    }
    if (stopped()) std::fprintf(stderr, "pipe: early stopping after epoch %d: no improvement in %d epochs\n", e,
                                spec_.train.early_stopping.patience);
  }

  static json epoch_json(const EpochMetrics& m, bool has_val) {
    json j = {{"train_loss", m.train.loss},
              {"train_acc", m.train.accuracy},
              {"val_loss", has_val ? json(m.validation.loss) : json()},
              {"val_acc", has_val ? json(m.validation.accuracy) : json()}};
    if (m.lr >= 0) j["lr"] = m.lr;
    return j;
  }

  // One line per epoch: flat with one reporting sink, else one object per sink by name.
  void write_metrics_line(int e, double seconds, bool has_val, std::ofstream& metrics) {
    if (!cfg_.write_outputs) return;
    json line;
    line["epoch"] = e;
    const auto rep = reporting();
    if (rep.size() == 1) line.update(epoch_json(rep[0]->r.epochs.back(), has_val));
    else
      for (SinkRun* s : rep) line[s->r.name] = epoch_json(s->r.epochs.back(), has_val);
    line["seconds"] = seconds;
    const int64_t n = rep.empty() ? 0 : rep[0]->r.epochs.back().train.count;
    line["images_per_s"] = seconds > 0 ? static_cast<double>(n) / seconds : 0.0;
    if (!(metrics << dump(line, -1) << "\n" << std::flush)) {
      const int err = errno;  // a stream hides it; the failed write(2) (a full disk) left it set
      throw std::runtime_error(fmt::format("cannot write {}: {}", (fs::path(res_.out_dir) / "metrics.jsonl").string(),
                                           std::strerror(err)));
    }
  }

  std::vector<std::string> reporting_names() {
    std::vector<std::string> names;
    for (SinkRun* s : reporting()) names.push_back(s->r.name);
    return names;
  }

  std::string run_file(const std::string& name) const { return (fs::path(res_.out_dir) / name).string(); }

  // metrics.csv rows and curves.png (runs.h, curves.h) per reporting sink: written as each epoch
  // completes, so that an interrupted run has them up to its last completed epoch.
  void write_epoch_files(bool has_val) {
    if (!cfg_.write_outputs) return;
    const auto rep = reporting();
    const std::vector<std::string> names = reporting_names();
    for (size_t k = 0; k < rep.size(); ++k) {
      for (const std::string& f : sink_file_names("metrics.csv", names, k))
        append_metrics_csv(run_file(f), rep[k]->r.epochs.back(), has_val);
      const std::string png = curves_png(rep[k]->r.epochs, has_val);
      for (const std::string& f : sink_file_names("curves.png", names, k)) write_file_atomic(run_file(f), png);
    }
  }

  bool can_resume() const {
    for (const SinkRun& s : sinks_)
      if (!s.impl->can_resume()) return false;
    return true;
  }

  // state.json + checkpoint/<sink>/: everything `--resume` needs, replaced atomically per epoch.
  void checkpoint(int epoch) {
    const fs::path dir(res_.out_dir);
    const fs::path tmp = dir / "checkpoint.tmp", final_dir = dir / "checkpoint", old = dir / "checkpoint.old";
    fs::remove_all(tmp);
    fs::create_directories(tmp);
    json st;
    st["graph_file"] = spec_.file;
    st["overrides"] = cfg_.overrides;
    st["resolved_hash"] = resolved_hash(spec_);
    st["epochs_completed"] = epoch;
    st["epochs"] = spec_.train.epochs;
    json sinks = json::object();
    for (const SinkRun& s : sinks_) {
      const fs::path sink_dir = tmp / safe_file_name(s.r.name);
      fs::create_directories(sink_dir);
      s.impl->save_state(sink_dir.string());
      sinks[s.r.name] = sink_state(s);
    }
    st["sinks"] = sinks;
    st["cache_hits"] = res_.cache_hits;
    st["cache_misses"] = res_.cache_misses;
    st["extraction_seconds"] = res_.extraction_seconds;
    json sk = json::array();
    for (const SkippedSample& k : res_.skipped)
      sk.push_back(json::array({k.id, k.sample, k.reason, k.node, static_cast<int>(k.split)}));
    st["skipped"] = sk;
    write_file_atomic((tmp / "state.json").string(), dump(st, 1) + "\n");
    // Swap in the new checkpoint: a crash between the renames leaves checkpoint.old, which
    // resume() falls back to.
    fs::remove_all(old);
    if (fs::exists(final_dir)) fs::rename(final_dir, old);
    fs::rename(tmp, final_dir);
    fs::remove_all(old);
  }

  static json sink_state(const SinkRun& s) {
    json eps = json::array();
    for (const EpochMetrics& m : s.r.epochs)
      eps.push_back({{"epoch", m.epoch},
                     {"train", json::array({m.train.loss, m.train.accuracy, m.train.count})},
                     {"validation", json::array({m.validation.loss, m.validation.accuracy, m.validation.count})},
                     {"seconds", m.seconds},
                     {"images_per_s", m.images_per_s},
                     {"lr", m.lr}});
    json st = {{"epochs", eps}, {"best_val_acc", s.r.best_val_acc}, {"best_epoch", s.r.best_epoch}};
    if (s.controls) st["controls"] = s.controls->state();
    return st;
  }

  // Restores the state of the last completed epoch; returns its number. Each rank reads the
  // directory it was given (rank 0's is the run directory).
  int resume() {
    fs::path dir = fs::path(cfg_.resume_dir) / "checkpoint";
    if (!fs::exists(dir / "state.json") && fs::exists(fs::path(cfg_.resume_dir) / "checkpoint.old" / "state.json"))
      dir = fs::path(cfg_.resume_dir) / "checkpoint.old";
    for (const SinkRun& s : sinks_)
      if (!s.impl->can_resume())
        throw std::runtime_error(fmt::format("sink '{}' ({}) cannot resume", s.r.name, s.r.stage));
    const std::string path = (dir / "state.json").string();
    const json st = read_json(path);
    int done = 0;
    try {
      for (SinkRun& s : sinks_) {
        const json& ss = st.at("sinks").at(s.r.name);
        for (const json& e : ss.at("epochs")) {
          EpochMetrics m;
          m.epoch = e.at("epoch").get<int>();
          const json &t = e.at("train"), &v = e.at("validation");
          m.train = {t.at(0).get<double>(), t.at(1).get<double>(), t.at(2).get<int64_t>()};
          m.validation = {v.at(0).get<double>(), v.at(1).get<double>(), v.at(2).get<int64_t>()};
          m.seconds = e.at("seconds").get<double>();
          m.images_per_s = e.at("images_per_s").get<double>();
          m.lr = e.at("lr").get<double>();
          s.r.epochs.push_back(m);
        }
        s.r.best_val_acc = ss.at("best_val_acc").get<double>();
        s.r.best_epoch = ss.at("best_epoch").get<int>();
        if (s.controls) {
          s.controls->restore(ss.at("controls"));
          // `--resume --set train.epochs=N` grants more epochs: train on after an early stop.
          if (spec_.train.epochs > st.at("epochs").get<int>()) s.controls->resume_training();
        }
        s.impl->load_state((dir / safe_file_name(s.r.name)).string());
      }
      if (rank() == 0) restore_counts(st);
      // metrics.jsonl keeps exactly the completed epochs: a line of the interrupted epoch
      // was never written, since lines are written only when an epoch completes.
      done = st.at("epochs_completed").get<int>();
    } catch (const json::exception& e) {
      throw std::runtime_error(fmt::format("{}: {}", path, e.what()));
    }
    // Ranks that read different checkpoints (a run directory that is not shared, a copy, one
    // replaced meanwhile) would train different heads.
    if (group_)
      agree("checking that every rank resumes the same checkpoint",
            {{"checkpoint", fmt::format("epoch {}, state.json {}", done, hash_file(path))}},
            "every rank must resume from the same run directory, on a file system they share");
    if (!cfg_.quiet) std::fprintf(stderr, "pipe: resuming %s after epoch %d\n", res_.out_dir.c_str(), done);
    return done;
  }

  // The counts and skips summary.json reports. They are rank 0's own (its checkpoint); a
  // resumed rank r starts its rank<r>.json afresh, since its counts were never checkpointed.
  void restore_counts(const json& st) {
    res_.cache_hits = st.at("cache_hits").get<int64_t>();
    res_.cache_misses = st.at("cache_misses").get<int64_t>();
    res_.extraction_seconds = st.at("extraction_seconds").get<double>();
    for (const json& k : st.at("skipped")) {
      const auto split = static_cast<Split>(k.at(4).get<int>());
      res_.skipped.push_back({k.at(0).get<int64_t>(), k.at(1).get<std::string>(), k.at(2).get<std::string>(),
                              k.at(3).get<std::string>(), split});
      skip_seen_.insert({static_cast<int>(split), k.at(0).get<int64_t>()});
    }
  }

  bool default_out_dir() const { return cfg_.resume_dir.empty() && cfg_.out_dir.empty() && spec_.output_dir.empty(); }

  std::string out_dir() const {
    if (!cfg_.out_dir.empty()) return cfg_.out_dir;
    if (!spec_.output_dir.empty()) return spec_.output_dir;
    const std::string stamp = timestamp();
    const size_t suffix = 6;  // room for make_new_dir's "-10000"
    return (fs::path("runs") / fmt::format("{}-{}", safe_file_name(spec_.name, kMaxFileName - stamp.size() - 1 - suffix), stamp)).string();
  }

  // The complete entry for a cache point, opened once per run and kept (nullptr: missing).
  std::shared_ptr<const FeatureCache::Entry> open_entry(const CachePoint& c) {
    const std::string id = c.root + "/" + c.key + "/" + split_of(c);
    auto it = entries_.find(id);
    if (it != entries_.end()) return it->second;
    auto e = store(c.root).open(c.key, split_of(c));
    // The key promises the shape; an entry that disagrees (a colliding or hand-edited one) is
    // treated as missing and recomputed rather than read out of range.
    if (e && (e->count() != source_->size(c.split) || e->views() != c.views)) {
      std::fprintf(stderr, "pipe: warning: cache entry %s holds %lld samples x %d views, expected %lld x %d; recomputing\n",
                   e->path().c_str(), static_cast<long long>(e->count()), e->views(),
                   static_cast<long long>(source_->size(c.split)), c.views);
      return nullptr;
    }
    if (e) entries_[id] = e;
    return e;
  }
  static std::string split_of(const CachePoint& c) { return split_name(c.split); }

  FeatureCache& store(const std::string& root) {
    auto& s = stores_[root];
    if (!s) s = std::make_unique<FeatureCache>(root);
    return *s;
  }

  // Runs the passes the planner gives for (split, epoch); returns each sink's metrics.
  std::vector<SplitMetrics> run_split(Split split, int epoch) {
    if (group_) return run_split_sharded(split, epoch);
    for (int attempt = 0;; ++attempt) {
      std::vector<PassPlan> passes = plan_split(spec_, split, epoch, plan_ctx_);
      // Writers are taken before anything runs: begin() waits while another process
      // writes the same entry, and that process may have completed it meanwhile.
      Writers w;
      if (!take_writers(passes, w) && attempt < 3) continue;
      std::vector<SplitMetrics> out(sinks_.size());
      for (const PassPlan& p : passes) {
        out = run_planned(p, w);
        if (res_.interrupted) break;
      }
      return out;
    }
  }

  // --- distributed runs (distributed.h) ---

  int rank() const { return group_ ? group_->rank() : 0; }

  // Every rank writes into rank 0's run directory; only rank 0 writes the run's files, the
  // others their rank<r>.json and nothing on the terminal but errors.
  void join_ranks() {
    res_.out_dir = group_->broadcast("agreeing on the run directory", res_.out_dir);
    if (rank() == 0) return;
    rank_log_ = cfg_.write_outputs;
    cfg_.write_outputs = false;
    cfg_.quiet = true;
    cfg_.verbose = false;
  }

  // Refuses ranks that would not compute the same run, naming the first thing that differs.
  void check_ranks_agree() {
    agree("checking that every rank runs the same graph",
          {{"pipe version", fmt::format("{} ({})", PIPE_VERSION_STRING, host_build_fingerprint())},
           {"number of processes", std::to_string(group_->world())},
           {"resolved graph (hash)", resolved_hash(spec_)},
           {"data listing", fmt::format("{} ({} train, {} validation, {} test)", source_->identity(),
                                        source_->size(Split::train), source_->size(Split::validation),
                                        source_->size(Split::test))}},
          "every rank must run the same graph, overrides, pipe and data");
  }

  // Throws, on every rank, when some rank's values differ from rank 0's (one line each, no newlines).
  void agree(const std::string& what, const std::vector<std::pair<std::string, std::string>>& mine,
             const std::string& advice) {
    std::string text;
    for (const auto& [k, v] : mine) text += v + "\n";
    const std::vector<std::string> all = group_->all_gather(what, text);
    const auto field = [](const std::string& text, size_t k) {
      std::istringstream in(text);
      std::string line;
      for (size_t i = 0; std::getline(in, line); ++i)
        if (i == k) return line;
      return std::string("?");
    };
    for (size_t r = 1; r < all.size(); ++r)
      for (size_t k = 0; k < mine.size() && all[r] != all[0]; ++k)
        if (field(all[r], k) != field(all[0], k))
          throw std::runtime_error(fmt::format("rank {} and rank 0 differ in their {}: '{}' vs '{}'; {}", r, mine[k].first,
                                               field(all[r], k), field(all[0], k), advice));
  }

  // This rank's part of a pass: the ids id % world == rank of an extraction pass; its rows of
  // every global batch of a pass that reaches the sinks (whose steps the sinks then read).
  std::vector<int64_t> shard(const PassPlan& plan, const std::vector<int64_t>& order) {
    const int r = group_->rank(), world = group_->world();
    std::vector<int64_t> mine;
    if (plan.extract_view >= 0) {
      for (int64_t id : order)
        if (id % world == r) mine.push_back(id);
      return mine;
    }
    ShardPlan sp = shard_batches(static_cast<int64_t>(order.size()), spec_.train.batch, r, world);
    for (int64_t pos : sp.positions) mine.push_back(order[static_cast<size_t>(pos)]);
    local_batch_ = sp.local_batch;
    group_->set_steps(std::move(sp.steps));
    return mine;
  }

  // The passes of (split, epoch) on this rank: every missing entry is extracted first, each
  // rank into a part of its own (skipped when a failed run completed it), then merged by
  // rank 0; the pass that reaches the sinks reads it.
  std::vector<SplitMetrics> run_split_sharded(Split split, int epoch) {
    const std::vector<PassPlan> passes = plan_split(spec_, split, epoch, plan_ctx_);
    const int r = group_->rank(), world = group_->world();
    Writers parts;
    parts.stride = world;
    for (const PassPlan& p : passes) {
      if (p.extract_view < 0) {
        Writers none;
        return run_planned(p, none);
      }
      const CachePoint& c = p.caches[static_cast<size_t>(p.extract_cache)];
      const std::string part = part_split_name(split_name(split), r, world);
      const int64_t n = source_->size(split), count = n > r ? (n - r + world - 1) / world : 0;
      FeatureCache& st = store(c.root);
      if (!parts.by_point.count(p.extract_cache) && !st.open(c.key, part))
        parts.by_point.emplace(p.extract_cache, st.begin(c.key, part, count, c.views, c.description));
      if (parts.by_point.count(p.extract_cache)) run_planned(p, parts);
      else if (p.extract_view == 0) res_.cache_hits += count;
      if (res_.interrupted) return std::vector<SplitMetrics>(sinks_.size());
      if (p.extract_view + 1 < c.views) continue;
      parts.by_point.erase(p.extract_cache);  // committed: its lock goes, so that rank 0 can remove the part
      const std::string what = fmt::format("extraction of {} ({})", c.name, split_name(split));
      group_->barrier(what);
      if (r == 0) merge_parts(c, split);
      group_->barrier("the merge after the " + what);
    }
    throw std::logic_error("a plan without a pass that reaches the sinks");
  }

  // Rank 0, once every rank committed its part: the entry every rank reads. The parts are
  // removed once it is durable (a rerun after a failure here merges them again).
  void merge_parts(const CachePoint& c, Split split) {
    FeatureCache& st = store(c.root);
    const std::string s = split_name(split);
    const int world = group_->world();
    if (!st.open(c.key, s)) {
      FeatureCache::Writer w = st.begin(c.key, s, source_->size(split), c.views, c.description);
      for (int r = 0; r < world; ++r) {
        const auto part = st.open(c.key, part_split_name(s, r, world));
        if (!part)
          throw std::runtime_error(fmt::format("rank {}'s part of cache entry {} ({}) is missing though the rank reported it "
                                               "complete: is the cache directory {} shared by every rank?",
                                               r, c.key, s, c.root));
        for (int64_t i = 0; i < part->count(); ++i) {
          const int64_t id = i * world + r;
          if (part->skipped(i)) w.skip(id, part->skip_reason(i));
          else
            for (int v = 0; v < c.views; ++v) w.add(id, v, part->label(i), part->features(i, v));
        }
      }
      w.commit();
    }
    for (int r = 0; r < world; ++r) st.evict(c.key, part_split_name(s, r, world));
  }

  struct Writers {
    std::map<int, FeatureCache::Writer> by_point;  // cache point index -> writer
    int stride = 1;  // row of sample id: id / stride (a rank's part of an entry holds every stride-th id)
  };

  // False when an entry the plan would write turned out complete (replan).
  bool take_writers(const std::vector<PassPlan>& passes, Writers& w) {
    for (const PassPlan& p : passes)
      for (const PlanOp& op : p.ops) {
        if (op.kind != OpKind::cache_write || w.by_point.count(op.cache)) continue;
        const CachePoint& c = p.caches[static_cast<size_t>(op.cache)];
        FeatureCache& st = store(c.root);
        w.by_point.emplace(op.cache, st.begin(c.key, split_name(p.split), source_->size(p.split), c.views, c.description));
        if (st.open(c.key, split_name(p.split))) return false;
      }
    return true;
  }

  std::vector<SplitMetrics> run_planned(const PassPlan& plan, Writers& w) {
    const int64_t n = source_->size(plan.split);
    // Training order is reshuffled every epoch (seeded); evaluation and extraction run in id order.
    std::vector<int64_t> order = shuffled(plan.split == Split::train && plan.epoch > 0 ? n : 0, spec_.train.seed, plan.epoch);
    if (order.empty())
      for (int64_t i = 0; i < n; ++i) order.push_back(i);
    if (group_) order = shard(plan, order);
    PassSpec p = bind(plan, order, w);
    if (group_ && plan.extract_view < 0) p.sink_batch = local_batch_;
    const bool main_pass = plan.extract_view < 0;
    if (main_pass)
      for (size_t k = 0; k < sinks_.size(); ++k)
        if (in_pass(plan, sinks_[k].node)) sinks_[k].impl->begin_epoch(plan.split, plan.epoch);
    const std::string label = main_pass ? fmt::format("epoch {} {}", plan.epoch, split_name(plan.split)) : plan.purpose;
    progress_.start(label, main_pass && plan.split == Split::train ? running_loss(plan) : std::function<double()>());
    p.progress = [this](int64_t done, int64_t total) { progress_.update(done, total); };
    const int64_t busy0 = sinks_busy();
    PassResult r = run_pass(p, profile_);
    progress_.clear();
    record_skips(r.skipped, plan.split);
    if (r.interrupted) res_.interrupted = true;
    bool writes = false;
    for (const PlanOp& op : plan.ops) {
      if (op.kind == OpKind::cache_read) res_.cache_hits += static_cast<int64_t>(order.size());
      if (op.kind == OpKind::cache_write) res_.cache_misses += static_cast<int64_t>(order.size());
      writes |= op.kind == OpKind::cache_write;
    }
    if (writes) res_.extraction_seconds += std::max(0.0, r.seconds - static_cast<double>(sinks_busy() - busy0) / 1e9);
    if (!r.interrupted) commit(plan, r, w);
    std::vector<SplitMetrics> out(sinks_.size());
    if (main_pass)
      for (size_t k = 0; k < sinks_.size(); ++k)
        if (in_pass(plan, sinks_[k].node)) out[k] = sinks_[k].impl->end_epoch();
    return out;
  }

  // The running loss of the first reporting sink in the pass that can tell it (empty: none).
  std::function<double()> running_loss(const PassPlan& plan) const {
    for (const SinkRun& s : sinks_)
      if (const auto* r = dynamic_cast<const RunningLoss*>(s.impl); r && s.r.reports && in_pass(plan, s.node))
        return [r] { return r->running_loss(); };
    return {};
  }

  static bool in_pass(const PassPlan& plan, int node) {
    for (const PlanOp& op : plan.ops)
      if (op.node == node) return true;
    return false;
  }

  int64_t sinks_busy() {
    int64_t t = 0;
    for (const SinkRun& s : sinks_) t += profile_.node(s.r.name, s.r.stage).busy_ns.load();
    return t;
  }

  // Records this pass's failures in its entries and makes complete entries visible.
  void commit(const PassPlan& plan, const PassResult& r, Writers& w) {
    for (const PlanOp& op : plan.ops) {
      if (op.kind != OpKind::cache_write) continue;
      FeatureCache::Writer& wr = w.by_point.at(op.cache);
      for (const SkippedSample& s : r.skipped) wr.skip(s.id / w.stride, encode_skip(s));
      const CachePoint& c = plan.caches[static_cast<size_t>(op.cache)];
      const bool last_view = plan.extract_view < 0 || plan.extract_view + 1 == c.views;
      if (last_view) wr.commit();
    }
  }

  // A skip is stored with the node that failed, so a hit replays it exactly (node and reason).
  static std::string encode_skip(const SkippedSample& s) { return s.node + '\t' + s.reason; }
  static std::pair<std::string, std::string> decode_skip(const std::string& stored) {
    const auto tab = stored.find('\t');
    if (tab == std::string::npos) return {"", stored};
    return {stored.substr(0, tab), stored.substr(tab + 1)};
  }

  // The executor's ops for a planned pass: stage ops get their instances, framework ops
  // (load, cache read and write) their functions.
  PassSpec bind(const PassPlan& plan, const std::vector<int64_t>& order, Writers& w) {
    PassSpec p;
    p.split = plan.split;
    p.epoch = plan.epoch;
    p.seed = spec_.train.seed;
    p.sink_batch = spec_.train.batch;
    p.in_flight = spec_.train.in_flight;
    p.skip_bad = spec_.on_error == OnError::skip;
    p.ordered = cfg_.ordered;
    p.stop = cfg_.stop;
    p.count = static_cast<int64_t>(order.size());
    const Source* src = source_.get();
    const int view = std::max(0, plan.extract_view);
    p.describe = [src, &order, &plan, view](int64_t seq) {
      Sample s = src->describe(plan.split, order[static_cast<size_t>(seq)]);
      s.epoch = plan.epoch;
      s.view = view;
      return s;
    };
    for (size_t i = 1; i < plan.ops.size(); ++i) {
      const PlanOp& op = plan.ops[i];
      PassNode n;
      n.name = op.name;
      n.stage = op.stage.empty() ? "source" : op.stage;
      for (int in : op.inputs) n.inputs.push_back(in - 1);  // ops[0], the feed, is the executor's -1
      if (op.kind == OpKind::load) n.fn = [src](Sample& s) { src->load(s); };
      else if (op.kind == OpKind::cache_read) bind_read(n, plan.caches[static_cast<size_t>(op.cache)]);
      else if (op.kind == OpKind::cache_write) {
        FeatureCache::Writer* wr = &w.by_point.at(op.cache);
        n.fn = [wr, stride = w.stride](Sample& s) { wr->add(s.id / stride, s.view, s.label, s.features); };
      } else bind_stage(n, op);
      p.nodes.push_back(std::move(n));
    }
    return p;
  }

  void bind_read(PassNode& n, const CachePoint& c) {
    std::shared_ptr<const FeatureCache::Entry> entry = open_entry(c);
    if (!entry) throw std::runtime_error(fmt::format("cache entry {} vanished after it was written", c.key));
    const uint64_t seed = spec_.train.seed;
    const std::string node = c.name;
    const int views = c.views;
    n.cheap = true;
    n.fn = [entry, seed, node, views](Sample& s) {
      if (entry->skipped(s.id)) {
        const auto [failed, reason] = decode_skip(entry->skip_reason(s.id));
        throw SampleError(reason, failed.empty() ? node : failed);
      }
      s.view = cache_view_for(seed, node, views, s.epoch, s.id);
      s.features = entry->features(s.id, s.view);
    };
  }

  void bind_stage(PassNode& n, const PlanOp& op) {
    const NodeSpec& spec = spec_.nodes[static_cast<size_t>(op.node)];
    const StageSchema& schema = spec.entry->schema;
    n.kind = schema.kind;
    n.impl = nodes_[static_cast<size_t>(op.node)].get();
    n.random = schema.random;
    n.concurrency = schema.concurrency;
    if (spec.entry->origin != "built-in") n.context = fmt::format(" (stage '{}' from {})", spec.stage, spec.entry->origin);
  }

  void record_skips(const std::vector<SkippedSample>& skips, Split split) {
    // Skips are reported once per sample, not once per epoch.
    for (const SkippedSample& s : skips)
      if (skip_seen_.insert({static_cast<int>(split), s.id}).second) res_.skipped.push_back(s);
  }

  json profile_json() {
    json prof = json::array();
    for (const NodeProfile* n : profile_.nodes()) {
      const double busy = static_cast<double>(n->busy_ns.load()) / 1e9;
      prof.push_back({{"node", n->node},
                      {"stage", n->stage},
                      {"items", n->items.load()},
                      {"busy_seconds", busy},
                      // Summed over samples (sample-seconds): with many samples in flight this exceeds wall time.
                      {"blocked_sample_seconds", static_cast<double>(n->blocked_ns.load()) / 1e9},
                      {"waiting_seconds", static_cast<double>(n->wait_ns.load()) / 1e9},
                      {"gated_seconds", static_cast<double>(n->gated_ns.load()) / 1e9},
                      {"items_per_s", busy > 0 ? static_cast<double>(n->items.load()) / busy : 0.0}});
    }
    return prof;
  }

  // The metric keys of one sink (the summary's flat keys for a one-head graph).
  static void set_metrics(json& o, const SinkResult& r) {
    const EpochMetrics* last = r.epochs.empty() ? nullptr : &r.epochs.back();
    o["train_loss"] = last ? json(last->train.loss) : json();
    o["train_acc"] = last ? json(last->train.accuracy) : json();
    o["val_loss"] = last ? json(last->validation.loss) : json();
    o["val_acc"] = last ? json(last->validation.accuracy) : json();
    o["best_val_acc"] = r.best_val_acc >= 0 ? json(r.best_val_acc) : json();
    o["best_epoch"] = r.best_epoch;
    o["test_loss"] = r.test.count > 0 ? json(r.test.loss) : json();
    o["test_acc"] = r.test.count > 0 ? json(r.test.accuracy) : json();
    o["test_count"] = r.test.count;
  }

  void finish() {
    for (SinkRun& s : sinks_) res_.sinks.push_back(s.r);
    const auto rep = reporting();
    if (!rep.empty()) {
      res_.epochs = rep[0]->r.epochs;
      res_.test = rep[0]->r.test;
      res_.best_val_acc = rep[0]->r.best_val_acc;
      res_.best_epoch = rep[0]->r.best_epoch;
    }
    res_.profile = profile_json();
    json s;
    s["graph"] = spec_.name;
    s["graph_file"] = spec_.file;
    s["pipe_version"] = PIPE_VERSION_STRING;
    s["started"] = started_;
    s["overrides"] = cfg_.overrides;
    s["classes"] = source_->classes();
    s["class_counts"] = classes_json();
    s["status"] = res_.interrupted ? "interrupted" : "completed";
    s["stopped_early"] = stopped();
    s["seed"] = spec_.train.seed;
    s["epochs"] = spec_.train.epochs;
    s["epochs_completed"] = rep.empty() ? 0 : static_cast<int>(rep[0]->r.epochs.size());
    s["threads"] = threads_;
    // Not getrusage's ru_maxrss, which keeps the RSS of whatever process forked this one.
    if (const long kib = peak_rss_kib(); kib >= 0) s["peak_rss_kib"] = kib;
    if (rep.size() == 1) set_metrics(s, rep[0]->r);
    json sinks = json::object();
    for (const SinkRun& k : sinks_) {
      json o = {{"stage", k.r.stage}};
      if (k.r.reports) set_metrics(o, k.r);
      if (!k.r.model.empty()) o["model"] = k.r.model;
      if (!k.r.no_model_reason.empty()) o["no_model"] = k.r.no_model_reason;
      sinks[k.r.name] = o;
    }
    s["sinks"] = sinks;
    s["model"] = model_file();
    s["seconds"] = res_.seconds;
    s["extraction_seconds"] = res_.extraction_seconds;
    s["cache"] = {{"hits", res_.cache_hits}, {"misses", res_.cache_misses}};
    json skipped = json::array();
    for (const SkippedSample& k : res_.skipped)
      skipped.push_back({{"sample", k.sample}, {"reason", k.reason}, {"node", k.node}});
    s["skipped_count"] = res_.skipped.size();
    s["skipped"] = skipped;
    s["profile"] = res_.profile;
    res_.summary = s;
    if (group_) s["distributed"] = {{"rank", group_->rank()}, {"world", group_->world()}, {"launcher", cfg_.dist.launcher},
                                    {"backend", "gloo"}};
    if (rank_log_)
      write_file_atomic((fs::path(res_.out_dir) / fmt::format("rank{}.json", rank())).string(), dump(s, 2) + "\n");
    if (cfg_.write_outputs) {
      write_file_atomic((fs::path(res_.out_dir) / "summary.json").string(), dump(s, 2) + "\n");
      write_file_atomic((fs::path(res_.out_dir) / "profile.json").string(), dump(res_.profile, 2) + "\n");
    }
  }

  const GraphSpec& spec_;
  RunConfig cfg_;  // a copy: a rank other than 0 turns its outputs off
  std::unique_ptr<Group> group_;  // null: one process
  int local_batch_ = 0;           // this rank's rows of a full global batch
  bool rank_log_ = false;         // a rank other than 0 that writes its rank<r>.json
  Progress progress_;
  int threads_ = 1;
  std::unique_ptr<Source> source_;
  std::vector<std::unique_ptr<Stage>> nodes_;
  std::vector<SinkRun> sinks_;
  PlanContext plan_ctx_;
  std::map<std::string, std::unique_ptr<FeatureCache>> stores_;
  std::map<std::string, std::shared_ptr<const FeatureCache::Entry>> entries_;
  Profile profile_;
  RunResult res_;
  std::set<std::pair<int, int64_t>> skip_seen_;
  std::string started_ = utc_now();
  std::vector<std::array<int64_t, 3>> class_counts_;  // [class][split]
};

}  // namespace

RunResult run_graph(const GraphSpec& spec, const RunConfig& config) { return Run(spec, config).go(); }

namespace {

// 75 -> "1:15", 3725 -> "1:02:05".
std::string clock_text(double seconds) {
  const auto s = static_cast<long long>(seconds + 0.5);
  if (s >= 3600) return fmt::format("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60);
  return fmt::format("{}:{:02}", s / 60, s % 60);
}

}  // namespace

std::string format_progress(const ProgressLine& p, int bar_width) {
  const int64_t total = std::max<int64_t>(p.total, 1), done = std::clamp<int64_t>(p.done, 0, total);
  const auto filled = static_cast<size_t>(bar_width * done / total);
  // done is as wide as total, so that the columns after it stand still.
  std::string out = fmt::format("  {:<20} [{}{}] {:>{}}/{}", p.label, std::string(filled, '#'),
                                std::string(static_cast<size_t>(bar_width) - filled, '.'), p.done,
                                std::to_string(p.total).size(), p.total);
  // Before half a second has passed the rate is mostly start-up (the first batch, a model's
  // first call): "-" rather than a wild estimate.
  const double rate = p.elapsed_s >= 0.5 && done > 0 ? static_cast<double>(done) / p.elapsed_s : 0;
  out += rate > 0 ? fmt::format("  {:>6.0f} img/s  ETA {:>5}", rate, clock_text(static_cast<double>(total - done) / rate))
                  : fmt::format("  {:>6} img/s  ETA {:>5}", "-", "-");
  if (p.loss >= 0) out += fmt::format("  loss {:.4f}", p.loss);
  return out;
}

std::string resolved_hash(const GraphSpec& spec) {
  YAML::Node r = YAML::Clone(spec.resolved);
  r.remove("output");  // where the run writes does not change what it computes
  if (r["train"]) r["train"].remove("epochs");  // `--resume --set train.epochs=N` extends a run
  return hash_hex(YAML::Dump(r));
}

ResumeInfo read_resume_info(const std::string& run_dir) {
  fs::path st = fs::path(run_dir) / "checkpoint" / "state.json";
  if (!fs::exists(st)) st = fs::path(run_dir) / "checkpoint.old" / "state.json";
  if (!fs::exists(st))
    throw std::runtime_error(fmt::format("{}: no checkpoint to resume from (a run checkpoints as it "
                                         "starts and at the end of each completed epoch)", run_dir));
  const json n = read_json(st.string());
  ResumeInfo info;
  try {
    info.graph_file = n.at("graph_file").get<std::string>();
    info.overrides = n.at("overrides").get<std::vector<std::string>>();
    info.resolved_hash = n.at("resolved_hash").get<std::string>();
    info.epochs_completed = n.at("epochs_completed").get<int>();
  } catch (const json::exception& e) {
    throw std::runtime_error(fmt::format("{}: {}", st.string(), e.what()));
  }
  return info;
}

namespace {

// A plan context that needs no stage instances: keys left unfingerprinted (structure only).
PlanContext structural_context(const GraphSpec& spec, bool all_present) {
  PlanContext ctx;
  ctx.fingerprints.assign(spec.nodes.size(), "");
  if (all_present) ctx.present = [](const CachePoint&) { return true; };
  return ctx;
}

}  // namespace

std::string graph_dot(const GraphSpec& spec) {
  // Nodes that a warm cache leaves out of a training epoch run only on a miss.
  const std::vector<PassPlan> warm = plan_split(spec, Split::train, 2, structural_context(spec, true));
  std::set<int> runs_warm;
  for (const PlanOp& op : warm.back().ops) runs_warm.insert(op.node);
  std::string out = fmt::format("digraph \"{}\" {{\n  rankdir=LR;\n  node [shape=box, fontname=\"Helvetica\"];\n", spec.name);
  out += fmt::format("  \"data\" [label=\"data\\n{}\", shape=cylinder];\n", spec.source);
  for (size_t i = 0; i < spec.nodes.size(); ++i) {
    const NodeSpec& n = spec.nodes[i];
    const StageSchema& s = n.entry->schema;
    const bool cut = !runs_warm.count(static_cast<int>(i)) && s.kind != StageKind::cache;
    std::string attrs, extra;
    if (cut) {
      attrs = ", style=dashed, color=gray40, fontcolor=gray40";
      extra = "\\n(cut: runs on a cache miss only)";
    }
    if (s.kind == StageKind::cache) attrs = ", shape=cylinder, style=filled, fillcolor=lightyellow";
    if (s.kind == StageKind::sink) attrs = ", style=filled, fillcolor=lightblue";
    if (s.kind == StageKind::join) attrs += ", shape=invtrapezium";
    if (s.random) extra += "\\n(random, train only)";
    out += fmt::format("  \"{}\" [label=\"{}\\n{}{}\"{}];\n", n.name, n.name, n.stage, extra, attrs);
  }
  for (const NodeSpec& n : spec.nodes) {
    if (n.inputs.empty()) out += fmt::format("  \"data\" -> \"{}\";\n", n.name);
    for (int in : n.inputs) out += fmt::format("  \"{}\" -> \"{}\";\n", spec.nodes[static_cast<size_t>(in)].name, n.name);
  }
  return out + "}\n";
}

std::string explain_plan(const GraphSpec& spec) {
  const std::unique_ptr<Source> source = spec.source_entry->make_source(spec.source_params, SourceContext{spec.dir});
  PlanContext now;
  now.source_identity = source->identity();
  for (const NodeSpec& n : spec.nodes)
    now.fingerprints.push_back(n.entry->make(n.params, StageContext{n.name, spec.dir, spec.train.seed})->fingerprint());
  // Cheap: a complete entry has its manifest (a run verifies the data when it opens it).
  now.present = [](const CachePoint& c) {
    return fs::exists(FeatureCache(c.root).manifest_path(c.key, split_name(c.split)));
  };
  PlanContext later = now;  // epoch 2+: every entry epoch 1 wrote is there
  later.present = [](const CachePoint&) { return true; };
  std::string out = fmt::format("plan of {} (source {}: {} train, {} validation, {} test samples; {} epochs)\n",
                                spec.file, spec.source, source->size(Split::train), source->size(Split::validation),
                                source->size(Split::test), spec.train.epochs);
  const auto section = [&](Split split, int epoch, const PlanContext& ctx, const std::string& title) {
    if (source->size(split) == 0) return;
    out += fmt::format("\n{}:\n", title);
    for (const PassPlan& p : plan_split(spec, split, epoch, ctx))
      out += fmt::format("  pass {}{}\n", p.purpose, p.extract_view >= 0 ? " (before epoch 1)" : "") + format_pass(p, spec);
  };
  section(Split::train, 1, now, "train, epoch 1");
  if (spec.train.epochs > 1) section(Split::train, 2, later, "train, epochs 2+");
  section(Split::validation, 1, now, "validation, epoch 1");
  if (spec.train.epochs > 1) section(Split::validation, 2, later, "validation, epochs 2+");
  section(Split::test, spec.train.epochs, now, "test (after the last epoch, best weights)");
  std::set<std::string> seen;
  std::string keys;
  for (Split split : kAllSplits)
    for (const PassPlan& p : plan_split(spec, split, 1, now))
      for (const CachePoint& c : p.caches)
        if (seen.insert(c.key).second)
          keys += fmt::format("  {} {:<10} {} {}\n    {}\n", c.key, split_name(split), c.name,
                              c.present ? "present" : "missing", c.description);
  if (!keys.empty()) out += "\ncache keys (what each one covers):\n" + keys;
  return out;
}

}  // namespace pipeline
