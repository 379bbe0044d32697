#include "spec.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <sstream>

#include <fmt/format.h>

#include "files.h"

namespace fs = std::filesystem;

namespace pipeline {

const NodeSpec* GraphSpec::find(const std::string& node) const {
  for (const NodeSpec& n : nodes)
    if (n.name == node) return &n;
  return nullptr;
}

int GraphSpec::index_of(const std::string& node) const {
  for (size_t i = 0; i < nodes.size(); ++i)
    if (nodes[i].name == node) return static_cast<int>(i);
  return -1;
}

std::vector<int> GraphSpec::consumers(int i) const {
  std::vector<int> out;
  for (size_t j = 0; j < nodes.size(); ++j)
    for (int in : nodes[j].inputs)
      if (in == i) out.push_back(static_cast<int>(j));
  return out;
}

bool GraphSpec::is_chain() const {
  for (size_t i = 0; i < nodes.size(); ++i)
    if (nodes[i].inputs.size() > 1 || consumers(static_cast<int>(i)).size() > 1 ||
        (i > 0 && nodes[i].inputs != std::vector<int>{static_cast<int>(i) - 1}))
      return false;
  return true;
}

namespace {

const char* yaml_kind(const YAML::Node& n) {
  switch (n.Type()) {
    case YAML::NodeType::Map: return "a map";
    case YAML::NodeType::Sequence: return "a list";
    case YAML::NodeType::Scalar: return "a scalar";
    case YAML::NodeType::Null: return "nothing";
    default: return "undefined";
  }
}

template <typename T>
bool scalar_as(const YAML::Node& n, T& out) {
  if (!n.IsScalar()) return false;
  try {
    out = n.as<T>();
    return true;
  } catch (const YAML::Exception&) {
    return false;
  }
}

bool in_range(const ParamSpec& spec, double v) {
  return !(spec.min && v < *spec.min) && !(spec.max && v > *spec.max);
}

std::string range_text(const ParamSpec& spec) {
  if (spec.min && spec.max) return fmt::format("[{}, {}]", *spec.min, *spec.max);
  if (spec.min) return fmt::format(">= {}", *spec.min);
  return fmt::format("<= {}", *spec.max);
}

std::string quoted_list(const std::vector<std::string>& v) {
  std::vector<std::string> q;
  for (const auto& s : v) q.push_back("'" + s + "'");
  return fmt::format("{}", fmt::join(q, ", "));
}

// Converts one YAML value to the declared type, reporting what is wrong with it.
std::optional<ParamValue> convert(const ParamSpec& spec, const YAML::Node& v,
                                  const std::string& owner, const std::string& path,
                                  Diagnostics& diag) {
  const auto bad_type = [&](const YAML::Node& at, const std::string& got) {
    diag.error(at, path, fmt::format("parameter '{}' of {} must be {}, got {}", spec.name, owner,
                                     param_type_name(spec.type), got));
    return std::nullopt;
  };
  const auto check_num = [&](const YAML::Node& at, double d) {
    if (!std::isfinite(d) || !in_range(spec, d)) {
      diag.error(at, path, fmt::format("parameter '{}' of {} is {}, out of range {}", spec.name,
                                       owner, at.Scalar(), range_text(spec)));
      return false;
    }
    return true;
  };
  const auto check_choice = [&](const YAML::Node& at, const std::string& s) {
    if (!spec.choices.empty() &&
        std::find(spec.choices.begin(), spec.choices.end(), s) == spec.choices.end()) {
      diag.error(at, path, fmt::format("parameter '{}' of {} is '{}'; expected one of {}", spec.name,
                                       owner, s, quoted_list(spec.choices)));
      return false;
    }
    return true;
  };
  const auto scalar_text = [](const YAML::Node& n) {
    return n.IsScalar() ? fmt::format("'{}'", n.Scalar()) : std::string(yaml_kind(n));
  };
  switch (spec.type) {
    case ParamType::integer: {
      int64_t i;
      if (!scalar_as(v, i)) return bad_type(v, scalar_text(v));
      if (!check_num(v, static_cast<double>(i))) return std::nullopt;
      return ParamValue{i};
    }
    case ParamType::number: {
      double d;
      if (!scalar_as(v, d)) return bad_type(v, scalar_text(v));
      if (!check_num(v, d)) return std::nullopt;
      return ParamValue{d};
    }
    case ParamType::boolean: {
      bool b;
      if (!scalar_as(v, b)) return bad_type(v, scalar_text(v));
      return ParamValue{b};
    }
    case ParamType::string: {
      if (!v.IsScalar()) return bad_type(v, yaml_kind(v));
      if (!check_choice(v, v.Scalar())) return std::nullopt;
      return ParamValue{v.Scalar()};
    }
    case ParamType::integer_list:
    case ParamType::number_list:
    case ParamType::string_list: {
      if (!v.IsSequence()) return bad_type(v, scalar_text(v));
      if (spec.list_size >= 0 && static_cast<int>(v.size()) != spec.list_size) {
        diag.error(v, path, fmt::format("parameter '{}' of {} must have {} elements, got {}",
                                        spec.name, owner, spec.list_size, v.size()));
        return std::nullopt;
      }
      std::vector<int64_t> ints;
      std::vector<double> nums;
      std::vector<std::string> strs;
      bool ok = true;
      for (const YAML::Node& e : v) {
        if (spec.type == ParamType::integer_list) {
          int64_t i;
          if (!scalar_as(e, i)) { bad_type(e, "element " + scalar_text(e)); ok = false; continue; }
          ok = check_num(e, static_cast<double>(i)) && ok;
          ints.push_back(i);
        } else if (spec.type == ParamType::number_list) {
          double d;
          if (!scalar_as(e, d)) { bad_type(e, "element " + scalar_text(e)); ok = false; continue; }
          ok = check_num(e, d) && ok;
          nums.push_back(d);
        } else {
          if (!e.IsScalar()) { bad_type(e, std::string("element ") + yaml_kind(e)); ok = false; continue; }
          ok = check_choice(e, e.Scalar()) && ok;
          strs.push_back(e.Scalar());
        }
      }
      if (!ok) return std::nullopt;
      if (spec.type == ParamType::integer_list) return ParamValue{ints};
      if (spec.type == ParamType::number_list) return ParamValue{nums};
      return ParamValue{strs};
    }
  }
  return std::nullopt;
}

}  // namespace

void resolve_path_params(const StageSchema& schema, Params& params, const std::string& dir) {
  for (const ParamSpec& p : schema.params) {
    if (!p.path || !params.has(p.name)) continue;
    const std::string& v = params.string(p.name);
    if (v.rfind("builtin:", 0) != 0) params.set(p.name, resolve_path(v, dir));
  }
}

namespace {

// Each must_exist path of `params` that does not exist, at its value (or its block when the
// value is a default).
void check_param_files(const StageSchema& schema, const Params& params, const YAML::Node& block,
                       const std::string& path, Diagnostics& diag) {
  for (const ParamSpec& p : schema.params) {
    if (!p.must_exist || !params.has(p.name)) continue;
    const std::string& v = params.string(p.name);
    std::error_code ec;
    if (v.empty() || v.rfind("builtin:", 0) == 0 || fs::exists(v, ec)) continue;
    const YAML::Node at = block.IsMap() && block[p.name] ? block[p.name] : block;
    diag.error(at, path + "." + p.name, fmt::format("{} '{}' does not exist", p.name, v));
  }
}

}  // namespace

void check_input_files(const YAML::Node& doc, const GraphSpec& g, const std::vector<NodeSpec>& nodes, Diagnostics& diag) {
  if (g.source_entry) check_param_files(g.source_entry->schema, g.source_params, doc["data"], "data", diag);
  for (const NodeSpec& n : nodes)
    if (n.entry) check_param_files(n.entry->schema, n.params, doc["nodes"][n.name], "nodes." + n.name, diag);
}

void check_source(const YAML::Node& doc, const GraphSpec& g, Diagnostics& diag) {
  try {
    g.source_entry->make_source(g.source_params, SourceContext{g.dir});
  } catch (const std::exception& e) {
    diag.error(doc["data"], "data", e.what());
  }
}

namespace {

// A key whose declared parameters are "key.NAME" (pose.rotation, pose.flip...): a group, written
// as a map (`pose: {rotation: 30}`) and set as `--set data.pose.rotation=30`.
bool is_group(const StageSchema& schema, const std::string& key) {
  for (const ParamSpec& p : schema.params)
    if (p.name.rfind(key + ".", 0) == 0) return true;
  return false;
}

struct Entry {
  std::string key;  // "rotation", or "pose.rotation" inside a group
  YAML::Node at;    // the key as written: diagnostics point at it
  YAML::Node value;
};

// The map's entries with each group's entries in its place, named "group.NAME".
std::vector<Entry> flat_entries(const StageSchema& schema, const YAML::Node& map) {
  std::vector<Entry> out;
  for (const auto& kv : map) {
    const std::string key = kv.first.Scalar();
    if (!kv.second.IsMap() || !is_group(schema, key)) {
      out.push_back({key, kv.first, kv.second});
      continue;
    }
    for (const auto& sub : kv.second) out.push_back({key + "." + sub.first.Scalar(), sub.first, sub.second});
  }
  return out;
}

}  // namespace

Params parse_params(const StageSchema& schema, const YAML::Node& map, const std::string& path,
                    Diagnostics& diag, const std::set<std::string>& skip) {
  Params out;
  const std::string owner =
      fmt::format("{} '{}'", schema.kind == StageKind::source ? "source" : "stage", schema.name);
  std::vector<std::string> names;
  for (const ParamSpec& p : schema.params) names.push_back(p.name);
  std::set<std::string> seen;
  if (map.IsMap()) {
    for (const Entry& kv : flat_entries(schema, map)) {
      const std::string& key = kv.key;
      if (skip.count(key)) continue;
      const std::string key_path = path.empty() ? key : path + "." + key;
      if (!seen.insert(key).second) {
        diag.error(kv.at, key_path, fmt::format("duplicate parameter '{}' for {}", key, owner));
        continue;
      }
      const ParamSpec* spec = schema.find(key);
      if (!spec) {
        const std::string hint = did_you_mean(key, names);
        diag.error(kv.at, key_path,
                   fmt::format("unknown parameter '{}' for {}{}", key, owner,
                               hint.empty() ? "" : fmt::format(" (did you mean '{}'?)", hint)));
        continue;
      }
      if (auto v = convert(*spec, kv.value, owner, key_path, diag)) out.set(key, std::move(*v));
    }
  }
  for (const ParamSpec& p : schema.params) {
    if (out.has(p.name) || seen.count(p.name)) continue;
    if (p.default_value) out.set(p.name, *p.default_value);
    else
      diag.error(map, path, fmt::format("missing required parameter '{}' for {}", p.name, owner));
  }
  return out;
}

bool apply_override(YAML::Node& doc, const std::string& assignment, Diagnostics& diag) {
  const auto eq = assignment.find('=');
  const std::string where = "--set " + assignment;
  if (eq == std::string::npos || eq == 0) {
    diag.error_in(where, 0, 0, "expected KEY.PATH=VALUE");
    return false;
  }
  std::vector<std::string> parts;
  std::stringstream ss(assignment.substr(0, eq));
  for (std::string p; std::getline(ss, p, '.');) {
    if (p.empty()) {
      diag.error_in(where, 0, 0, "empty component in key path");
      return false;
    }
    parts.push_back(p);
  }
  YAML::Node value;
  try {
    value = YAML::Load(assignment.substr(eq + 1));
  } catch (const YAML::Exception& e) {
    diag.error_in(where, 0, 0, fmt::format("value is not valid YAML: {}", e.msg));
    return false;
  }
  if (!doc.IsMap()) doc = YAML::Node(YAML::NodeType::Map);
  // Walk with fresh handles: yaml-cpp's Node assignment rebinds rather than copies.
  std::vector<YAML::Node> chain{doc};
  for (size_t i = 0; i + 1 < parts.size(); ++i) {
    YAML::Node next = chain.back()[parts[i]];
    if (!next.IsDefined() || next.IsNull()) {
      chain.back()[parts[i]] = YAML::Node(YAML::NodeType::Map);
      next = chain.back()[parts[i]];
    } else if (!next.IsMap()) {
      diag.error_in(where, 0, 0,
                    fmt::format("'{}' is {}, not a map: cannot set a key inside it",
                                fmt::join(parts.begin(), parts.begin() + static_cast<long>(i) + 1, "."),
                                yaml_kind(next)));
      return false;
    }
    chain.push_back(next);
  }
  chain.back()[parts.back()] = value;
  return true;
}

namespace {

struct EdgeRef {
  std::string name;
  int line, col;
};

// Splits "a -> b -> c" into names with the 1-based position of each in the file. Positions
// are exact for plain and quoted scalars on one line.
std::vector<EdgeRef> split_chain(const YAML::Node& scalar) {
  std::vector<EdgeRef> out;
  const std::string& text = scalar.Scalar();
  const YAML::Mark m = scalar.Mark();
  const int base_line = m.line >= 0 ? m.line + 1 : 0;
  int base_col = m.column >= 0 ? m.column + 1 : 0;
  if (scalar.Tag() == "!") base_col += 1;  // quoted: skip the opening quote
  size_t pos = 0;
  while (pos <= text.size()) {
    size_t arrow = text.find("->", pos);
    const size_t end = arrow == std::string::npos ? text.size() : arrow;
    size_t b = pos, e = end;
    while (b < e && std::isspace(static_cast<unsigned char>(text[b]))) ++b;
    while (e > b && std::isspace(static_cast<unsigned char>(text[e - 1]))) --e;
    out.push_back({text.substr(b, e - b), base_line, base_col + static_cast<int>(b)});
    if (arrow == std::string::npos) break;
    pos = arrow + 2;
  }
  return out;
}

const std::vector<std::string> kTopKeys = {"data", "nodes", "edges", "train",
                                           "plugins", "on_error", "output"};


// One edge "from -> to", at the position of `to` in its chain.
struct Edge {
  std::string from, to;
  int line = 0, col = 0;
};

// Reads `edges:` (a chain "a -> b -> c", or a list of them) into single edges, reporting
// malformed chains and unknown names. False when no topology can be built from them.
bool read_edges(const YAML::Node& doc, const YAML::Node& nodes, const std::map<std::string, YAML::Node>& node_keys,
                size_t declared, Diagnostics& diag, std::vector<Edge>* out, std::map<std::string, EdgeRef>* first_ref) {
  const YAML::Node edges = doc["edges"];
  std::vector<YAML::Node> chains;
  // With no usable node map, every edge would be "unknown": one error is enough.
  if (nodes && !nodes.IsMap()) return false;
  if (!edges) {
    if (declared > 1) diag.error(doc, "missing 'edges' (e.g. edges: [decode -> head])");
  } else if (edges.IsScalar()) {
    chains.push_back(edges);
  } else if (edges.IsSequence()) {
    for (const auto& c : edges) {
      if (c.IsScalar()) chains.push_back(c);
      else diag.error(c, "edges", fmt::format("an edge chain must be a string like 'a -> b', got {}", yaml_kind(c)));
    }
  } else {
    diag.error(edges, "edges", fmt::format("'edges' must be a list of chains like 'a -> b', got {}", yaml_kind(edges)));
    return false;
  }
  bool ok = true;
  std::vector<std::string> names;
  for (const auto& kv : node_keys) names.push_back(kv.first);
  for (const YAML::Node& c : chains) {
    const std::vector<EdgeRef> refs = split_chain(c);
    for (const EdgeRef& r : refs) {
      if (r.name.empty()) {
        diag.error(r.line, r.col, fmt::format("empty node name in edge chain '{}'", c.Scalar()));
        ok = false;
      } else if (!node_keys.count(r.name)) {
        const std::string hint = did_you_mean(r.name, names);
        diag.error(r.line, r.col, fmt::format("edge to unknown node '{}'{}", r.name,
                                              hint.empty() ? "" : fmt::format(" (did you mean '{}'?)", hint)));
        ok = false;
      } else {
        first_ref->emplace(r.name, r);
      }
    }
    for (size_t i = 0; i + 1 < refs.size(); ++i)
      if (node_keys.count(refs[i].name) && node_keys.count(refs[i + 1].name))
        out->push_back({refs[i].name, refs[i + 1].name, refs[i + 1].line, refs[i + 1].col});
  }
  return ok;
}

// Orders the declared nodes topologically (declaration order among nodes that are ready
// together, so a chain keeps its order) and fills each node's inputs. Reports an edge
// listed twice, cycles and nodes on no edge.
std::vector<NodeSpec> order_dag(const std::vector<NodeSpec>& declared, const std::vector<Edge>& edges,
                                const std::map<std::string, EdgeRef>& first_ref, Diagnostics& diag) {
  std::map<std::string, size_t> index;
  for (size_t i = 0; i < declared.size(); ++i) index[declared[i].name] = i;
  std::vector<std::vector<size_t>> ins(declared.size());
  std::set<std::pair<std::string, std::string>> seen;
  std::set<std::string> mentioned;
  std::vector<Edge> kept;
  bool ok = true;
  for (const Edge& e : edges) {
    mentioned.insert(e.from);
    mentioned.insert(e.to);
    if (e.from == e.to) {
      diag.error(e.line, e.col, fmt::format("cycle: node '{}' feeds itself", e.from));
      ok = false;
    } else if (!seen.insert({e.from, e.to}).second) {
      diag.error(e.line, e.col, fmt::format("edge '{} -> {}' is listed twice: '{}' would receive every sample twice",
                                            e.from, e.to, e.to));
      ok = false;
    } else {
      ins[index.at(e.to)].push_back(index.at(e.from));
      kept.push_back(e);
    }
  }
  for (const NodeSpec& n : declared)
    if (declared.size() > 1 && !mentioned.count(n.name) && !first_ref.count(n.name)) {
      diag.error(n.line, n.col, fmt::format("node '{}' is on no edge: it is not connected to the graph", n.name));
      ok = false;
    }
  // Kahn's algorithm, smallest declaration index first.
  std::vector<size_t> pending(declared.size());
  for (size_t i = 0; i < declared.size(); ++i) pending[i] = ins[i].size();
  std::vector<char> done(declared.size(), 0);
  std::vector<size_t> order;
  for (bool progress = true; progress;) {
    progress = false;
    for (size_t i = 0; i < declared.size(); ++i) {
      if (done[i] || pending[i] != 0) continue;
      done[i] = 1;
      order.push_back(i);
      for (size_t j = 0; j < declared.size(); ++j)
        for (size_t in : ins[j])
          if (in == i) --pending[j];
      progress = true;
      break;
    }
  }
  if (order.size() < declared.size()) {
    // Name one edge of the cycle: the first, by source name, between nodes left over.
    std::vector<Edge> sorted = kept;
    std::sort(sorted.begin(), sorted.end(), [](const Edge& a, const Edge& b) { return a.from < b.from; });
    for (const Edge& e : sorted)
      if (!done[index.at(e.from)] && !done[index.at(e.to)]) {
        diag.error(e.line, e.col, fmt::format("cycle: '{}' -> '{}' leads back to '{}'", e.from, e.to, e.from));
        break;
      }
    return {};
  }
  if (!ok) return {};
  std::vector<int> position(declared.size());
  for (size_t k = 0; k < order.size(); ++k) position[order[k]] = static_cast<int>(k);
  std::vector<NodeSpec> out;
  for (size_t i : order) {
    NodeSpec n = declared[i];
    n.inputs.clear();
    for (size_t in : ins[i]) n.inputs.push_back(position[in]);
    out.push_back(std::move(n));
  }
  return out;
}

// Kinds, arity and payloads along every edge; random stages before caches; sinks at the
// ends of branches and only there.
void check_topology(const GraphSpec& g, const std::vector<Edge>& edges,
                    const std::map<std::string, EdgeRef>& first_ref, Diagnostics& diag) {
  const auto edge_pos = [&](const std::string& from, const std::string& to) -> const Edge* {
    for (const Edge& e : edges)
      if (e.from == from && e.to == to) return &e;
    return nullptr;
  };
  const auto at_node = [&](const NodeSpec& n, const std::string& msg) {
    auto r = first_ref.find(n.name);
    if (r != first_ref.end()) diag.error(r->second.line, r->second.col, msg);
    else diag.error(n.line, n.col, msg);
  };
  // Sources declare what they deliver (encoded bytes, raw pixels as an image, features).
  // (No entry: a source from a plugin that was not loaded, GraphOptions.)
  const Payload from_source = !g.source_entry                                ? Payload::any
                              : g.source_entry->schema.produces != Payload::any ? g.source_entry->schema.produces
                                                                                : Payload::bytes;
  std::vector<Payload> out(g.nodes.size(), Payload::any);
  std::vector<const NodeSpec*> random_up(g.nodes.size(), nullptr);  // a random node upstream
  for (size_t i = 0; i < g.nodes.size(); ++i) {
    const NodeSpec& n = g.nodes[i];
    if (!n.entry) {  // a stage from a plugin that was not loaded: no contract to check
      for (int in : n.inputs)
        if (!random_up[i]) random_up[i] = random_up[static_cast<size_t>(in)];
      continue;
    }
    const StageSchema& s = n.entry->schema;
    const std::vector<int> consumers = g.consumers(static_cast<int>(i));
    if (s.kind == StageKind::sink && !consumers.empty())
      at_node(n, fmt::format("sink '{}' ({}) must end its branch, but it feeds '{}'", n.name, s.name,
                          g.nodes[static_cast<size_t>(consumers[0])].name));
    if (s.kind != StageKind::sink && consumers.empty())
      diag.error(n.line, n.col, fmt::format("the branch ends at '{}' ({}), which is not a sink: every branch needs a "
                                            "head or another sink at its end", n.name, n.stage));
    if (s.kind == StageKind::join && n.inputs.size() < 2)
      at_node(n, fmt::format("node '{}' ({}) joins several inputs but is fed by {}", n.name, s.name,
                             n.inputs.empty() ? std::string("the source only")
                                              : fmt::format("'{}' only", g.nodes[static_cast<size_t>(n.inputs[0])].name)));
    if (s.kind != StageKind::join && n.inputs.size() > 1) {
      const NodeSpec& second = g.nodes[static_cast<size_t>(n.inputs[1])];
      const Edge* e = edge_pos(second.name, n.name);
      diag.error(e ? e->line : n.line, e ? e->col : n.col,
                 fmt::format("node '{}' ({}) takes one input but is fed by '{}' and '{}'; join them first (e.g. a "
                             "'concat' node)", n.name, s.name, g.nodes[static_cast<size_t>(n.inputs[0])].name, second.name));
    }
    std::vector<std::pair<Payload, std::string>> ins;
    if (n.inputs.empty()) ins.push_back({from_source, "the source"});
    for (int in : n.inputs) {
      ins.push_back({out[static_cast<size_t>(in)], fmt::format("'{}'", g.nodes[static_cast<size_t>(in)].name)});
      if (!random_up[i]) random_up[i] = random_up[static_cast<size_t>(in)];
    }
    for (const auto& [have, from] : ins) {
      const bool fits = s.consumes == Payload::any || have == Payload::any || s.consumes == have ||
                        // a decoder takes encoded bytes or raw pixels alike
                        (s.consumes == Payload::bytes && have == Payload::image);
      if (fits) continue;
      const std::string src = from == "the source" ? "" : from.substr(1, from.size() - 2);
      const Edge* e = src.empty() ? nullptr : edge_pos(src, n.name);
      const std::string msg = fmt::format("node '{}' ({}) consumes {} but receives {} from {}", n.name, s.name,
                                          payload_name(s.consumes), payload_name(have), from);
      if (e) diag.error(e->line, e->col, msg);
      else at_node(n, msg);
    }
    if (s.kind == StageKind::cache && random_up[i] && n.params.integer("views") == 0)
      at_node(n, fmt::format("cache '{}' keeps no views but random stage '{}' ({}) runs upstream: it would freeze "
                             "one augmented view forever; set 'views: K' on the cache or move it before '{}'",
                             n.name, random_up[i]->name, random_up[i]->stage, random_up[i]->name));
    if (s.random) random_up[i] = &n;
    out[i] = s.produces != Payload::any ? s.produces : ins.front().first;
  }
}

}  // namespace

std::vector<GraphPlugin> graph_plugins(const std::string& path) {
  std::vector<GraphPlugin> out;
  try {
    YAML::Node doc = YAML::LoadFile(path);
    const std::string dir = fs::path(path).parent_path().string();
    if (doc.IsMap() && doc["plugins"] && doc["plugins"].IsSequence())
      for (const auto& p : doc["plugins"])
        if (p.IsScalar())
          out.push_back({p.Scalar(), resolve_path(p.Scalar(), dir.empty() ? "." : dir), p.Mark().line + 1, p.Mark().column + 1});
  } catch (const YAML::Exception&) {
    // The full parse reports syntax errors with positions.
  }
  return out;
}

namespace {

// Keys at the top level of a graph file that pipe does not know.
void check_top_keys(const YAML::Node& doc, Diagnostics& diag) {
  for (const auto& kv : doc) {
    const std::string key = kv.first.Scalar();
    if (std::find(kTopKeys.begin(), kTopKeys.end(), key) == kTopKeys.end()) {
      const std::string hint = did_you_mean(key, kTopKeys);
      diag.error(kv.first, key,
                 fmt::format("unknown top-level key '{}'{}", key,
                             hint.empty() ? fmt::format("; expected one of {}", quoted_list(kTopKeys))
                                          : fmt::format(" (did you mean '{}'?)", hint)));
    }
  }

}

// `data:` -> the source and its params.
void parse_data(const YAML::Node& doc, const Registry& registry, bool lenient, GraphSpec& g, Diagnostics& diag) {
  const YAML::Node data = doc["data"];
  if (!data) diag.error(doc, "missing 'data' (the source of samples)");
  else if (!data.IsMap()) diag.error(data, "data", fmt::format("'data' must be a map, got {}", yaml_kind(data)));
  else if (!data["source"]) diag.error(data, "data", "'data' has no 'source'");
  else {
    const YAML::Node src = data["source"];
    g.source = src.IsScalar() ? src.Scalar() : "";
    const StageEntry* e = registry.find(g.source);
    if (!e && lenient) {
      diag.warning(src, fmt::format("source '{}' is unknown but may come from the graph's plugins, which were not "
                                    "loaded: its parameters are not checked", g.source));
    } else if (!e || e->schema.kind != StageKind::source) {
      std::vector<std::string> sources;
      for (const StageEntry* s : registry.all())
        if (s->schema.kind == StageKind::source) sources.push_back(s->schema.name);
      const std::string hint = did_you_mean(g.source, sources);
      diag.error(src, "data.source",
                 fmt::format("unknown source '{}'{}", g.source,
                             hint.empty() ? fmt::format("; available: {}", quoted_list(sources))
                                          : fmt::format(" (did you mean '{}'?)", hint)));
    } else {
      g.source_entry = e;
      g.source_params = parse_params(e->schema, data, "data", diag, {"source"});
      resolve_path_params(e->schema, g.source_params, g.dir);
    }
  }

}

// A name as a diagnostic shows it: control characters escaped, cut after 60 bytes, so that
// the diagnostic stays one readable line.
std::string shown(const std::string& name) {
  std::string out;
  for (unsigned char c : name.substr(0, 60))
    out += c < 0x20 || c == 0x7f ? fmt::format("\\x{:02x}", c) : std::string(1, static_cast<char>(c));
  return name.size() > 60 ? out + "..." : out;
}

// Node names become file names in the run directory (checkpoint/<node>/, <node>.pt, a
// preview's <node>-epoch<E>.png): refuse those that are not plain names. (The path layer,
// safe_file_name(), repairs names too: a second line of defence for callers that skip this.)
void check_node_name(const YAML::Node& key, const std::string& path, Diagnostics& diag) {
  const std::string& name = key.Scalar();
  const std::string why = file_name_problem(name, kMaxNodeName);
  if (!why.empty())
    diag.error(key, path, fmt::format("node name '{}' {}: node names become file names in the run directory, so "
                                      "they must be plain names", shown(name), why));
}

// `nodes:` -> one NodeSpec per entry, in file order; `node_keys` maps names to their keys.
std::vector<NodeSpec> parse_nodes(const YAML::Node& doc, const Registry& registry, bool lenient,
                                  std::map<std::string, YAML::Node>& node_keys, Diagnostics& diag) {
  const YAML::Node nodes = doc["nodes"];
  std::vector<NodeSpec> declared;
  if (!nodes) diag.error(doc, "missing 'nodes'");
  else if (!nodes.IsMap()) diag.error(nodes, "nodes", fmt::format("'nodes' must be a map of name: {{stage: ...}}, got {}", yaml_kind(nodes)));
  else {
    for (const auto& kv : nodes) {
      NodeSpec n;
      n.name = kv.first.Scalar();
      const std::string path = "nodes." + n.name;
      const YAML::Mark m = kv.first.Mark();
      n.line = m.line + 1;
      n.col = m.column + 1;
      if (node_keys.count(n.name)) {
        const YAML::Mark first = node_keys[n.name].Mark();
        diag.error(kv.first, path, fmt::format("duplicate node '{}' (first defined at line {})",
                                               n.name, first.line + 1));
        continue;
      }
      node_keys[n.name] = kv.first;
      check_node_name(kv.first, path, diag);
      const YAML::Node body = kv.second;
      if (!body.IsMap()) {
        diag.error(body.IsNull() ? kv.first : body, path,
                   fmt::format("node '{}' must be a map with a 'stage', got {}", n.name, yaml_kind(body)));
        declared.push_back(n);
        continue;
      }
      if (!body["stage"]) {
        diag.error(kv.first, path, fmt::format("node '{}' has no 'stage'", n.name));
        declared.push_back(n);
        continue;
      }
      const YAML::Node st = body["stage"];
      n.stage = st.IsScalar() ? st.Scalar() : "";
      const StageEntry* e = registry.find(n.stage);
      if (!e && lenient) {
        diag.warning(st, fmt::format("stage '{}' in node '{}' is unknown but may come from the graph's plugins, which "
                                     "were not loaded: its parameters and connections are not checked", n.stage, n.name));
      } else if (!e || e->schema.kind == StageKind::source) {
        std::vector<std::string> stages;
        for (const StageEntry* s : registry.all())
          if (s->schema.kind != StageKind::source) stages.push_back(s->schema.name);
        const std::string hint = did_you_mean(n.stage, stages);
        diag.error(st, path + ".stage",
                   fmt::format("unknown stage '{}' in node '{}'{}", n.stage, n.name,
                               hint.empty() ? fmt::format("; available: {}", quoted_list(stages))
                                            : fmt::format(" (did you mean '{}'?)", hint)));
      } else {
        n.entry = e;
        n.params = parse_params(e->schema, body, path, diag);
      }
      declared.push_back(std::move(n));
    }
  }

  return declared;
}

// `train:` -> epochs, batch, seed, in_flight (checked like stage params).
// Parameters of a `train:` block (or one of its sub-blocks) against `schema`, with messages
// that name the block ("in 'train.early_stopping'") rather than a stage.
Params parse_block(const StageSchema& schema, const YAML::Node& node, const std::string& path,
                   const std::vector<std::string>& overrides, const std::set<std::string>& skip, Diagnostics& diag,
                   bool& ok) {
  Diagnostics local(diag.file());
  local.set_overrides(overrides);
  Params p = parse_params(schema, node, path, local, skip);
  const std::string owner = fmt::format("stage '{}'", schema.name);
  for (const Diagnostic& d : local.items()) {
    std::string msg = d.message;
    for (const char* join : {" for ", " of "})
      if (const auto pos = msg.find(join + owner); pos != std::string::npos)
        msg.replace(pos, std::strlen(join) + owner.size(), fmt::format(" in '{}'", path));
    diag.error_in(d.file, d.line, d.col, msg);
  }
  ok = local.ok();
  return p;
}

StageSchema block_schema(const std::string& path, std::vector<ParamSpec> params) {
  StageSchema s;
  s.name = path;
  s.params = std::move(params);
  return s;
}

ParamSpec monitor_param(const char* def) {
  return {"monitor", ParamType::string, "", ParamValue{std::string(def)}, std::nullopt, std::nullopt, {"val_loss", "val_acc"}, -1};
}
ParamSpec mode_param() {
  return {"mode", ParamType::string, "", ParamValue{std::string("auto")}, std::nullopt, std::nullopt, {"auto", "min", "max"}, -1};
}

// monitor + mode (auto: accuracy up, loss down), as Keras reads them.
MonitorRule monitor_rule(const Params& p) {
  MonitorRule r;
  r.metric = p.string("monitor") == "val_acc" ? Monitor::val_acc : Monitor::val_loss;
  const std::string& mode = p.string("mode");
  r.maximize = mode == "auto" ? r.metric == Monitor::val_acc : mode == "max";
  return r;
}

// A train sub-block that must be a map: returns it, or a null node after a diagnostic.
YAML::Node sub_block(const YAML::Node& train, const char* key, Diagnostics& diag) {
  const YAML::Node b = train[key];
  if (b && !b.IsMap()) {
    diag.error(b, fmt::format("train.{}", key), fmt::format("'train.{}' must be a map, got {}", key, yaml_kind(b)));
    return YAML::Node();
  }
  return b;
}

void parse_early_stopping(const YAML::Node& b, const std::vector<std::string>& overrides, TrainSpec& t, Diagnostics& diag) {
  bool ok = false;
  const Params p = parse_block(block_schema("train.early_stopping",
                                            {monitor_param("val_loss"), mode_param(),
                                             {"patience", ParamType::integer, "", ParamValue{int64_t{5}}, 1, 100000, {}, -1},
                                             {"min_delta", ParamType::number, "", ParamValue{0.0}, 0, std::nullopt, {}, -1}}),
                               b, "train.early_stopping", overrides, {}, diag, ok);
  if (!ok) return;
  t.early_stopping = {true, monitor_rule(p), static_cast<int>(p.integer("patience")), p.number("min_delta")};
}

void parse_checkpoint(const YAML::Node& b, const std::vector<std::string>& overrides, TrainSpec& t, Diagnostics& diag) {
  bool ok = false;
  const Params p = parse_block(block_schema("train.checkpoint", {monitor_param("val_acc"), mode_param()}), b,
                               "train.checkpoint", overrides, {}, diag, ok);
  if (ok) t.best = monitor_rule(p);
}

void parse_lr_schedule(const YAML::Node& b, const std::vector<std::string>& overrides, TrainSpec& t, Diagnostics& diag) {
  bool ok = false;
  const Params p = parse_block(
      block_schema("train.lr_schedule",
                   {{"kind", ParamType::string, "", std::nullopt, std::nullopt, std::nullopt, {"step", "cosine", "plateau"}, -1},
                    {"step_size", ParamType::integer, "", ParamValue{int64_t{10}}, 1, 100000, {}, -1},
                    {"gamma", ParamType::number, "", ParamValue{0.1}, 0, 1, {}, -1},
                    {"min_lr", ParamType::number, "", ParamValue{0.0}, 0, std::nullopt, {}, -1},
                    {"patience", ParamType::integer, "", ParamValue{int64_t{3}}, 1, 100000, {}, -1},
                    {"factor", ParamType::number, "", ParamValue{0.1}, 0, 1, {}, -1},
                    monitor_param("val_loss"), mode_param()}),
      b, "train.lr_schedule", overrides, {}, diag, ok);
  if (!ok) return;
  LrSchedule& s = t.lr_schedule;
  const std::string& kind = p.string("kind");
  s.kind = kind == "step" ? LrSchedule::Kind::step : kind == "cosine" ? LrSchedule::Kind::cosine : LrSchedule::Kind::plateau;
  s.step_size = static_cast<int>(p.integer("step_size"));
  s.gamma = p.number("gamma");
  s.min_lr = p.number("min_lr");
  s.patience = static_cast<int>(p.integer("patience"));
  s.factor = p.number("factor");
  s.rule = monitor_rule(p);
}

void parse_train(const YAML::Node& doc, const std::vector<std::string>& overrides, GraphSpec& g, Diagnostics& diag) {
  const YAML::Node train = doc["train"];
  if (!train) return;
  if (!train.IsMap()) {
    diag.error(train, "train", fmt::format("'train' must be a map, got {}", yaml_kind(train)));
    return;
  }
  const StageSchema ts = block_schema(
      "train", {{"epochs", ParamType::integer, "", ParamValue{int64_t{10}}, 1, 100000, {}, -1},
                {"batch", ParamType::integer, "", ParamValue{int64_t{20}}, 1, 1 << 20, {}, -1},
                {"seed", ParamType::integer, "", ParamValue{int64_t{1}}, 0, std::nullopt, {}, -1},
                {"in_flight", ParamType::integer, "", ParamValue{int64_t{256}}, 1, 1 << 24, {}, -1}});
  bool ok = false;
  const Params p = parse_block(ts, train, "train", overrides, {"early_stopping", "checkpoint", "lr_schedule"}, diag, ok);
  if (ok) {
    g.train.epochs = static_cast<int>(p.integer("epochs"));
    g.train.batch = static_cast<int>(p.integer("batch"));
    g.train.seed = static_cast<uint64_t>(p.integer("seed"));
    g.train.in_flight = static_cast<int>(p.integer("in_flight"));
  }
  if (const YAML::Node b = sub_block(train, "early_stopping", diag)) parse_early_stopping(b, overrides, g.train, diag);
  if (const YAML::Node b = sub_block(train, "checkpoint", diag)) parse_checkpoint(b, overrides, g.train, diag);
  if (const YAML::Node b = sub_block(train, "lr_schedule", diag)) parse_lr_schedule(b, overrides, g.train, diag);
}

// `on_error:`, `plugins:`, `output:`.
void parse_run_options(const YAML::Node& doc, GraphSpec& g, Diagnostics& diag) {
  if (const YAML::Node oe = doc["on_error"]) {
    if (oe.IsScalar() && oe.Scalar() == "fail") g.on_error = OnError::fail;
    else if (oe.IsScalar() && oe.Scalar() == "skip") g.on_error = OnError::skip;
    else diag.error(oe, "on_error", fmt::format("'on_error' must be 'fail' or 'skip', got {}",
                                                oe.IsScalar() ? "'" + oe.Scalar() + "'" : yaml_kind(oe)));
  }
  if (const YAML::Node pl = doc["plugins"]) {
    if (!pl.IsSequence()) diag.error(pl, "plugins", fmt::format("'plugins' must be a list of paths, got {}", yaml_kind(pl)));
    else
      for (const auto& p : pl) {
        if (!p.IsScalar()) { diag.error(p, "plugins", "a plugin must be a path string"); continue; }
        const std::string path = resolve_path(p.Scalar(), g.dir);
        // The error_code overload: a name the OS refuses (ENAMETOOLONG, EACCES above it) is a
        // diagnostic, not a filesystem_error escaping parse_graph (found by fuzz_graph).
        std::error_code ec;
        if (!fs::exists(path, ec)) {
          if (ec && ec != std::errc::no_such_file_or_directory)
            diag.error(p, "plugins", fmt::format("plugin '{}' cannot be accessed ({}): {}", p.Scalar(), path, ec.message()));
          else
            diag.error(p, "plugins", fmt::format("plugin '{}' not found (looked for {})", p.Scalar(), path));
        }
        g.plugins.push_back(path);
      }
  }
  if (const YAML::Node out = doc["output"]) {
    if (!out.IsMap()) diag.error(out, "output", fmt::format("'output' must be a map (e.g. {{dir: runs/x}}), got {}", yaml_kind(out)));
    else
      for (const auto& kv : out) {
        const std::string key = kv.first.Scalar();
        if (key == "dir" && kv.second.IsScalar()) g.output_dir = kv.second.Scalar();
        else diag.error(kv.first, "output." + key, fmt::format("unknown key '{}' in 'output' (expected 'dir')", key));
      }
  }

}

// The resolved document: overrides applied and every default spelled out.
void put_rule(YAML::Node& m, const MonitorRule& r) {
  m["monitor"] = r.metric == Monitor::val_acc ? "val_acc" : "val_loss";
  m["mode"] = r.maximize ? "max" : "min";
}

// The train sub-blocks a graph sets (defaults are left out: most graphs set none).
void put_controls(YAML::Node& t, const TrainSpec& train) {
  if (train.best.metric != Monitor::val_acc || !train.best.maximize) {
    YAML::Node c(YAML::NodeType::Map);
    put_rule(c, train.best);
    t["checkpoint"] = c;
  }
  if (const EarlyStopping& e = train.early_stopping; e.enabled) {
    YAML::Node c(YAML::NodeType::Map);
    put_rule(c, e.rule);
    c["patience"] = e.patience;
    c["min_delta"] = e.min_delta;
    t["early_stopping"] = c;
  }
  if (const LrSchedule& s = train.lr_schedule; s.kind != LrSchedule::Kind::none) {
    YAML::Node c(YAML::NodeType::Map);
    const char* kinds[] = {"none", "step", "cosine", "plateau"};
    c["kind"] = kinds[static_cast<int>(s.kind)];
    if (s.kind == LrSchedule::Kind::step) {
      c["step_size"] = s.step_size;
      c["gamma"] = s.gamma;
    }
    if (s.kind != LrSchedule::Kind::step) c["min_lr"] = s.min_lr;
    if (s.kind == LrSchedule::Kind::plateau) {
      c["patience"] = s.patience;
      c["factor"] = s.factor;
      put_rule(c, s.rule);
    }
    t["lr_schedule"] = c;
  }
}

YAML::Node resolved_document(const GraphSpec& g) {
  YAML::Node r(YAML::NodeType::Map);
  YAML::Node d(YAML::NodeType::Map);
  d["source"] = g.source;
  const auto put_params = [](YAML::Node& m, const Params& p) {
    for (const auto& [name, v] : p.values()) {
      const size_t dot = name.find('.');  // a group's parameter: pose.rotation -> pose: {rotation}
      YAML::Node at = dot == std::string::npos ? m : m[name.substr(0, dot)];
      const std::string k = dot == std::string::npos ? name : name.substr(dot + 1);
      if (auto* str = std::get_if<std::string>(&v)) at[k] = *str;  // "" stays a string
      else at[k] = YAML::Load(param_value_string(v));
    }
  };
  put_params(d, g.source_params);
  r["data"] = d;
  YAML::Node ns(YAML::NodeType::Map);
  std::vector<std::string> names;
  for (const NodeSpec& n : g.nodes) {
    YAML::Node nm(YAML::NodeType::Map);
    nm["stage"] = n.stage;
    put_params(nm, n.params);
    ns[n.name] = nm;
    names.push_back(n.name);
  }
  r["nodes"] = ns;
  YAML::Node es(YAML::NodeType::Sequence);
  if (g.is_chain()) es.push_back(fmt::format("{}", fmt::join(names, " -> ")));
  else
    for (const NodeSpec& n : g.nodes)
      for (int in : n.inputs) es.push_back(fmt::format("{} -> {}", g.nodes[static_cast<size_t>(in)].name, n.name));
  r["edges"] = es;
  YAML::Node t(YAML::NodeType::Map);
  t["epochs"] = g.train.epochs;
  t["batch"] = g.train.batch;
  t["seed"] = g.train.seed;
  t["in_flight"] = g.train.in_flight;
  put_controls(t, g.train);
  r["train"] = t;
  r["on_error"] = g.on_error == OnError::skip ? "skip" : "fail";
  if (!g.plugins.empty()) r["plugins"] = g.plugins;
  if (!g.output_dir.empty()) r["output"]["dir"] = g.output_dir;
  return r;
}

}  // namespace

GraphSpec parse_graph(const std::string& text, const std::string& file,
                      const std::vector<std::string>& overrides, const Registry& registry,
                      Diagnostics& diag, const GraphOptions& options) {
  GraphSpec g;
  g.file = file;
  g.name = fs::path(file).stem().string();
  // Absolute, so that paths resolved against it stay right wherever the run's graph.yaml
  // is read from.
  const fs::path parent = fs::path(file).parent_path();
  g.dir = (parent.empty() ? fs::current_path() : fs::absolute(parent)).lexically_normal().string();
  if (g.dir.size() > 1 && g.dir.back() == '/') g.dir.pop_back();
  diag.set_overrides(overrides);

  YAML::Node doc;
  try {
    doc = YAML::Load(text);
  } catch (const YAML::ParserException& e) {
    diag.error(e.mark.line + 1, e.mark.column + 1, fmt::format("YAML syntax: {}", e.msg));
    return g;
  }
  if (!doc.IsDefined() || doc.IsNull()) {
    if (overrides.empty()) {
      diag.error(1, 1, "empty graph file: expected a map with 'data', 'nodes' and 'edges'");
      return g;
    }
  } else if (!doc.IsMap()) {
    diag.error(doc, fmt::format("a graph file must be a map with 'data', 'nodes' and 'edges', "
                                "got {}", yaml_kind(doc)));
    return g;
  }
  for (const std::string& o : overrides)
    if (!apply_override(doc, o, diag)) return g;

  check_top_keys(doc, diag);
  const YAML::Node plugins = doc["plugins"];
  const bool lenient = !options.plugins_loaded && plugins && plugins.IsSequence() && plugins.size() > 0;
  parse_data(doc, registry, lenient, g, diag);
  std::map<std::string, YAML::Node> node_keys;
  const YAML::Node nodes = doc["nodes"];
  std::vector<NodeSpec> declared = parse_nodes(doc, registry, lenient, node_keys, diag);
  for (NodeSpec& n : declared)
    if (n.entry) resolve_path_params(n.entry->schema, n.params, g.dir);
  std::map<std::string, EdgeRef> first_ref;
  std::vector<Edge> edges;
  if (read_edges(doc, nodes, node_keys, declared.size(), diag, &edges, &first_ref) && !declared.empty()) {
    g.nodes = order_dag(declared, edges, first_ref, diag);
    if (diag.ok()) check_topology(g, edges, first_ref, diag);
  }
  parse_train(doc, overrides, g, diag);
  parse_run_options(doc, g, diag);
  if (options.check_files) check_input_files(doc, g, declared, diag);
  if (options.check_data && diag.ok() && g.source_entry) check_source(doc, g, diag);
  if (diag.ok()) g.resolved = resolved_document(g);
  return g;
}

GraphSpec load_graph(const std::string& path, const std::vector<std::string>& overrides,
                     const Registry& registry, Diagnostics& diag, const GraphOptions& options) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    diag.error_in(path, 0, 0, "cannot open graph file");
    GraphSpec g;
    g.file = path;
    return g;
  }
  std::stringstream ss;
  ss << in.rdbuf();
  return parse_graph(ss.str(), path, overrides, registry, diag, options);
}

}  // namespace pipeline
