// Stage reference generated from the registry: `pipe stages` and docs/stages.md, so the
// docs cannot drift from the declarations.
#pragma once

#include <string>

#include "pipe/registry.h"

namespace pipeline {
std::string stages_text(const Registry& r);
std::string stages_markdown(const Registry& r);
}  // namespace pipeline
