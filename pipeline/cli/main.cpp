// pipe: run, validate, inspect and draw dataflow graphs for transfer learning.
//
// Exit codes: 0 ok, 1 the run failed, 2 usage or validation error, 130 interrupted (SIGINT),
// 143 stopped by SIGTERM;
// pipe sweep: the number of runs that failed (at most 125).
#include <unistd.h>

#include <atomic>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include "bench.h"
#include "cache_cli.h"
#include "cache_store.h"
#include "diagnostics.h"
#include "distributed.h"
#include "dot_render.h"
#include "launch.h"
#include "plugin_loader.h"
#include "predict.h"
#include "runner.h"
#include "runs.h"
#include "spec.h"
#include "sweep.h"
#include "stage_docs.h"
#include "torch_runtime.h"

namespace fs = std::filesystem;
using namespace pipeline;

namespace {

std::atomic<bool> g_stop{false};
std::atomic<int> g_stop_signal{0};

// SIGINT (Ctrl-C) and SIGTERM (what Slurm, torchrun, kill and container runtimes send first)
// stop a run the same way: finish the current batch, write the partial run and its
// checkpoint, exit 128 + the signal. A second signal leaves at once.
void on_stop_signal(int sig) {
  if (g_stop.exchange(true)) _exit(128 + sig);
  g_stop_signal = sig;
  const char intr[] = "\npipe: interrupted; finishing the current batch (Ctrl-C again to quit now)\n";
  const char term[] = "\npipe: terminated (SIGTERM); finishing the current batch (a second signal quits now)\n";
  const bool t = sig == SIGTERM;
  [[maybe_unused]] ssize_t n = ::write(STDERR_FILENO, t ? term : intr, (t ? sizeof term : sizeof intr) - 1);
}

void stop_on_signals() {
  std::signal(SIGINT, on_stop_signal);
  std::signal(SIGTERM, on_stop_signal);
}

// The exit code of a run or sweep that a signal stopped.
int stopped_code() { return 128 + (g_stop_signal.load() ? g_stop_signal.load() : SIGINT); }

struct Common {
  std::vector<std::string> plugins;
  std::vector<std::string> sets;
  bool allow_plugins = false;  // --allow-plugins: load the graph's plugins (docs/security.md)
  bool no_plugins = false;     // validate --no-plugins: load none of them
};

// Loads the user's own plugins: --plugin and PIPE_PLUGIN_PATH (a graph's need consent,
// load_valid()).
bool load_plugins(const Common& c) {
  std::vector<std::string> all = plugin_path_entries();
  all.insert(all.end(), c.plugins.begin(), c.plugins.end());
  for (const std::string& p : all) {
    if (!fs::exists(p)) continue;  // a missing --plugin is reported below
    try {
      load_plugin(p, Registry::global());
    } catch (const std::exception& e) {
      std::fprintf(stderr, "pipe: error: %s\n", e.what());
      return false;
    }
  }
  for (const std::string& p : c.plugins)
    if (!fs::exists(p)) {
      std::fprintf(stderr, "pipe: error: plugin %s: file not found\n", p.c_str());
      return false;
    }
  return true;
}

// check_data: also build the data source (GraphOptions::check_data).
std::optional<GraphSpec> load_valid(const std::string& path, const Common& c, bool check_data = false) {
  if (!load_plugins(c)) return std::nullopt;
  Diagnostics diag(path);
  PluginConsent consent;
  consent.allow_graph_plugins = c.allow_plugins || plugins_allowed_by_env();
  consent.load = !c.no_plugins;
  consent.command_line = c.plugins;
  GraphOptions options;
  options.check_files = true;
  options.check_data = check_data;
  try {
    options.plugins_loaded = load_graph_plugins(graph_plugins(path), consent, Registry::global(), diag);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "pipe: error: %s\n", e.what());
    return std::nullopt;
  }
  GraphSpec spec = load_graph(path, c.sets, Registry::global(), diag, options);
  std::fputs(diag.str().c_str(), stderr);  // warnings too
  if (!diag.ok()) {
    std::fprintf(stderr, "%zu error%s\n", diag.errors(), diag.errors() == 1 ? "" : "s");
    return std::nullopt;
  }
  return spec;
}

