#include "targets.h"

#include <stdexcept>
#include <string>
#include <vector>

#include <yaml-cpp/yaml.h>

#include "pipe/rng.h"
#include "spec.h"

namespace pipeline::fuzz {

GraphOutcome graph_one(const Registry& registry, const uint8_t* data, size_t size, const std::string& file) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  std::vector<std::string> sets;
  if (text.rfind("# set: ", 0) == 0) sets.push_back(text.substr(7, text.find('\n') - 7));
  Diagnostics diag(file);
  GraphSpec g = parse_graph(text, file, sets, registry, diag);
  GraphOutcome out;
  // Render the diagnostics too: they format line/column and quote values.
  out.diagnostics = diag.str();
  out.ok = diag.ok();
  if (out.ok && g.nodes.empty() && g.source.empty())
    throw std::logic_error("parse_graph accepted a graph with no source and no nodes");
  if (out.ok) out.resolved = YAML::Dump(g.resolved);
  return out;
}

DecodeOutcome decode_one(const Registry& registry, const uint8_t* data, size_t size) {
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
  DecodeOutcome out;
  try {
    map->process(s, rng);
  } catch (const SampleError& e) {
    out.refusal = e.what();  // refused with a reason: what a bad file should get
    if (out.refusal.empty()) throw std::logic_error("decode refused a file without a reason");
    return out;
  }
  if (s.image.rows != 32 || s.image.cols != 32 || s.image.type() != CV_8UC3 || !s.image.isContinuous())
    throw std::logic_error("decode produced an image that is not 32x32 continuous RGB");
  if (s.bytes) throw std::logic_error("decode kept the encoded bytes");
  out.pixels.assign(s.image.data, s.image.data + s.image.total() * s.image.elemSize());
  return out;
}

}  // namespace pipeline::fuzz
