// Loads plugins: shared libraries exporting `pipe_plugin_entry` (see pipe/plugin.h).
#pragma once

#include <string>
#include <vector>

#include "pipe/registry.h"

namespace pipeline {

// dlopens `path`, checks its descriptor against this build and registers its stages.
// Throws std::runtime_error naming the file and both sides of any mismatch. Loading the
// same file twice is a no-op.
void load_plugin(const std::string& path, Registry& registry);

// Files named by $PIPE_PLUGIN_PATH: colon-separated files or directories (every *.so in a
// directory, sorted).
std::vector<std::string> plugin_path_entries();

// This build's descriptor values, for messages and `pipe --version`.
std::string host_build_fingerprint();

}  // namespace pipeline