void print_sink(const SinkResult& r, const std::string& prefix) {
  if (!r.epochs.empty()) {
    const EpochMetrics& m = r.epochs.back();
    std::printf("%-14s %.4f\n", (prefix + "train_acc").c_str(), m.train.accuracy);
    std::printf("%-14s %.4f\n", (prefix + "val_acc").c_str(), m.validation.accuracy);
  }
  if (r.best_val_acc >= 0) std::printf("%-14s %.4f (epoch %d)\n", (prefix + "best_val_acc").c_str(), r.best_val_acc, r.best_epoch);
  if (r.test.count > 0)
    std::printf("%-14s %.4f (%lld images)\n", (prefix + "test_acc").c_str(), r.test.accuracy, static_cast<long long>(r.test.count));
}

void print_table(const RunResult& r) {
  std::printf("\n%-14s %s\n", "run", r.out_dir.c_str());
  int reporting = 0;
  for (const SinkResult& s : r.sinks) reporting += s.reports;
  for (const SinkResult& s : r.sinks)
    if (s.reports) print_sink(s, reporting > 1 ? s.name + "." : "");
  std::printf("%-14s %.1f s\n", "seconds", r.seconds);
  std::printf("%-14s %.1f s\n", "extraction", r.extraction_seconds);
  std::printf("%-14s %lld hits, %lld misses\n", "cache", static_cast<long long>(r.cache_hits),
              static_cast<long long>(r.cache_misses));
  if (!r.skipped.empty()) std::printf("%-14s %zu (listed in summary.json)\n", "skipped", r.skipped.size());
}

void print_profile(const RunResult& r) {
  std::printf("\n%-16s %-12s %9s %9s %11s %11s\n", "node", "stage", "items", "busy s", "queued s*", "items/s");
  // From the JSON the run saved, so the printout is what profile.json holds.
  for (const auto& n : r.profile)
    std::printf("%-16s %-12s %9lld %9.2f %11.2f %11.1f\n", n.at("node").get<std::string>().c_str(),
                n.at("stage").get<std::string>().c_str(), n.at("items").get<long long>(), n.at("busy_seconds").get<double>(),
                n.at("blocked_sample_seconds").get<double>(), n.at("items_per_s").get<double>());
  std::printf("* summed over samples: time each waited after this node before the next one took it\n");
}

// Every option of every subcommand: CLI11 writes them while parsing. Subcommands that take a
// graph share `graph` and `common`.
struct Options {
  Common common;
  std::string graph;
  // run
  std::string out, resume;
  int threads = 0;
  bool no_progress = false, force = false, quiet = false, verbose = false;
  // stages
  bool markdown = false;
  std::string stage;
  // graph
  std::string png;
  CacheOptions cache;
  BenchOptions bench;
  PredictOptions predict;
  RunsOptions runs;
  CompareOptions compare;
  SweepOptions sweep;
  LaunchOptions launch;
};

struct Subcommands {
  CLI::App* run = nullptr;
  CLI::App* validate = nullptr;
  CLI::App* stages = nullptr;
  CLI::App* plan = nullptr;
  CLI::App* dot = nullptr;
  CLI::App* cache = nullptr;
  CLI::App* cache_ls = nullptr;
  CLI::App* cache_gc = nullptr;
  CLI::App* bench = nullptr;
  CLI::App* predict = nullptr;
  CLI::App* runs = nullptr;
  CLI::App* compare = nullptr;
  CLI::App* sweep = nullptr;
  CLI::App* launch = nullptr;
};

// Consent to load the plugins a graph lists (docs/security.md).
CLI::Option* add_allow_plugins(CLI::App& sub, Options& o) {
  return sub.add_flag("--allow-plugins", o.common.allow_plugins,
                      "Load the plugins the graph lists: they run code as you (also PIPE_ALLOW_PLUGINS=1)");
}

CLI::App* add_run(CLI::App& app, Options& o) {
  auto* run = app.add_subcommand("run", "Run a graph: train and evaluate, write a run directory");
  run->add_option("graph", o.graph, "Graph YAML file");
  run->add_option("--resume", o.resume, "Continue an interrupted run in DIR from its last completed epoch")->type_name("DIR");
  run->add_option("--set", o.common.sets, "Override a value, e.g. --set train.epochs=3 (repeatable)")->type_name("KEY=VALUE");
  run->add_option("--threads", o.threads, "Threads for TBB stages and LibTorch together (default: all cores)");
  run->add_option("--out", o.out, "Run directory, new or empty unless --force (default: runs/<graph>-<time>)")->type_name("DIR");
  run->add_flag("--force", o.force, "Write into an --out directory that is not empty");
  run->add_flag("--no-progress", o.no_progress, "No progress bar");
  run->add_flag("-q,--quiet", o.quiet, "Print only the final summary");
  run->add_flag("-v,--verbose", o.verbose, "Also print the LibTorch runtime (threads, BLAS)")->excludes("--quiet");
  run->add_option("--plugin", o.common.plugins, "Load a plugin; repeatable")->type_name("PATH");
  add_allow_plugins(*run, o);
  return run;
}

