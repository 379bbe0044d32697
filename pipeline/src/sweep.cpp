#include "sweep.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <thread>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "cache_store.h"
#include "files.h"
#include "pipe/rng.h"

namespace fs = std::filesystem;

namespace pipeline {

using json = nlohmann::ordered_json;

namespace {

std::string trim(const std::string& s) {
  const size_t a = s.find_first_not_of(" \t");
  if (a == std::string::npos) return "";
  return s.substr(a, s.find_last_not_of(" \t") - a + 1);
}

// Splits at commas that stand outside [], {} and quotes (YAML flow values keep theirs).
std::vector<std::string> split_values(const std::string& text) {
  std::vector<std::string> out;
  std::string cur;
  int depth = 0;
  char quote = 0;
  for (char c : text) {
    if (quote) {
      if (c == quote) quote = 0;
    } else if (c == '"' || c == '\'') {
      quote = c;
    } else if (c == '[' || c == '{') {
      ++depth;
    } else if ((c == ']' || c == '}') && depth > 0) {
      --depth;
    } else if (c == ',' && depth == 0) {
      out.push_back(trim(cur));
      cur.clear();
      continue;
    }
    cur += c;
  }
  out.push_back(trim(cur));
  return out;
}

}  // namespace

GridAxis parse_grid(const std::string& text) {
  const size_t eq = text.find('=');
  if (eq == std::string::npos || eq == 0)
    throw SweepUsageError(fmt::format("--grid {}: expected KEY=V1,V2,...", text));
  GridAxis a{trim(text.substr(0, eq)), split_values(text.substr(eq + 1))};
  std::set<std::string> seen;
  for (const std::string& v : a.values) {
    if (v.empty()) throw SweepUsageError(fmt::format("--grid {}: an empty value", text));
    if (!seen.insert(v).second) throw SweepUsageError(fmt::format("--grid {}: value '{}' is listed twice", text, v));
  }
  return a;
}

namespace {

// A directory name for a run: YAML's brackets, braces, quotes and spaces are dropped, other
// characters outside [A-Za-z0-9._,=+-] become '_'; where that changed the name, a hash of the
// original keeps two runs two directories.
std::string run_dir_name(const std::string& text) {
  std::string name;
  for (char c : text) {
    if (std::isalnum(static_cast<unsigned char>(c)) || std::string("._,=+-").find(c) != std::string::npos)
      name += c;
    else if (std::string(" []{}'\"").find(c) == std::string::npos && (name.empty() || name.back() != '_'))
      name += '_';
  }
  if (name != text) name += fmt::format("-{:08x}", static_cast<uint32_t>(hash64(text)));
  return safe_file_name(name, 200);
}

}  // namespace

std::vector<SweepRun> expand_sweep(const std::vector<GridAxis>& grid, const std::vector<std::string>& sets,
                                   int seeds, const std::vector<std::string>& seed_keys) {
  std::vector<SweepRun> out;
  std::vector<size_t> at(grid.size(), 0);
  for (bool more = true; more;) {
    for (int seed = 1; seed <= seeds; ++seed) {
      SweepRun r;
      r.seed = seed;
      std::vector<std::string> parts;
      r.overrides = sets;
      for (size_t i = 0; i < grid.size(); ++i) {
        r.values.push_back(grid[i].values[at[i]]);
        r.overrides.push_back(grid[i].key + "=" + r.values.back());
        parts.push_back(r.overrides.back());
      }
      // Last: a grid value that replaces a whole block (`data={...}`) keeps the seed's values.
      for (const std::string& k : seed_keys) r.overrides.push_back(fmt::format("{}={}", k, seed));
      parts.push_back(fmt::format("seed={}", seed));
      r.name = run_dir_name(fmt::format("{}", fmt::join(parts, ",")));
      out.push_back(std::move(r));
    }
    more = false;  // odometer: the last axis turns fastest
    for (size_t i = grid.size(); i-- > 0;) {
      if (++at[i] < grid[i].values.size()) {
        more = true;
        break;
      }
      at[i] = 0;
    }
  }
  return out;
}

std::optional<double> SweepResult::metric(const std::string& name) const {
  if (name == "train_acc") return train_acc;
  if (name == "val_acc") return val_acc;
  if (name == "best_val_acc") return best_val_acc;
  if (name == "test_acc") return test_acc;
  if (name == "seconds") return seconds;
  return std::nullopt;
}

// ---- reports ----------------------------------------------------------------------------

namespace {

std::string csv_cell(std::string s) {
  std::replace_if(s.begin(), s.end(), [](char c) { return c == '\n' || c == '\r'; }, ' ');
  if (s.find_first_of(",\"") == std::string::npos) return s;
  std::string q = "\"";
  for (char c : s) q += c == '"' ? std::string("\"\"") : std::string(1, c);
  return q + "\"";
}

// Shortest text that reads back as the same double, as metrics.csv writes them.
std::string number_text(const std::optional<double>& v) { return v ? fmt::format("{}", *v) : ""; }

// The runs of each grid cell, in cell order (a cell's seeds are adjacent).
std::vector<std::vector<const SweepResult*>> by_cell(const std::vector<SweepResult>& results) {
  std::vector<std::vector<const SweepResult*>> cells;
  for (const SweepResult& r : results) {
    if (cells.empty() || cells.back().front()->run.values != r.run.values) cells.emplace_back();
    cells.back().push_back(&r);
  }
  return cells;
}

struct Stats {
  size_t n = 0;
  double mean = 0, sd = 0;  // sd: sample standard deviation (n - 1), 0 for one value
};

Stats stats(const std::vector<double>& v) {
  Stats s;
  s.n = v.size();
  if (v.empty()) return s;
  for (double x : v) s.mean += x;
  s.mean /= static_cast<double>(v.size());
  if (v.size() < 2) return s;
  double ss = 0;
  for (double x : v) ss += (x - s.mean) * (x - s.mean);
  s.sd = std::sqrt(ss / static_cast<double>(v.size() - 1));
  return s;
}

// The metric over a cell's completed runs (`gap`: train accuracy minus final validation).
std::vector<double> cell_values(const std::vector<const SweepResult*>& cell, const std::string& metric) {
  std::vector<double> out;
  for (const SweepResult* r : cell) {
    if (r->status != "completed") continue;
    if (metric == "gap") {
      if (r->train_acc && r->val_acc) out.push_back(*r->train_acc - *r->val_acc);
    } else if (auto v = r->metric(metric)) {
      out.push_back(*v);
    }
  }
  return out;
}

std::string stats_text(const Stats& s, int decimals) {
  if (s.n == 0) return "-";
  if (s.n == 1) return fmt::format("{:.{}f}", s.mean, decimals);
  return fmt::format("{:.{}f} ± {:.{}f}", s.mean, decimals, s.sd, decimals);
}

std::string md_cell(std::string s) {
  std::string out;
  for (char c : s) out += c == '|' ? std::string("\\|") : std::string(1, c);
  return out;
}

}  // namespace

std::string sweep_csv(const std::vector<GridAxis>& grid, const std::vector<SweepResult>& results) {
  std::vector<std::string> head = {"run"};
  for (const GridAxis& a : grid) head.push_back(csv_cell(a.key));
  for (const char* c : {"seed", "status"}) head.push_back(c);
  head.insert(head.end(), kSweepMetrics.begin(), kSweepMetrics.end());
  head.push_back("error");
  std::string out = fmt::format("{}\n", fmt::join(head, ","));
  for (const SweepResult& r : results) {
    std::vector<std::string> row = {csv_cell(r.run.name)};
    for (const std::string& v : r.run.values) row.push_back(csv_cell(v));
    row.push_back(std::to_string(r.run.seed));
    row.push_back(r.status);
    for (const std::string& m : kSweepMetrics) row.push_back(number_text(r.metric(m)));
    row.push_back(csv_cell(r.error));
    out += fmt::format("{}\n", fmt::join(row, ","));
  }
  return out;
}

std::string sweep_markdown(const std::string& graph, const std::vector<GridAxis>& grid,
                           const std::vector<SweepResult>& results) {
  std::string out = fmt::format("# Sweep of {}\n\n", graph);
  out += "Per grid cell, over its completed runs (one per seed): mean ± sample standard deviation (n − 1). "
         "Accuracies are fractions; gap = final train accuracy − final validation accuracy.\n\n";
  std::vector<std::string> head;
  for (const GridAxis& a : grid) head.push_back(md_cell(a.key));
  for (const char* c : {"runs", "train acc", "final val acc", "best val acc", "test acc", "gap", "seconds"})
    head.push_back(c);
  out += fmt::format("| {} |\n|{}\n", fmt::join(head, " | "), [&] {
    std::string s;
    for (size_t i = 0; i < head.size(); ++i) s += i < grid.size() ? "---|" : "---:|";
    return s;
  }());
  for (const auto& cell : by_cell(results)) {
    std::vector<std::string> row;
    for (const std::string& v : cell.front()->run.values) row.push_back(md_cell(v));
    const size_t done = cell_values(cell, "seconds").size();
    row.push_back(fmt::format("{}/{}", done, cell.size()));
    for (const char* m : {"train_acc", "val_acc", "best_val_acc", "test_acc", "gap"})
      row.push_back(stats_text(stats(cell_values(cell, m)), 4));
    row.push_back(stats_text(stats(cell_values(cell, "seconds")), 1));
    out += fmt::format("| {} |\n", fmt::join(row, " | "));
  }
  std::vector<std::string> failed;
  for (const SweepResult& r : results)
    if (r.status == "failed") failed.push_back(fmt::format("- {}: {}", md_cell(r.run.name), r.error));
  if (!failed.empty()) out += fmt::format("\nFailed runs:\n\n{}\n", fmt::join(failed, "\n"));
  return out;
}

namespace {

// A key's last component where that names it alone among the grid's keys (shorter legends).
std::string short_key(const std::vector<GridAxis>& grid, size_t i) {
  auto last = [](const std::string& k) { return k.substr(k.rfind('.') + 1); };
  for (size_t j = 0; j < grid.size(); ++j)
    if (j != i && last(grid[j].key) == last(grid[i].key)) return grid[i].key;
  return last(grid[i].key);
}

// "lr=0.001" in a legend; a long value (a YAML map) by its place in --grid: "pose#2".
std::string value_label(const std::vector<GridAxis>& grid, size_t i, const std::string& value) {
  if (value.size() <= 14) return short_key(grid, i) + "=" + value;
  const auto& v = grid[i].values;
  return fmt::format("{}#{}", short_key(grid, i), std::find(v.begin(), v.end(), value) - v.begin() + 1);
}

size_t axis_index(const std::vector<GridAxis>& grid, const std::string& key) {
  for (size_t i = 0; i < grid.size(); ++i)
    if (grid[i].key == key) return i;
  throw SweepUsageError(fmt::format("--plot-x {}: not a --grid key", key));
}

}  // namespace

std::string sweep_png(const std::vector<GridAxis>& grid, const std::vector<SweepResult>& results,
                      const std::string& x_key, const std::string& metric) {
  const size_t xi = axis_index(grid, x_key);
  const std::vector<std::string>& xs = grid[xi].values;
  Chart chart{fmt::format("{} vs {}", metric, x_key), metric, {}, metric != "seconds"};
  chart.x_label = x_key;
  chart.x_ticks = xs;
  std::map<std::vector<std::string>, size_t> line_of;  // the other keys' values -> series
  for (const auto& cell : by_cell(results)) {
    std::vector<std::string> others = cell.front()->run.values;
    const std::string x = others[xi];
    others.erase(others.begin() + static_cast<long>(xi));
    auto [it, fresh] = line_of.emplace(others, chart.series.size());
    if (fresh) {
      std::vector<std::string> label;
      for (size_t i = 0, k = 0; i < grid.size(); ++i)
        if (i != xi) label.push_back(value_label(grid, i, others[k++]));
      chart.series.push_back({label.empty() ? metric : fmt::format("{}", fmt::join(label, ", ")), {}, {}});
    }
    const Stats s = stats(cell_values(cell, metric));
    Series& line = chart.series[it->second];
    line.x.push_back(static_cast<double>(std::find(xs.begin(), xs.end(), x) - xs.begin() + 1));
    line.y.push_back(s.n ? s.mean : std::nan(""));
    line.err.push_back(s.sd);
  }
  return charts_png({chart});
}

// ---- the sweep directory ----------------------------------------------------------------

namespace {

json definition_json(const SweepOptions& o, const std::vector<GridAxis>& grid, const std::string& graph_hash) {
  json g = json::object();
  for (const GridAxis& a : grid) g[a.key] = a.values;
  return {{"graph", fs::absolute(o.graph).lexically_normal().string()},
          {"graph_hash", graph_hash},
          {"grid", g},
          {"sets", o.sets},
          {"seeds", o.seeds}};
}

// What differs between the definition stored in a sweep directory and this one ("" if none).
std::string definition_difference(const json& theirs, const json& ours) {
  std::vector<std::string> diffs;
  for (const auto& [key, value] : ours.items()) {
    const json there = theirs.contains(key) ? theirs[key] : json();
    if (there == value) continue;
    if (key == "graph_hash")
      diffs.push_back("the graph (its file or what it resolves to) changed");
    else
      diffs.push_back(fmt::format("{}: {} there, {} here", key, there.dump(), value.dump()));
  }
  return fmt::format("{}", fmt::join(diffs, "; "));
}

std::string read_text(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Creates the sweep directory with sweep.json, or checks that the one there is ours.
void claim_dir(const fs::path& dir, const json& def) {
  const fs::path file = dir / "sweep.json";
  if (fs::exists(file)) {
    const json theirs = json::parse(read_text(file), nullptr, false);
    if (theirs.is_discarded()) throw SweepUsageError(fmt::format("{}: not valid JSON", file.string()));
    const std::string diff = definition_difference(theirs, def);
    if (!diff.empty())
      throw SweepUsageError(fmt::format("{} holds another sweep ({}); give another --out, or the same definition to "
                                        "resume it", dir.string(), diff));
    return;
  }
  if (fs::exists(dir) && !fs::is_empty(dir))
    throw SweepUsageError(fmt::format("{} exists and holds no sweep.json: give another --out", dir.string()));
  make_dirs(dir.string(), kOwnerOnly.dir);
  write_file_atomic(file.string(), def.dump(2) + "\n");
}

bool has_checkpoint(const fs::path& run) {
  return fs::exists(run / "checkpoint" / "state.json") || fs::exists(run / "checkpoint.old" / "state.json");
}

// A run whose summary.json says it completed: its metrics; nullopt otherwise (an unreadable
// summary too: the run is done again).
std::optional<SweepResult> finished(const fs::path& dir, const SweepRun& run) {
  if (!fs::exists(dir / "summary.json")) return std::nullopt;
  RunRecord rec;
  try {
    rec = read_run(dir.string(), true);
  } catch (const std::exception&) {
    return std::nullopt;
  }
  if (rec.status != "completed") return std::nullopt;
  SweepResult r;
  r.run = run;
  r.status = rec.status;
  r.train_acc = rec.train_acc;
  r.val_acc = rec.val_acc;
  r.best_val_acc = rec.best_val_acc;
  r.test_acc = rec.test_acc;
  r.seconds = rec.seconds;
  return r;
}

// Why a child failed, from its log: its last "error:" line, else its last line.
std::string error_of(const fs::path& log, int code) {
  std::istringstream in(read_text(log));
  std::string last, err;
  for (std::string line; std::getline(in, line);) {
    if (trim(line).empty()) continue;
    last = line;
    if (line.find("error:") != std::string::npos) err = line;
  }
  const std::string why = !err.empty() ? err : !last.empty() ? last : "no output";
  const std::string prefix = "pipe: error: ";
  const std::string text = why.rfind(prefix, 0) == 0 ? why.substr(prefix.size()) : why;
  return code > 128 ? fmt::format("killed by signal {}: {}", code - 128, text) : fmt::format("exit {}: {}", code, text);
}

struct Child {
  pid_t pid = -1;
  size_t index = 0;
};

// Forks `argv` with stdout and stderr into `log`, in a process group of its own: the sweep
// forwards Ctrl-C once, so a run finishes its batch and checkpoints instead of quitting at
// once on a second signal from the terminal.
pid_t spawn(const std::vector<std::string>& args, const std::string& log, bool append) {
  std::vector<char*> argv;
  for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC | (append ? O_APPEND : O_TRUNC), 0600);
  if (fd < 0) throw std::runtime_error(fmt::format("cannot open {}: {}", log, std::strerror(errno)));
  const pid_t pid = ::fork();
  if (pid == 0) {  // only async-signal-safe calls until exec
    ::setpgid(0, 0);
    ::dup2(fd, STDOUT_FILENO);
    ::dup2(fd, STDERR_FILENO);
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  ::close(fd);
  if (pid < 0) throw std::runtime_error(fmt::format("fork failed: {}", std::strerror(errno)));
  return pid;
}

class Sweep {
 public:
  Sweep(const SweepOptions& o, std::vector<GridAxis> grid, std::vector<SweepRun> runs, fs::path dir,
        const std::atomic<bool>* stop, std::FILE* log)
      : o_(o), grid_(std::move(grid)), dir_(std::move(dir)), stop_(stop), log_(log) {
    for (SweepRun& r : runs) {
      results_.emplace_back();
      results_.back().run = std::move(r);
    }
    const int all = o.threads > 0 ? o.threads : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    threads_ = std::max(1, all / std::max(1, o.jobs));
  }

  int go() {
    make_dirs((dir_ / "logs").string(), kOwnerOnly.dir);
    std::vector<size_t> todo;
    for (size_t i : execution_order())
      if (auto done = finished(dir_ / results_[i].run.name, results_[i].run)) {
        results_[i] = *done;
        say(i, "skipped: finished earlier");
      } else {
        todo.push_back(i);
      }
    write_reports();
    execute(todo);
    write_reports();
    return exit_code();
  }

 private:
  bool stopped() const { return stop_ && stop_->load(); }

  // Seed by seed: an interrupted sweep has results for every cell first, and runs at once
  // mostly share a data split, so one extracts each cache entry while the other waits on
  // its lock and then reads it.
  std::vector<size_t> execution_order() const {
    std::vector<size_t> order(results_.size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = i;
    std::stable_sort(order.begin(), order.end(),
                     [&](size_t a, size_t b) { return results_[a].run.seed < results_[b].run.seed; });
    return order;
  }

  void say(size_t i, const std::string& what) {
    std::fprintf(log_, "pipe sweep: [%zu/%zu] %s: %s\n", i + 1, results_.size(), results_[i].run.name.c_str(), what.c_str());
    std::fflush(log_);
  }

  // Up to --jobs children at once; polls so that Ctrl-C is seen (and forwarded) while they run.
  void execute(const std::vector<size_t>& todo) {
    std::vector<Child> running;
    size_t next = 0;
    bool forwarded = false;
    while (next < todo.size() || !running.empty()) {
      for (; !stopped() && next < todo.size() && running.size() < static_cast<size_t>(o_.jobs); ++next)
        running.push_back({launch(todo[next]), todo[next]});
      if (stopped() && !forwarded) {
        for (const Child& c : running) ::kill(c.pid, SIGINT);
        forwarded = true;
      }
      if (stopped() && running.empty()) break;
      reap(running);
    }
  }

  pid_t launch(size_t i) {
    const fs::path run = dir_ / results_[i].run.name;
    const bool resume = has_checkpoint(run);
    std::vector<std::string> args = {o_.exe, "run"};
    if (resume) {
      args.insert(args.end(), {"--resume", run.string()});
    } else {
      fs::remove_all(run);  // a run that failed before its first checkpoint starts over
      args.push_back(o_.graph);
      for (const std::string& s : results_[i].run.overrides) args.insert(args.end(), {"--set", s});
      args.insert(args.end(), {"--out", run.string()});
    }
    args.insert(args.end(), {"--threads", std::to_string(threads_)});
    for (const std::string& p : o_.plugins) args.insert(args.end(), {"--plugin", p});
    if (o_.allow_plugins) args.push_back("--allow-plugins");
    say(i, resume ? "resuming" : "starting");
    return spawn(args, log_of(i).string(), resume);
  }

  fs::path log_of(size_t i) const { return dir_ / "logs" / (results_[i].run.name + ".log"); }

  void reap(std::vector<Child>& running) {
    int status = 0;
    const pid_t pid = ::waitpid(-1, &status, WNOHANG);
    if (pid <= 0) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
      return;
    }
    auto it = std::find_if(running.begin(), running.end(), [&](const Child& c) { return c.pid == pid; });
    if (it == running.end()) return;
    const size_t i = it->index;
    running.erase(it);
    record(i, WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
    write_reports();
  }

  void record(size_t i, int code) {
    SweepResult& r = results_[i];
    const fs::path run = dir_ / r.run.name;
    if (const std::optional<SweepResult> done = code == 0 ? finished(run, r.run) : std::nullopt) {
      r = *done;
      say(i, fmt::format("completed in {:.1f} s, best val acc {:.4f}", r.seconds.value_or(0),
                         r.best_val_acc.value_or(std::nan(""))));
      return;
    }
    if (code == 130 || (code == 0 && stopped())) {
      r.status = "interrupted", r.error.clear();
      say(i, "interrupted (run the same sweep again to resume it)");
      return;
    }
    r.status = "failed";
    r.error = code == 0 ? "exit 0 without a completed summary.json" : error_of(log_of(i), code);
    say(i, "failed: " + r.error);
  }

  void write_reports() {
    write_file_atomic((dir_ / "sweep.csv").string(), sweep_csv(grid_, results_));
    write_file_atomic((dir_ / "sweep.md").string(), sweep_markdown(fs::path(o_.graph).stem().string(), grid_, results_));
    if (!grid_.empty())
      write_file_atomic((dir_ / "sweep.png").string(),
                        sweep_png(grid_, results_, o_.plot_x.empty() ? grid_[0].key : o_.plot_x, o_.metric));
  }

  int exit_code() const {
    if (stopped()) return 130;
    int failed = 0;
    for (const SweepResult& r : results_) failed += r.status == "failed";
    return std::min(failed, 125);
  }

  const SweepOptions& o_;
  std::vector<GridAxis> grid_;
  fs::path dir_;
  const std::atomic<bool>* stop_;
  std::FILE* log_;
  std::vector<SweepResult> results_;
  int threads_ = 1;
};

// ---- checks before any run -------------------------------------------------------------

std::vector<GridAxis> parse_grids(const SweepOptions& o) {
  if (o.seeds < 1) throw SweepUsageError(fmt::format("--seeds {}: at least 1", o.seeds));
  if (o.jobs < 1) throw SweepUsageError(fmt::format("--jobs {}: at least 1", o.jobs));
  if (std::find(kSweepMetrics.begin(), kSweepMetrics.end(), o.metric) == kSweepMetrics.end())
    throw SweepUsageError(fmt::format("--metric {}: one of {}", o.metric, fmt::join(kSweepMetrics, ", ")));
  std::vector<GridAxis> grid;
  std::set<std::string> keys;
  for (const std::string& s : o.sets) keys.insert(s.substr(0, s.find('=')));
  for (const std::string& text : o.grid) {
    grid.push_back(parse_grid(text));
    if (!keys.insert(grid.back().key).second)
      throw SweepUsageError(fmt::format("--grid {}: the key is given twice (by --grid or --set)", grid.back().key));
  }
  if (keys.count("train.seed"))
    throw SweepUsageError("train.seed is what --seeds varies (1..N): it cannot be set by --grid or --set");
  if (!o.plot_x.empty()) axis_index(grid, o.plot_x);
  return grid;
}

// train.seed, and the source's split seed where it has one that neither --grid nor --set fixes.
std::vector<std::string> seed_keys(const GraphSpec& base, const std::vector<GridAxis>& grid,
                                   const std::vector<std::string>& sets) {
  std::vector<std::string> out = {"train.seed"};
  if (!base.source_entry || !base.source_entry->schema.find("split_seed")) return out;
  auto fixes = [](const std::string& key) { return key == "data.split_seed"; };
  for (const GridAxis& a : grid)
    if (fixes(a.key)) return out;
  for (const std::string& s : sets)
    if (fixes(s.substr(0, s.find('=')))) return out;
  out.push_back("data.split_seed");
  return out;
}

// Each grid value on its own (so that a bad one is reported once), then every cell.
void validate_all(const SweepOptions& o, const std::vector<GridAxis>& grid, const std::vector<SweepRun>& runs,
                  const SweepValidator& validate) {
  for (const GridAxis& a : grid)
    for (const std::string& v : a.values) {
      std::vector<std::string> sets = o.sets;
      sets.push_back(a.key + "=" + v);
      if (!validate(sets)) throw SweepUsageError(fmt::format("--grid {}={} refused; no run started", a.key, v));
    }
  for (const SweepRun& r : runs)
    if (r.seed == 1 && !validate(r.overrides))
      throw SweepUsageError(fmt::format("run {} refused; no run started", r.name));
}

}  // namespace

int run_sweep(const SweepOptions& o, const SweepValidator& validate, const std::atomic<bool>* stop,
              std::FILE* out, std::FILE* err) {
  try {
    const std::vector<GridAxis> grid = parse_grids(o);
    const std::optional<GraphSpec> base = validate(o.sets);
    if (!base) return 2;
    const std::vector<SweepRun> runs = expand_sweep(grid, o.sets, o.seeds, seed_keys(*base, grid, o.sets));
    validate_all(o, grid, runs, validate);
    const json def = definition_json(o, grid, resolved_hash(*base));
    const fs::path dir = o.out.empty() ? fs::path("sweeps") / fmt::format("{}-{}", base->name, hash_hex(def.dump()).substr(0, 8))
                                       : fs::path(o.out);
    claim_dir(dir, def);
    std::fprintf(err, "pipe sweep: %s: %zu runs (%zu cells x %d seeds), %d at once\n", dir.c_str(), runs.size(),
                 runs.size() / static_cast<size_t>(o.seeds), o.seeds, o.jobs);
    const int rc = Sweep(o, grid, runs, dir, stop, err).go();
    std::fprintf(out, "%s\nsweep.csv, sweep.md%s and one run directory per run in %s\n",
                 read_text(dir / "sweep.md").c_str(), grid.empty() ? "" : ", sweep.png", dir.c_str());
    return rc;
  } catch (const SweepUsageError& e) {
    std::fprintf(err, "pipe sweep: %s\n", e.what());
    return 2;
  }
}

}  // namespace pipeline
