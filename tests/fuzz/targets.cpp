#include "targets.h"

#include <stdexcept>
#include <string>
#include <vector>

#include <yaml-cpp/yaml.h>

#include "pipe/rng.h"
#include "spec.h"

namespace pipeline::fuzz {

void graph_one(const Registry& registry, const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  std::vector<std::string> sets;
  if (text.rfind("# set: ", 0) == 0) sets.push_back(text.substr(7, text.find('\n') - 7));
  Diagnostics diag("fuzz.yaml");
  GraphSpec g = parse_graph(text, "fuzz.yaml", sets, registry, diag);
  // Render the diagnostics too: they format line/column and quote values.
  const std::string report = diag.str();
  if (diag.ok() && g.nodes.empty() && g.source.empty())
    throw std::logic_error("parse_graph accepted a graph with no source and no nodes");
  (void)report;
}

void decode_one(const Registry& registry, const uint8_t* data, size_t size) {
  const StageEntry* e = registry.find("decode");
  if (!e) throw std::logic_error("no decode stage in the registry");
  static const Params params = [&] {
    Diagnostics diag("fuzz");
    YAML::Node map = YAML::Load("{max_pixels: " + std::to_string(kMaxPixels) + "}");
    Params p = parse_params(e->schema, map, "nodes.decode", diag);
    if (!diag.ok()) throw std::logic_error(diag.str());
    return p;
  }();
  StageContext ctx;
  ctx.node = "decode";
  std::unique_ptr<Stage> stage = e->make(params, ctx);
  auto* map = dynamic_cast<MapStage*>(stage.get());
  if (!map) throw std::logic_error("decode is not a map stage");
  Sample s;
  s.id = 0;
  s.bytes = std::make_shared<const std::vector<uint8_t>>(data, data + size);
  Rng rng(0, 0, 0, 0, 0);
  try {
    map->process(s, rng);
  } catch (const SampleError&) {
    return;  // refused with a reason: what a bad file should get
  }
  if (s.image.rows != 32 || s.image.cols != 32 || s.image.type() != CV_8UC3 || !s.image.isContinuous())
    throw std::logic_error("decode produced an image that is not 32x32 continuous RGB");
  if (s.bytes) throw std::logic_error("decode kept the encoded bytes");
}

}  // namespace pipeline::fuzz