// validate, plan and graph: a graph file, --set and --plugin.
CLI::App* add_graph_reader(CLI::App& app, const std::string& name, const std::string& description, Options& o) {
  auto* sub = app.add_subcommand(name, description);
  sub->add_option("graph", o.graph, "Graph YAML file")->required();
  sub->add_option("--set", o.common.sets, "Override a value (repeatable)")->type_name("KEY=VALUE");
  sub->add_option("--plugin", o.common.plugins, "Load a plugin; repeatable")->type_name("PATH");
  add_allow_plugins(*sub, o);
  return sub;
}

CLI::App* add_stages(CLI::App& app, Options& o) {
  auto* stages = app.add_subcommand("stages", "List every stage with its parameters, or one stage's");
  stages->add_option("name", o.stage, "Only this stage's reference");
  stages->add_flag("--markdown", o.markdown, "Write the reference in Markdown (docs/stages.md)");
  stages->add_option("--plugin", o.common.plugins, "Load a plugin; repeatable")->type_name("PATH");
  return stages;
}

void add_cache(CLI::App& app, Options& o, Subcommands& s) {
  s.cache = app.add_subcommand("cache", "Inspect or clear the feature cache");
  s.cache->require_subcommand(1);
  s.cache_ls = s.cache->add_subcommand("ls", "List cache entries: key, nodes, split, views, rows, size, last use");
  s.cache_ls->add_option("--dir", o.cache.dir, "Cache directory (default: $PIPE_CACHE_DIR, $XDG_CACHE_HOME/pipe, ~/.cache/pipe)");
  s.cache_ls->add_flag("--json", o.cache.json, "JSON: the entries and their total, for scripts");
  auto* rm = s.cache->add_subcommand("rm", "Remove cache entries by fingerprint prefix, by last use, or --all");
  rm->add_option("fingerprint", o.cache.prefix, "Fingerprint or its prefix");
  rm->add_option("--older-than", o.cache.older_than, "Only entries last used more than DAYS ago")->type_name("DAYS");
  rm->add_flag("--all", o.cache.all, "Remove every entry");
  rm->add_option("--dir", o.cache.dir, "Cache directory");
  s.cache_gc = s.cache->add_subcommand("gc", "Remove least recently used entries until the cache fits in SIZE");
  s.cache_gc->add_option("--max-size", o.cache.max_size, "e.g. 500M, 2G (K, M, G, T: powers of 1024)")->type_name("SIZE")->required();
  s.cache_gc->add_option("--dir", o.cache.dir, "Cache directory");
}

CLI::App* add_bench(CLI::App& app, Options& o) {
  auto* bench = app.add_subcommand("bench", "Benchmarks, each against its bound in the same run; writes bench.json");
  bench->add_flag("--smoke", o.bench.smoke, "A few batches per figure: proves the benchmarks still work");
  bench->add_option("--out", o.bench.out, "Output JSON (default bench.json)");
  bench->add_option("--threads", o.bench.threads, "Threads (default: all cores)");
  bench->add_option("--data-dir", o.bench.data_dir, "Keep generated images here (default: a temp dir)");
  bench->add_option("--only", o.bench.only, "Run only the figures whose name contains NAME (case-insensitive)")->type_name("NAME");
  return bench;
}

CLI::App* add_predict(CLI::App& app, Options& o) {
  auto* p = app.add_subcommand("predict", "Classify image files with a run's model.pt; exit 1 if any file failed");
  p->add_option("run", o.predict.model, "Run directory (or a model.pt file)")->required();
  p->add_option("paths", o.predict.paths, "Image files or directories (searched recursively)")->required();
  p->add_option("--top", o.predict.top, "Print the K most probable classes")->check(CLI::PositiveNumber)->type_name("K");
  p->add_option("--batch", o.predict.batch, "Images per forward pass")->check(CLI::PositiveNumber)->type_name("N");
  p->add_flag("--json", o.predict.json, "JSON lines: path, class, probability, top, probabilities");
  return p;
}

