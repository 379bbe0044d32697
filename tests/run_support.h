// Helpers for tests that parse and run whole graphs (test stages or the shipped ones).
#pragma once

#include <catch2/catch.hpp>

#include <string>
#include <vector>

#include <fmt/format.h>

#include "runner.h"
#include "spec.h"
#include "support.h"

namespace pipeline::test {

// A graph from YAML text with the test stages registered; the test fails on any diagnostic.
inline GraphSpec graph(const std::string& yaml, std::vector<std::string> sets = {}) {
  register_test_stages();
  Diagnostics diag("<test>");
  GraphSpec g = parse_graph(yaml, "test.yaml", sets, Registry::global(), diag);
  if (!diag.ok()) FAIL(diag.str());
  return g;
}

// Every sink's results and the skipped samples, as text: equal strings, equal results.
inline std::string sink_results(const RunResult& r) {
  std::string out;
  for (const SinkResult& s : r.sinks) {
    out += s.name + ":";
    for (const EpochMetrics& e : s.epochs)
      out += fmt::format(" {} {} {} {};", e.train.loss, e.train.accuracy, e.validation.loss, e.validation.accuracy);
    out += fmt::format(" test {} {} best {}@{}\n", s.test.loss, s.test.accuracy, s.best_val_acc, s.best_epoch);
  }
  for (const SkippedSample& k : r.skipped) out += fmt::format("skipped {} {} {}\n", k.sample, k.node, k.reason);
  return out;
}

}  // namespace pipeline::test
