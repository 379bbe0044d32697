// A corpus of malformed graphs (tests/data/bad_graphs/*.yaml), each with its exact expected
// diagnostics (*.expected: one per line, FILE standing for the graph's path). A first line
// "# set: KEY=VALUE" in a graph is passed as a --set override.
#include <catch2/catch.hpp>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "spec.h"

namespace fs = std::filesystem;
using namespace pipeline;

TEST_CASE("every malformed graph in the corpus gets exactly its expected diagnostics") {
  const fs::path dir = fs::path(PIPE_SOURCE_DIR) / "tests" / "data" / "bad_graphs";
  std::vector<fs::path> graphs;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.path().extension() == ".yaml") graphs.push_back(e.path());
  std::sort(graphs.begin(), graphs.end());
  REQUIRE(graphs.size() >= 20);
  for (const fs::path& g : graphs) {
    INFO(g.filename().string());
    std::ifstream in(g);
    std::string first;
    std::getline(in, first);
    std::vector<std::string> sets;
    if (first.rfind("# set: ", 0) == 0) sets.push_back(first.substr(7));
    Diagnostics diag(g.string());
    load_graph(g.string(), sets, Registry::global(), diag);
    std::string got;
    for (const Diagnostic& d : diag.items()) {
      std::string line = d.str();
      if (line.rfind(g.string() + ":", 0) == 0) line = "FILE:" + line.substr(g.string().size() + 1);
      // Resolved paths name the graph's directory, which depends on where the tree is.
      for (size_t at; (at = line.find(dir.string())) != std::string::npos;) line.replace(at, dir.string().size(), "DIR");
      got += line + "\n";
    }
    std::ifstream ex(fs::path(g).replace_extension(".expected"));
    REQUIRE(ex);
    std::stringstream want;
    want << ex.rdbuf();
    CHECK(got == want.str());
    CHECK(!diag.ok());  // every file in the corpus is malformed
  }
}