CLI::App* add_runs(CLI::App& app, Options& o) {
  auto* r = app.add_subcommand("runs", "List the runs in DIR: graph, start, status, epochs, best validation and test accuracy");
  r->add_option("dir", o.runs.dir, "Directory of run directories (default: runs)");
  r->add_flag("--json", o.runs.json, "A JSON array, one object per run");
  return r;
}

CLI::App* add_compare(CLI::App& app, Options& o) {
  auto* c = app.add_subcommand("compare", "Compare runs: metrics side by side, what differs in their graphs, compare.png");
  c->add_option("runs", o.compare.runs, "Two or more run directories")->required();
  c->add_option("--out", o.compare.out, "Chart of their validation accuracy (default: compare.png)")->type_name("FILE");
  return c;
}

CLI::App* add_sweep(CLI::App& app, Options& o) {
  auto* w = app.add_subcommand("sweep", "Run a graph over a grid of --set values x seeds: sweep.csv, sweep.md, sweep.png; "
                                        "exit code = failed runs");
  SweepOptions& s = o.sweep;
  w->add_option("graph", s.graph, "Graph YAML file")->required();
  w->add_option("--grid", s.grid, "Values to sweep, e.g. --grid nodes.head.lr=1e-4,1e-3 (repeatable)")->type_name("KEY=V1,V2,...");
  w->add_option("--set", s.sets, "Override a value in every run (repeatable)")->type_name("KEY=VALUE");
  w->add_option("--seeds", s.seeds, "Runs per grid cell: train.seed (and the source's split_seed) = 1..N")->type_name("N");
  w->add_option("--out", s.out, "Sweep directory (default: sweeps/<graph>-<hash of the sweep>)")->type_name("DIR");
  w->add_option("--jobs", s.jobs, "Runs at once (each gets --threads / J threads)")->type_name("J");
  w->add_option("--threads", s.threads, "Threads for all runs together (default: all cores)")->type_name("T");
  w->add_option("--plot-x", s.plot_x, "sweep.png's x axis (default: the first --grid key)")->type_name("KEY");
  w->add_option("--metric", s.metric, "sweep.png's y: train_acc, val_acc, best_val_acc (default), test_acc, seconds")
      ->type_name("NAME");
  w->add_option("--plugin", s.plugins, "Load a plugin in every run; repeatable")->type_name("PATH");
  w->add_flag("--allow-plugins", s.allow_plugins, "Load the plugins the graph lists (also PIPE_ALLOW_PLUGINS=1)");
  return w;
}

CLI::App* add_launch(CLI::App& app, Options& o) {
  auto* l = app.add_subcommand("launch", "Start N local processes of one distributed run (as torchrun does), e.g. "
                                         "pipe launch --nproc 2 -- run GRAPH; exit code = the first failed rank's");
  LaunchOptions& s = o.launch;
  l->add_option("--nproc", s.nproc, "Processes on this machine (default: 2)")->type_name("N")->check(CLI::Range(1, 1024));
  l->add_option("--master-port", s.master_port, "Port of rank 0's store (default: a free one)")->type_name("PORT")
      ->check(CLI::Range(1, 65535));
  l->add_option("--timeout", s.timeout_s, "Seconds any rank waits for the others before it gives up (PIPE_DIST_TIMEOUT, "
                                          "default 300)")->type_name("S")->check(CLI::Range(1, 7 * 24 * 3600));
  l->add_option("args", s.args, "pipe's arguments for every rank, after --")->required();
  return l;
}

// In the order of `pipe --help`.
Subcommands add_subcommands(CLI::App& app, Options& o) {
  Subcommands s;
  s.run = add_run(app, o);
  s.validate = add_graph_reader(app, "validate", "Check a graph; print every problem, exit 2 if any", o);
  s.predict = add_predict(app, o);
  s.runs = add_runs(app, o);
  s.compare = add_compare(app, o);
  s.sweep = add_sweep(app, o);
  s.launch = add_launch(app, o);
  s.validate->add_flag("--no-plugins", o.common.no_plugins,
                       "Load none of the plugins the graph lists; check everything else (their stages are warnings)")
      ->excludes("--allow-plugins");
  s.stages = add_stages(app, o);
  s.plan = add_graph_reader(app, "plan", "Print the ops each pass will run, what the cache serves, and each cache key", o);
  s.dot = add_graph_reader(app, "graph", "Print the resolved graph in Graphviz DOT", o);
  s.dot->add_option("--png", o.png, "Draw it into FILE instead, with Graphviz's dot")->type_name("FILE");
  add_cache(app, o, s);
  s.bench = add_bench(app, o);
  return s;
}

