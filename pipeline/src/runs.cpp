#include "runs.h"

#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <tuple>

#include <fmt/format.h>
#include <yaml-cpp/yaml.h>

#include "files.h"

namespace fs = std::filesystem;

namespace pipeline {

using json = nlohmann::ordered_json;

std::vector<std::string> sink_file_names(const std::string& file, const std::vector<std::string>& names, size_t index) {
  std::vector<std::string> out;
  if (index == 0) out.push_back(file);
  if (names.size() > 1) {
    const fs::path f(file);
    out.push_back(safe_file_name(f.stem().string() + "-" + names[index] + f.extension().string()));
  }
  return out;
}

namespace {

// Shortest text that reads back as the same double ("" where unknown), as metrics.jsonl has it.
std::string csv_number(double v, bool known) { return known && std::isfinite(v) ? fmt::format("{}", v) : ""; }

}  // namespace

void append_metrics_csv(const std::string& path, const EpochMetrics& m, bool has_val) {
  std::error_code ec;
  const bool fresh = !fs::exists(path) || fs::file_size(path, ec) == 0;
  std::string text = fresh ? std::string(kMetricsCsvHeader) + "\n" : "";
  text += fmt::format("{},{},{},{},{},{},{}\n", m.epoch, csv_number(m.train.loss, true), csv_number(m.train.accuracy, true),
                      csv_number(m.validation.loss, has_val), csv_number(m.validation.accuracy, has_val),
                      csv_number(m.lr, m.lr >= 0), csv_number(m.seconds, true));
  std::ofstream out(path, std::ios::app | std::ios::binary);
  if (!(out << text << std::flush)) {
    const int err = errno;  // a stream hides it; the failed open or write(2) left it set
    throw std::runtime_error(fmt::format("cannot write {}: {}", path, std::strerror(err)));
  }
}

std::string graph_yaml_comment(const std::string& graph_file) {
  std::string file = graph_file;
  std::replace_if(file.begin(), file.end(), [](char c) { return c == '\n' || c == '\r'; }, '?');  // one comment line
  return "# resolved from " + file + "; rerun with: pipe run <this file>\n";
}

namespace {

const char* const kPartial = "running/interrupted";

// The graph file graph_yaml_comment() named in `text` ("" when it has none).
std::string graph_file_of(const std::string& text) {
  const std::string head = "# resolved from ", tail = "; rerun with:";
  const std::string first = text.substr(0, text.find('\n'));
  const size_t end = first.rfind(tail);
  if (first.rfind(head, 0) != 0 || end == std::string::npos || end < head.size()) return "";
  return first.substr(head.size(), end - head.size());
}

std::string read_text(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(fmt::format("cannot read {}: {}", path.string(), std::strerror(errno)));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

json read_json(const fs::path& path) {
  try {
    return json::parse(read_text(path));
  } catch (const json::exception& e) {
    throw std::runtime_error(fmt::format("{}: {}", path.string(), e.what()));
  }
}

YAML::Node read_yaml(const fs::path& path) {
  try {
    return YAML::Load(read_text(path));
  } catch (const YAML::Exception& e) {
    throw std::runtime_error(fmt::format("{}: {}", path.string(), e.what()));
  }
}

std::optional<double> number(const json& j, const char* key) {
  if (!j.is_object() || !j.contains(key) || !j[key].is_number()) return std::nullopt;
  return j[key].get<double>();
}

// The directory's own name, also for "runs/x/" and ".".
std::string dir_name(const std::string& dir) {
  fs::path p = fs::absolute(dir).lexically_normal();
  if (p.filename().empty()) p = p.parent_path();
  return p.filename().empty() ? dir : p.filename().string();
}

bool is_map(const YAML::Node& n) { return n.IsDefined() && n.IsMap(); }

// The first reporting sink's keys: the summary's flat ones (one sink), else its entry in sinks.
const json* first_metrics(const json& s) {
  if (s.contains("best_val_acc")) return &s;
  if (s.contains("sinks") && s["sinks"].is_object())
    for (const auto& [name, sink] : s["sinks"].items())
      if (sink.is_object() && sink.contains("best_val_acc")) return &sink;
  return nullptr;
}

void from_summary(const json& s, RunRecord& r) {
  r.graph = s.value("graph", "");
  r.started = s.value("started", "");
  r.status = s.value("status", "");
  r.epochs = s.value("epochs", 0);
  r.epochs_completed = s.value("epochs_completed", 0);
  r.seconds = number(s, "seconds");
  if (const json* m = first_metrics(s)) {
    r.best_val_acc = number(*m, "best_val_acc");
    r.val_acc = number(*m, "val_acc");
    r.train_acc = number(*m, "train_acc");
    r.test_acc = number(*m, "test_acc");
    r.best_epoch = m->value("best_epoch", 0);
  }
}

// Each completed epoch of metrics.jsonl: its number and the first reporting sink's metrics (the
// line itself with one sink, else the line's first object). A line cut short by a crash ends it.
std::vector<std::pair<int, json>> epoch_lines(const fs::path& path) {
  std::vector<std::pair<int, json>> out;
  std::ifstream in(path);
  for (std::string line; std::getline(in, line);) {
    json j = json::parse(line, nullptr, false);
    if (j.is_discarded() || !j.is_object()) break;
    const int epoch = j.value("epoch", static_cast<int>(out.size()) + 1);
    if (!j.contains("train_acc"))
      for (const auto& [name, sink] : j.items())
        if (sink.is_object()) {
          j = sink;
          break;
        }
    out.emplace_back(epoch, j);
  }
  return out;
}

void read_curve(const fs::path& dir, RunRecord& r) {
  r.val_curve.label = r.name;
  for (const auto& [epoch, m] : epoch_lines(dir / "metrics.jsonl")) {
    r.val_curve.x.push_back(epoch);
    r.val_curve.y.push_back(number(m, "val_acc").value_or(std::nan("")));
  }
}

// A run without summary.json (running, or killed): what graph.yaml and metrics.jsonl tell.
void from_partial(const fs::path& dir, RunRecord& r) {
  r.status = kPartial;
  fs::path started = dir / "graph.yaml";
  if (fs::exists(started)) {
    const std::string text = read_text(started);
    r.graph = fs::path(graph_file_of(text)).stem().string();
    const YAML::Node g = read_yaml(started);
    if (is_map(g) && is_map(g["train"]) && g["train"]["epochs"]) r.epochs = g["train"]["epochs"].as<int>();
  } else {
    started = dir / "checkpoint" / "state.json";
  }
  struct stat st {};
  if (::stat(started.c_str(), &st) == 0) r.started = utc_time(st.st_mtime);
  r.epochs_completed = static_cast<int>(r.val_curve.x.size());
  for (size_t i = 0; i < r.val_curve.y.size(); ++i) {
    const double v = r.val_curve.y[i];
    if (std::isnan(v)) continue;
    r.val_acc = v;
    if (!r.best_val_acc || v > *r.best_val_acc) {
      r.best_val_acc = v;
      r.best_epoch = static_cast<int>(r.val_curve.x[i]);
    }
  }
}

bool looks_like_run(const fs::path& d) {
  return fs::exists(d / "summary.json") || fs::exists(d / "graph.yaml") || fs::exists(d / "checkpoint" / "state.json") ||
         fs::exists(d / "checkpoint.old" / "state.json");
}

}  // namespace

RunRecord read_run(const std::string& dir, bool need_summary) {
  const fs::path d(dir);
  if (!fs::is_directory(d)) throw NotARun(fmt::format("{}: no such directory", dir));
  const bool summary = fs::exists(d / "summary.json");
  if (!summary && need_summary && looks_like_run(d))
    throw NotARun(fmt::format("{}: no summary.json: the run has not finished (still running, or interrupted)", dir));
  if (!summary && (need_summary || !looks_like_run(d)))
    throw NotARun(fmt::format("{}: not a run directory (no summary.json)", dir));
  RunRecord r;
  r.dir = dir;
  r.name = dir_name(dir);
  read_curve(d, r);
  if (!summary) {
    from_partial(d, r);
    return r;
  }
  const fs::path file = d / "summary.json";
  try {
    from_summary(read_json(file), r);
  } catch (const json::exception& e) {
    throw std::runtime_error(fmt::format("{}: {}", file.string(), e.what()));
  }
  return r;
}

std::vector<RunRecord> list_runs(const std::string& root, std::FILE* err) {
  std::vector<RunRecord> out;
  for (const fs::directory_entry& e : fs::directory_iterator(root)) {
    if (!e.is_directory()) continue;
    try {
      out.push_back(read_run(e.path().string()));
    } catch (const NotARun&) {
      // other directories may live beside the runs
    } catch (const std::exception& x) {
      std::fprintf(err, "pipe runs: skipping %s\n", x.what());
    }
  }
  std::sort(out.begin(), out.end(), [](const RunRecord& a, const RunRecord& b) {
    return std::tie(a.started, a.name) < std::tie(b.started, b.name);
  });
  return out;
}

namespace {

std::string or_dash(const std::string& s) { return s.empty() ? "-" : s; }

std::string fixed(const std::optional<double>& v, int decimals) { return v ? fmt::format("{:.{}f}", *v, decimals) : "-"; }

std::string epochs_text(const RunRecord& r) {
  return fmt::format("{}/{}", r.epochs_completed, r.epochs > 0 ? std::to_string(r.epochs) : "?");
}

// Rows of cells, columns padded to their widest cell (two spaces apart).
std::string table(const std::vector<std::vector<std::string>>& rows) {
  std::vector<size_t> width;
  for (const auto& row : rows)
    for (size_t c = 0; c < row.size(); ++c) {
      if (width.size() <= c) width.push_back(0);
      width[c] = std::max(width[c], row[c].size());
    }
  std::string out;
  for (const auto& row : rows) {
    std::string line;
    for (size_t c = 0; c < row.size(); ++c) line += c + 1 < row.size() ? fmt::format("{:<{}}  ", row[c], width[c]) : row[c];
    out += line + "\n";
  }
  return out;
}

json optional_json(const std::optional<double>& v) { return v ? json(*v) : json(); }

}  // namespace

std::string runs_table(const std::vector<RunRecord>& runs) {
  std::vector<std::vector<std::string>> rows = {{"name", "graph", "started", "status", "epochs", "best val", "test", "seconds"}};
  for (const RunRecord& r : runs)
    rows.push_back({r.name, or_dash(r.graph), or_dash(r.started), r.status, epochs_text(r), fixed(r.best_val_acc, 4),
                    fixed(r.test_acc, 4), fixed(r.seconds, 1)});
  return table(rows);
}

json runs_json(const std::vector<RunRecord>& runs) {
  json out = json::array();
  for (const RunRecord& r : runs)
    out.push_back({{"name", r.name},
                   {"dir", r.dir},
                   {"graph", r.graph},
                   {"started", r.started},
                   {"status", r.status},
                   {"epochs_completed", r.epochs_completed},
                   {"epochs", r.epochs},
                   {"best_val_acc", optional_json(r.best_val_acc)},
                   {"best_epoch", r.best_epoch},
                   {"val_acc", optional_json(r.val_acc)},
                   {"test_acc", optional_json(r.test_acc)},
                   {"seconds", optional_json(r.seconds)}});
  return out;
}

namespace {

std::string yaml_text(const YAML::Node& n) {
  if (!n.IsDefined()) return "(absent)";
  if (n.IsScalar()) return n.Scalar();
  YAML::Emitter e;
  e << YAML::Flow << n;
  return e.c_str();
}

// Equal text, or numbers equal as numbers (1.0e-4 and 0.0001).
bool same_value(const std::string& a, const std::string& b) {
  if (a == b) return true;
  char *ea = nullptr, *eb = nullptr;
  const double x = std::strtod(a.c_str(), &ea), y = std::strtod(b.c_str(), &eb);
  return !a.empty() && !b.empty() && *ea == '\0' && *eb == '\0' && x == y;
}

// Maps are walked key by key (the union of the graphs' keys, in order of appearance); anything
// else (scalars, lists) is compared as one value.
void walk(const std::vector<YAML::Node>& nodes, const std::string& key, std::vector<GraphDifference>& out) {
  const bool maps = std::any_of(nodes.begin(), nodes.end(), is_map) &&
                    std::all_of(nodes.begin(), nodes.end(), [](const YAML::Node& n) { return !n.IsDefined() || n.IsMap(); });
  if (maps) {
    std::vector<std::string> keys;
    std::set<std::string> seen;
    for (const YAML::Node& n : nodes)
      if (is_map(n))
        for (const auto& kv : n)
          if (seen.insert(kv.first.Scalar()).second) keys.push_back(kv.first.Scalar());
    for (const std::string& k : keys) {
      std::vector<YAML::Node> children;
      for (const YAML::Node& n : nodes) children.push_back(is_map(n) ? n[k] : n);
      walk(children, key.empty() ? k : key + "." + k, out);
    }
    return;
  }
  GraphDifference d{key, {}};
  for (const YAML::Node& n : nodes) d.values.push_back(yaml_text(n));
  for (const std::string& v : d.values)
    if (!same_value(v, d.values[0])) {
      out.push_back(d);
      return;
    }
}

}  // namespace

Comparison compare_runs(const std::vector<std::string>& dirs) {
  Comparison c;
  std::vector<YAML::Node> graphs;
  std::map<std::string, int> names;
  for (const std::string& d : dirs) {
    c.runs.push_back(read_run(d, true));
    graphs.push_back(read_yaml(fs::path(d) / "graph.yaml"));
    ++names[c.runs.back().name];
  }
  for (RunRecord& r : c.runs)  // runs/a/x and runs/b/x: named by their paths
    if (names[r.name] > 1) r.name = r.val_curve.label = r.dir;
  walk(graphs, "", c.differences);
  return c;
}

std::string comparison_text(const Comparison& c) {
  std::vector<std::vector<std::string>> rows(9);
  const char* labels[] = {"", "graph", "status", "epochs", "best_val_acc", "best_epoch", "val_acc", "test_acc", "seconds"};
  for (size_t i = 0; i < rows.size(); ++i) rows[i].push_back(labels[i]);
  for (const RunRecord& r : c.runs) {
    const std::string cells[] = {r.name, or_dash(r.graph), r.status, epochs_text(r), fixed(r.best_val_acc, 4),
                                 r.best_epoch > 0 ? std::to_string(r.best_epoch) : "-", fixed(r.val_acc, 4),
                                 fixed(r.test_acc, 4), fixed(r.seconds, 1)};
    for (size_t i = 0; i < rows.size(); ++i) rows[i].push_back(cells[i]);
  }
  std::string out = table(rows);
  if (c.differences.empty()) return out + "\ngraph.yaml differences: none\n";
  out += "\ngraph.yaml differences:\n";
  for (const GraphDifference& d : c.differences) out += fmt::format("  {}: {}\n", d.key, fmt::join(d.values, " | "));
  return out;
}

std::string comparison_png(const Comparison& c) {
  Chart chart{"validation accuracy", "validation accuracy", {}, true};
  for (const RunRecord& r : c.runs) chart.series.push_back(r.val_curve);
  return charts_png({chart});
}

int run_runs(const RunsOptions& options, std::FILE* out, std::FILE* err) {
  if (!fs::is_directory(options.dir)) {
    std::fprintf(err, "pipe runs: %s: no such directory\n", options.dir.c_str());
    return 2;
  }
  const std::vector<RunRecord> runs = list_runs(options.dir, err);
  if (options.json)
    std::fprintf(out, "%s\n", runs_json(runs).dump(2, ' ', false, json::error_handler_t::replace).c_str());
  else if (runs.empty())
    std::fprintf(out, "no runs in %s\n", options.dir.c_str());
  else
    std::fputs(runs_table(runs).c_str(), out);
  return 0;
}

int run_compare(const CompareOptions& options, std::FILE* out, std::FILE* err) {
  if (options.runs.size() < 2) {
    std::fprintf(err, "pipe compare: give two or more run directories (got %zu)\n", options.runs.size());
    return 2;
  }
  Comparison c;
  try {
    c = compare_runs(options.runs);
  } catch (const NotARun& e) {
    std::fprintf(err, "pipe compare: %s\n", e.what());
    return 2;
  }
  std::fputs(comparison_text(c).c_str(), out);
  write_file_atomic(options.out, comparison_png(c));
  std::fprintf(out, "\nvalidation accuracy per epoch: %s\n", options.out.c_str());
  return 0;
}

}  // namespace pipeline
