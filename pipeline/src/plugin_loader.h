// Loads plugins: shared libraries exporting `pipe_plugin_entry` (see pipe/plugin.h).
#pragma once

#include <string>
#include <vector>

#include "diagnostics.h"
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

// --- Consent to the code a graph brings (docs/security.md). A graph's `plugins:` entries
// run code as the user, so they load only when the user said so: --allow-plugins or
// PIPE_ALLOW_PLUGINS=1, or a file in a directory the user trusts. Files named on the command
// line (--plugin) or in PIPE_PLUGIN_PATH are the user's own choice and always load.

// One `plugins:` entry: as written, resolved against the graph's directory, and where.
struct GraphPlugin {
  std::string written, path;
  int line = 0, col = 0;  // 1-based
};

struct PluginConsent {
  bool allow_graph_plugins = false;       // --allow-plugins, or PIPE_ALLOW_PLUGINS=1
  bool load = true;                       // false: load nothing a graph names (validate --no-plugins)
  std::vector<std::string> command_line;  // --plugin files
};

// PIPE_ALLOW_PLUGINS is set to something other than "" or "0".
bool plugins_allowed_by_env();

// Directories whose plugins a graph may load without consent: PIPE_PLUGIN_PATH's directories
// and the installed plugin directory, <libdir>/pipe/plugins beside the libpipe that runs.
std::vector<std::string> trusted_plugin_dirs();

// True when `path` (symbolic links followed) is a file the user named (--plugin, a file in
// PIPE_PLUGIN_PATH) or lies inside a trusted directory.
bool plugin_trusted(const std::string& path, const PluginConsent& consent);

// The diagnostic for a graph plugin loaded without consent (without the position).
std::string plugin_consent_message(const GraphPlugin& p);

// Loads the graph's `plugins` that exist and that consent allows; reports every other
// existing one at its position in `diag` (missing files are the validator's to report).
// Returns true when every listed plugin is loaded. Throws what load_plugin throws.
bool load_graph_plugins(const std::vector<GraphPlugin>& plugins, const PluginConsent& consent,
                        Registry& registry, Diagnostics& diag);

}  // namespace pipeline