int cmd_validate(const Options& o) {
  auto spec = load_valid(o.graph, o.common, /*check_data=*/true);
  if (!spec) return 2;
  std::printf("%s: ok (%zu nodes: %s)\n", o.graph.c_str(), spec->nodes.size(),
              fmt::format("{}", fmt::join(spec->resolved["edges"].as<std::vector<std::string>>(), ", ")).c_str());
  return 0;
}

int cmd_plan(const Options& o) {
  auto spec = load_valid(o.graph, o.common, /*check_data=*/true);
  if (!spec) return 2;
  std::fputs(explain_plan(*spec).c_str(), stdout);
  return 0;
}

int cmd_graph(const Options& o) {
  auto spec = load_valid(o.graph, o.common);
  if (!spec) return 2;
  if (o.png.empty()) {
    std::fputs(graph_dot(*spec).c_str(), stdout);
    return 0;
  }
  const DotRender r = render_dot_png(graph_dot(*spec), o.png);
  if (r.exit_code != 0) std::fprintf(stderr, "pipe graph: %s\n", r.error.c_str());
  return r.exit_code;
}

int cmd_stages(const Options& o) {
  if (!load_plugins(o.common)) return 2;
  const Registry& r = Registry::global();
  if (o.stage.empty()) {
    std::fputs((o.markdown ? stages_markdown(r) : stages_text(r)).c_str(), stdout);
    return 0;
  }
  std::string hint;
  const StageEntry* e = find_stage(r, o.stage, &hint);
  if (!e) {
    std::fprintf(stderr, "pipe stages: unknown stage '%s'%s\n", o.stage.c_str(),
                 hint.empty() ? " (pipe stages lists them all)" : fmt::format(" (did you mean '{}'?)", hint).c_str());
    return 2;
  }
  std::fputs((o.markdown ? stage_markdown(*e) : stage_text(*e)).c_str(), stdout);
  return 0;
}

// `pipe run --resume DIR` reruns the graph file and --set values that the interrupted run
// recorded. Returns the resolved hash the graph must still have ("" without --resume), or
// nullopt after printing a usage error.
std::optional<std::string> resolve_graph_to_run(Options& o) {
  if (o.resume.empty()) {
    if (!o.graph.empty()) return std::string();
    std::fprintf(stderr, "pipe run: a graph file is required\n");
    return std::nullopt;
  }
  if (!o.graph.empty()) {
    std::fprintf(stderr, "pipe run --resume DIR takes no graph file: it reruns the one the run in DIR used\n");
    return std::nullopt;
  }
  const ResumeInfo info = read_resume_info(o.resume);
  // Only more (or fewer, not yet run) epochs: anything else would not continue the same run.
  for (const std::string& set : o.common.sets) {
    const std::string key = set.substr(0, set.find('='));
    if (key != "train.epochs") {
      std::fprintf(stderr, "pipe run --resume: --set %s refused: only train.epochs may change when a run is "
                   "continued (any other value would change what its completed epochs computed); start a new "
                   "run to change it\n", set.c_str());
      return std::nullopt;
    }
  }
  std::vector<std::string> sets = info.overrides;
  sets.insert(sets.end(), o.common.sets.begin(), o.common.sets.end());  // later --set wins
  o.graph = info.graph_file;
  o.common.sets = sets;
  return info.resolved_hash;
}

// --out DIR must be new or empty (a run would mix its files into, and over, what DIR holds)
// unless --force; a resumed run writes into its own directory and takes no --out.
bool out_dir_allowed(const Options& o) {
  if (!o.resume.empty() && !o.out.empty()) {
    std::fprintf(stderr, "pipe run: --resume DIR continues the run in DIR; it takes no --out\n");
    return false;
  }
  std::error_code ec;
  if (o.out.empty() || o.force || !fs::is_directory(o.out, ec) || fs::is_empty(o.out, ec)) return true;
  std::fprintf(stderr, "pipe run: --out %s: the directory is not empty; a run would mix its files with (and "
               "replace) what it holds. Choose a new directory, or pass --force to write into it anyway\n", o.out.c_str());
  return false;
}

