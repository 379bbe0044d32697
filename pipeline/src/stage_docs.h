// Stage reference generated from the registry: `pipe stages` and docs/stages.md, so the
// docs cannot drift from the declarations.
#pragma once

#include <string>

#include "pipe/registry.h"

namespace pipeline {
std::string stages_text(const Registry& r);
std::string stages_markdown(const Registry& r);
// One stage's section of the above (`pipe stages NAME`).
std::string stage_text(const StageEntry& e);
std::string stage_markdown(const StageEntry& e);
// The stage called `name`, or nullptr; then `hint` (when given) gets the closest name, or "".
const StageEntry* find_stage(const Registry& r, const std::string& name, std::string* hint);
}  // namespace pipeline
