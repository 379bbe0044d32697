// pipe: run, validate, inspect and draw dataflow graphs for transfer learning.
//
// Exit codes: 0 ok, 1 the run failed, 2 usage or validation error, 130 interrupted.
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
#include "cache_store.h"
#include "plugin_loader.h"
#include "runner.h"
#include "spec.h"
#include "stage_docs.h"
#include "torch_runtime.h"

namespace fs = std::filesystem;
using namespace pipeline;

namespace {

std::atomic<bool> g_stop{false};

void on_sigint(int) {
  if (g_stop.exchange(true)) _exit(130);  // second Ctrl-C: leave now
  const char msg[] = "\npipe: interrupted; finishing the current batch (Ctrl-C again to quit now)\n";
  [[maybe_unused]] ssize_t n = ::write(STDERR_FILENO, msg, sizeof msg - 1);
}

struct Common {
  std::vector<std::string> plugins;
  std::vector<std::string> sets;
};

// Loads plugins from --plugin, PIPE_PLUGIN_PATH and the graph's `plugins:` list.
bool load_plugins(const Common& c, const std::string& graph) {
  std::vector<std::string> all = plugin_path_entries();
  all.insert(all.end(), c.plugins.begin(), c.plugins.end());
  if (!graph.empty()) {
    std::vector<std::string> g = graph_plugins(graph);
    all.insert(all.end(), g.begin(), g.end());
  }
  for (const std::string& p : all) {
    if (!fs::exists(p)) continue;  // the validator reports missing graph plugins with a position
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

std::optional<GraphSpec> load_valid(const std::string& path, const Common& c) {
  if (!load_plugins(c, path)) return std::nullopt;
  Diagnostics diag(path);
  GraphSpec spec = load_graph(path, c.sets, Registry::global(), diag);
  if (!diag.ok()) {
    std::fputs(diag.str().c_str(), stderr);
    std::fprintf(stderr, "%zu error%s\n", diag.items().size(), diag.items().size() == 1 ? "" : "s");
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
  // Re-read from the JSON the run saved, so the printout is what profile.json holds.
  YAML::Node prof = YAML::Load(r.profile.dump());
  for (const auto& n : prof)
    std::printf("%-16s %-12s %9lld %9.2f %11.2f %11.1f\n", n["node"].as<std::string>().c_str(),
                n["stage"].as<std::string>().c_str(), n["items"].as<long long>(), n["busy_seconds"].as<double>(),
                n["blocked_sample_seconds"].as<double>(), n["items_per_s"].as<double>());
  std::printf("* summed over samples: time each waited after this node before the next one took it\n");
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"pipe: dataflow graphs for transfer learning on frozen conv bases"};
  app.require_subcommand(1);
  app.set_version_flag("--version", fmt::format("pipe 0.1.0 ({})", host_build_fingerprint()));
  Common common;
  app.add_option("--plugin", common.plugins, "Load a plugin (shared library); repeatable")->type_name("PATH");

  std::string graph, out;
  int threads = 0;
  bool no_progress = false;
  auto* run = app.add_subcommand("run", "Run a graph: train and evaluate, write a run directory");
  std::string resume;
  run->add_option("graph", graph, "Graph YAML file");
  run->add_option("--resume", resume, "Continue an interrupted run in DIR from its last completed epoch")->type_name("DIR");
  run->add_option("--set", common.sets, "Override a value, e.g. --set train.epochs=3 (repeatable)")->type_name("KEY=VALUE");
  run->add_option("--threads", threads, "Threads for TBB stages and LibTorch together (default: all cores)");
  run->add_option("--out", out, "Run directory (default: runs/<graph>-<time>)");
  run->add_flag("--no-progress", no_progress, "No progress bar");
  run->add_option("--plugin", common.plugins, "Load a plugin; repeatable")->type_name("PATH");

  auto* validate = app.add_subcommand("validate", "Check a graph; print every problem, exit 2 if any");
  validate->add_option("graph", graph, "Graph YAML file")->required();
  validate->add_option("--set", common.sets, "Override a value (repeatable)")->type_name("KEY=VALUE");
  validate->add_option("--plugin", common.plugins, "Load a plugin; repeatable")->type_name("PATH");

  bool markdown = false;
  auto* stages = app.add_subcommand("stages", "List every stage with its parameters");
  stages->add_flag("--markdown", markdown, "Write the reference in Markdown (docs/stages.md)");
  stages->add_option("--plugin", common.plugins, "Load a plugin; repeatable")->type_name("PATH");

  auto* plan = app.add_subcommand("plan", "Print the ops each pass will run, what the cache serves, and each cache key");
  plan->add_option("graph", graph, "Graph YAML file")->required();
  plan->add_option("--set", common.sets, "Override a value (repeatable)")->type_name("KEY=VALUE");
  plan->add_option("--plugin", common.plugins, "Load a plugin; repeatable")->type_name("PATH");

  auto* dot = app.add_subcommand("graph", "Print the resolved graph in Graphviz DOT");
  dot->add_option("graph", graph, "Graph YAML file")->required();
  dot->add_option("--set", common.sets, "Override a value (repeatable)")->type_name("KEY=VALUE");
  dot->add_option("--plugin", common.plugins, "Load a plugin; repeatable")->type_name("PATH");

  std::string cache_dir, prefix;
  bool all = false;
  auto* cache = app.add_subcommand("cache", "Inspect or clear the feature cache");
  cache->require_subcommand(1);
  auto* cache_ls = cache->add_subcommand("ls", "List cache entries");
  cache_ls->add_option("--dir", cache_dir, "Cache directory (default: $PIPE_CACHE_DIR, $XDG_CACHE_HOME/pipe, ~/.cache/pipe)");
  auto* cache_rm = cache->add_subcommand("rm", "Remove cache entries by fingerprint prefix, or --all");
  cache_rm->add_option("fingerprint", prefix, "Fingerprint or its prefix");
  cache_rm->add_flag("--all", all, "Remove every entry");
  cache_rm->add_option("--dir", cache_dir, "Cache directory");

  BenchOptions bench_opts;
  auto* bench = app.add_subcommand("bench", "Benchmarks, each against its bound in the same run; writes bench.json");
  bench->add_flag("--smoke", bench_opts.smoke, "A few batches per figure: proves the benchmarks still work");
  bench->add_option("--out", bench_opts.out, "Output JSON (default bench.json)");
  bench->add_option("--threads", bench_opts.threads, "Threads (default: all cores)");
  bench->add_option("--data-dir", bench_opts.data_dir, "Keep generated images here (default: a temp dir)");
  bench->add_option("--only", bench_opts.only, "Run only the figures whose name contains NAME (case-insensitive)")->type_name("NAME");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e);
    return rc == 0 ? 0 : 2;
  }

  try {
    if (*bench) return run_bench(bench_opts);
    if (*validate) {
      auto spec = load_valid(graph, common);
      if (!spec) return 2;
      std::printf("%s: ok (%zu nodes: %s)\n", graph.c_str(), spec->nodes.size(),
                  fmt::format("{}", fmt::join(spec->resolved["edges"].as<std::vector<std::string>>(), ", ")).c_str());
      return 0;
    }
    if (*plan) {
      auto spec = load_valid(graph, common);
      if (!spec) return 2;
      std::fputs(explain_plan(*spec).c_str(), stdout);
      return 0;
    }
    if (*dot) {
      auto spec = load_valid(graph, common);
      if (!spec) return 2;
      std::fputs(graph_dot(*spec).c_str(), stdout);
      return 0;
    }
    if (*stages) {
      if (!load_plugins(common, "")) return 2;
      std::fputs((markdown ? stages_markdown(Registry::global()) : stages_text(Registry::global())).c_str(), stdout);
      return 0;
    }
    if (*cache) {
      FeatureCache store(resolve_cache_dir(cache_dir));
      if (*cache_ls) {
        const auto entries = store.list();
        std::printf("%s: %zu entr%s\n", store.root().c_str(), entries.size(), entries.size() == 1 ? "y" : "ies");
        for (const auto& e : entries)
          std::printf("%.12s  %-10s %6lld x %d views  %8.1f MB  %s  %s\n", e.fingerprint.c_str(), e.split.c_str(),
                      static_cast<long long>(e.count), e.views, static_cast<double>(e.bytes) / 1e6, e.created.c_str(),
                      e.description.c_str());
        return 0;
      }
      if (!all && prefix.empty()) {
        std::fprintf(stderr, "pipe cache rm: give a fingerprint prefix or --all\n");
        return 2;
      }
      const CacheRemoved r = all ? store.remove_all() : store.remove(prefix);
      std::printf("removed %d entr%s (%d fingerprint%s, %.1f MB)\n", r.entries, r.entries == 1 ? "y" : "ies",
                  r.fingerprints, r.fingerprints == 1 ? "" : "s", static_cast<double>(r.bytes) / 1e6);
      return 0;
    }
    if (*run) {
      std::string expect_hash;
      if (!resume.empty()) {
        if (!graph.empty() || !common.sets.empty()) {
          std::fprintf(stderr, "pipe run --resume DIR takes no graph or --set: it reuses the interrupted run's\n");
          return 2;
        }
        const ResumeInfo info = read_resume_info(resume);
        graph = info.graph_file;
        common.sets = info.overrides;
        expect_hash = info.resolved_hash;
      } else if (graph.empty()) {
        std::fprintf(stderr, "pipe run: a graph file is required\n");
        return 2;
      }
      auto spec = load_valid(graph, common);
      if (!spec) return 2;
      if (!expect_hash.empty() && resolved_hash(*spec) != expect_hash) {
        std::fprintf(stderr, "pipe: error: %s changed since the run in %s started; resuming it would not give the "
                     "results of an uninterrupted run\n", graph.c_str(), resume.c_str());
        return 2;
      }
      std::signal(SIGINT, on_sigint);
      RunConfig cfg;
      cfg.threads = threads;
      cfg.out_dir = out;
      cfg.progress = !no_progress && ::isatty(STDERR_FILENO);
      cfg.stop = &g_stop;
      cfg.overrides = common.sets;
      cfg.resume_dir = resume;
      RunResult r = run_graph(*spec, cfg);
      print_table(r);
      print_profile(r);
      if (r.interrupted) {
        std::fprintf(stderr, "pipe: interrupted after %zu epoch(s); partial results in %s\n", r.epochs.size(), r.out_dir.c_str());
        return 130;
      }
      return 0;
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "pipe: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