int cmd_run(Options& o) {
  // A launcher's variables (RANK/WORLD_SIZE, Slurm, Open MPI) make this process one rank.
  const DistEnv dist = read_dist_env(std::getenv);
  // Rank 0 creates --out: the others must not find it non-empty.
  if (dist.rank == 0 && !out_dir_allowed(o)) return 2;
  if (o.threads == 0)  // pipe launch shares the cores out
    if (const char* t = std::getenv("PIPE_THREADS"); t && *t) o.threads = std::max(0, std::atoi(t));
  const std::optional<std::string> expect_hash = resolve_graph_to_run(o);
  if (!expect_hash) return 2;
  auto spec = load_valid(o.graph, o.common);
  if (!spec) return 2;
  if (!expect_hash->empty() && resolved_hash(*spec) != *expect_hash) {
    std::fprintf(stderr, "pipe: error: %s changed since the run in %s started; resuming it would not give the "
                 "results of an uninterrupted run\n", o.graph.c_str(), o.resume.c_str());
    return 2;
  }
  stop_on_signals();
  RunConfig cfg;
  cfg.threads = o.threads;
  cfg.out_dir = o.out;
  cfg.progress = !o.no_progress && !o.quiet && ::isatty(STDERR_FILENO);
  cfg.quiet = o.quiet;
  cfg.verbose = o.verbose;
  cfg.stop = &g_stop;
  cfg.overrides = o.common.sets;
  cfg.resume_dir = o.resume;
  cfg.dist = dist;
  cfg.dist_timeout_s = dist_timeout_s(std::getenv);
  if (dist.rank != 0) cfg.progress = false;
  RunResult r = run_graph(*spec, cfg);
  if (dist.rank != 0) return r.interrupted ? stopped_code() : 0;  // rank 0 prints the run; the others wrote rank<r>.json
  print_table(r);
  if (!o.quiet) print_profile(r);
  if (r.interrupted) {
    std::fprintf(stderr, "pipe: interrupted after %zu epoch(s); partial results in %s\n", r.epochs.size(), r.out_dir.c_str());
    return stopped_code();
  }
  return 0;
}

// Each run's values are checked by the code path of `pipe run --set`, before any run starts.
int cmd_sweep(Options& o) {
  Common c = o.common;
  c.plugins.insert(c.plugins.end(), o.sweep.plugins.begin(), o.sweep.plugins.end());
  c.allow_plugins = o.sweep.allow_plugins;
  const SweepValidator validate = [&](const std::vector<std::string>& sets) {
    c.sets = sets;
    return load_valid(o.sweep.graph, c);
  };
  stop_on_signals();
  const int rc = run_sweep(o.sweep, validate, &g_stop, stdout, stderr);
  return rc == 130 ? stopped_code() : rc;  // the sweep stopped (its runs were stopped with SIGINT)
}

// The exit code of the one subcommand given (CLI11 requires exactly one).
int dispatch(const Subcommands& s, Options& o) {
  if (*s.bench) return run_bench(o.bench);
  if (*s.validate) return cmd_validate(o);
  if (*s.predict) return run_predict(o.predict, stdout, stderr);
  if (*s.runs) return run_runs(o.runs, stdout, stderr);
  if (*s.compare) return run_compare(o.compare, stdout, stderr);
  if (*s.plan) return cmd_plan(o);
  if (*s.dot) return cmd_graph(o);
  if (*s.stages) return cmd_stages(o);
  if (*s.cache) {
    if (*s.cache_ls) return run_cache_ls(o.cache, stdout, stderr);
    return *s.cache_gc ? run_cache_gc(o.cache, stdout, stderr) : run_cache_rm(o.cache, stdout, stderr);
  }
  if (*s.run) return cmd_run(o);
  if (*s.sweep) return cmd_sweep(o);
  if (*s.launch) return run_launch(o.launch, fs::read_symlink("/proc/self/exe").string(), stderr);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"pipe: dataflow graphs for transfer learning on frozen conv bases"};
  app.require_subcommand(1);
  app.set_version_flag("--version", fmt::format("pipe {} ({})", PIPE_VERSION_STRING, host_build_fingerprint()));
  Options options;
  app.add_option("--plugin", options.common.plugins, "Load a plugin (shared library); repeatable")->type_name("PATH");
  const Subcommands subcommands = add_subcommands(app, options);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e);
    return rc == 0 ? 0 : 2;
  }

  try {
    return dispatch(subcommands, options);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "pipe: error: %s\n", e.what());
    return 1;
  }
}
