// docs/stages.md is generated from the registry; this fails when the code changed and the
// reference was not regenerated (build/pipe stages --markdown > docs/stages.md). The code
// docs/plugins.md teaches is the example plugin's own.
#include <catch2/catch.hpp>

#include <fstream>
#include <sstream>

#include "stage_docs.h"

TEST_CASE("docs/stages.md matches the registry") {
  std::ifstream in(std::string(PIPE_SOURCE_DIR) + "/docs/stages.md");
  REQUIRE(in);
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string generated = pipeline::stages_markdown(pipeline::Registry::global());
  INFO("regenerate with: build/pipe stages --markdown > docs/stages.md");
  CHECK(ss.str() == generated);
  // Every built-in stage is documented, with its parameters.
  for (const pipeline::StageEntry* e : pipeline::Registry::global().all()) {
    CHECK(generated.find("## `" + e->schema.name + "`") != std::string::npos);
    for (const auto& p : e->schema.params) CHECK(generated.find("| `" + p.name + "` |") != std::string::npos);
  }
}

namespace {
std::string read_file(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}
}  // namespace

TEST_CASE("docs/plugins.md shows examples/custom_stage/cutout.cpp as it is") {
  const std::string doc = read_file(std::string(PIPE_SOURCE_DIR) + "/docs/plugins.md");
  const std::string code = read_file(std::string(PIPE_SOURCE_DIR) + "/examples/custom_stage/cutout.cpp");
  REQUIRE(!code.empty());
  // The first C++ block of "The contract"; lines marked "// ..." stand for elided code.
  const size_t contract = doc.find("## The contract");
  REQUIRE(contract != std::string::npos);
  const size_t begin = doc.find("```cpp\n", contract);
  const size_t end = doc.find("```\n", begin + 7);
  REQUIRE(end != std::string::npos);
  std::istringstream block(doc.substr(begin + 7, end - begin - 7));
  int lines = 0;
  for (std::string line; std::getline(block, line);) {
    if (line.find("// ...") != std::string::npos) continue;
    const size_t first = line.find_first_not_of(' ');
    if (first == std::string::npos) continue;
    std::string text = line.substr(first);
    // A comment after code may be the doc's own (PIPE_PLUGIN's arguments).
    const size_t comment = text.find("  //");
    if (comment != std::string::npos && text.rfind("//", 0) != 0) text.resize(text.find_last_not_of(' ', comment) + 1);
    INFO(text);
    CHECK(code.find(text) != std::string::npos);
    ++lines;
  }
  CHECK(lines > 20);
}
