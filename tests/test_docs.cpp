// docs/stages.md is generated from the registry; this fails when the code changed and the
// reference was not regenerated (build/pipe stages --markdown > docs/stages.md).
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
