#include "testing.h"

#include <fmt/format.h>

#include "spec.h"

namespace pipeline::testing {

std::unique_ptr<Stage> make_stage(const std::string& yaml, const std::string& node, uint64_t seed,
                                  const std::string& graph_dir) {
  Diagnostics diag("<test>");
  const YAML::Node n = YAML::Load(yaml);
  if (!n.IsMap() || !n["stage"]) throw std::runtime_error("test stage YAML needs a 'stage': " + yaml);
  const std::string stage = n["stage"].Scalar();
  const StageEntry* e = Registry::global().find(stage);
  if (!e || !e->make) throw std::runtime_error("no stage named '" + stage + "'");
  Params p = parse_params(e->schema, n, "nodes." + node, diag);
  if (!diag.ok()) throw std::runtime_error(diag.str());
  StageContext ctx;
  ctx.node = node;
  ctx.graph_dir = graph_dir;
  ctx.seed = seed;
  return e->make(p, ctx);
}

std::unique_ptr<Source> make_source(const std::string& yaml, const std::string& graph_dir) {
  Diagnostics diag("<test>");
  const YAML::Node n = YAML::Load(yaml);
  if (!n.IsMap() || !n["source"]) throw std::runtime_error("test source YAML needs a 'source': " + yaml);
  const std::string name = n["source"].Scalar();
  const StageEntry* e = Registry::global().find(name);
  if (!e || !e->make_source) throw std::runtime_error("no source named '" + name + "'");
  Params p = parse_params(e->schema, n, "data", diag, {"source"});
  if (!diag.ok()) throw std::runtime_error(diag.str());
  SourceContext ctx;
  ctx.graph_dir = graph_dir;
  return e->make_source(p, ctx);
}

}  // namespace pipeline::testing
