#include "plugin_loader.h"

#include <dlfcn.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <mutex>
#include <set>
#include <sstream>
#include <stdexcept>

#include <fmt/format.h>

#include "pipe/plugin.h"

namespace fs = std::filesystem;

namespace pipeline {

std::string host_build_fingerprint() { return PIPE_BUILD_FINGERPRINT; }

void load_plugin(const std::string& path, Registry& registry) {
  static std::mutex mu;
  static std::set<std::string> loaded;
  std::lock_guard<std::mutex> lock(mu);
  std::error_code ec;
  const std::string canonical = fs::weakly_canonical(path, ec).string();
  if (loaded.count(canonical)) return;
  if (!fs::exists(path)) throw std::runtime_error(fmt::format("plugin {}: file not found", path));

  // RTLD_LOCAL: a plugin's symbols stay its own; only the entry point is looked up.
  void* handle = ::dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!handle) throw std::runtime_error(fmt::format("plugin {}: cannot load: {}", path, ::dlerror()));
  const auto fail = [&](const std::string& why) {
    ::dlclose(handle);
    return std::runtime_error(fmt::format("plugin {}: {}", path, why));
  };
  auto entry = reinterpret_cast<pipe_plugin_entry_fn>(::dlsym(handle, "pipe_plugin_entry"));
  if (!entry)
    throw fail("missing entry point 'pipe_plugin_entry' (define it with PIPE_PLUGIN(...) from <pipe/plugin.h>)");
  const pipe_plugin_descriptor* d = entry();
  if (!d) throw fail("pipe_plugin_entry returned no descriptor");
  // Check the fields in the order that makes later reads safe.
  if (d->struct_size < sizeof(uint32_t) * 4)
    throw fail(fmt::format("descriptor of {} bytes is too small", d->struct_size));
  if (d->abi_version != PIPE_PLUGIN_ABI_VERSION)
    throw fail(fmt::format("plugin ABI version {} does not match pipe's {}", d->abi_version,
                           PIPE_PLUGIN_ABI_VERSION));
  if (d->struct_size != sizeof(pipe_plugin_descriptor))
    throw fail(fmt::format("descriptor size {} does not match pipe's {}", d->struct_size,
                           sizeof(pipe_plugin_descriptor)));
  if (d->api_major != PIPE_API_MAJOR || d->api_minor > PIPE_API_MINOR)
    throw fail(fmt::format("built against pipe API {}.{}, this pipe provides {}.{} (a plugin loads "
                           "when the major versions match and its minor is not newer)",
                           d->api_major, d->api_minor, PIPE_API_MAJOR, PIPE_API_MINOR));
  const std::string theirs = d->build_fingerprint ? d->build_fingerprint : "(none)";
  if (theirs != PIPE_BUILD_FINGERPRINT)
    throw fail(fmt::format("build fingerprint mismatch: plugin '{}', pipe '{}'; rebuild the plugin "
                           "against this pipe", theirs, PIPE_BUILD_FINGERPRINT));
  if (!d->register_stages) throw fail("descriptor has no register function");

  registry.set_origin(fmt::format("plugin {} ({} {})", path, d->name ? d->name : "?", d->version ? d->version : "?"));
  try {
    d->register_stages(registry);
  } catch (const std::exception& e) {
    registry.set_origin("built-in");
    // Stages it registered before failing stay: they point into the library, so it stays loaded.
    throw std::runtime_error(fmt::format("plugin {}: {}", path, e.what()));
  }
  registry.set_origin("built-in");
  loaded.insert(canonical);
}

namespace {

// PIPE_PLUGIN_PATH's non-empty entries, in order.
std::vector<std::string> plugin_path_parts() {
  std::vector<std::string> out;
  const char* env = std::getenv("PIPE_PLUGIN_PATH");
  if (!env || !*env) return out;
  std::stringstream ss(env);
  for (std::string part; std::getline(ss, part, ':');)
    if (!part.empty()) out.push_back(part);
  return out;
}

// `path` with symbolic links, "." and ".." resolved; "" when it does not exist.
fs::path real(const std::string& path) {
  std::error_code ec;
  fs::path p = fs::canonical(path, ec);
  return ec ? fs::path() : p;
}

// A function of libpipe's own (internal linkage: its address is never an executable's PLT
// entry), for dladdr to name the library file.
void libpipe_anchor() {}

bool inside(const fs::path& file, const fs::path& dir) {
  return !dir.empty() && std::mismatch(dir.begin(), dir.end(), file.begin(), file.end()).first == dir.end();
}

}  // namespace

std::vector<std::string> plugin_path_entries() {
  std::vector<std::string> out;
  for (const std::string& part : plugin_path_parts()) {
    std::error_code ec;
    if (fs::is_directory(part, ec)) {
      std::vector<std::string> found;
      for (const auto& e : fs::directory_iterator(part, ec))
        if (e.path().extension() == ".so") found.push_back(e.path().string());
      std::sort(found.begin(), found.end());
      out.insert(out.end(), found.begin(), found.end());
    } else {
      out.push_back(part);
    }
  }
  return out;
}

bool plugins_allowed_by_env() {
  const char* v = std::getenv("PIPE_ALLOW_PLUGINS");
  return v && *v && std::string(v) != "0";
}

std::vector<std::string> trusted_plugin_dirs() {
  std::vector<std::string> out;
  for (const std::string& part : plugin_path_parts()) {
    std::error_code ec;
    if (fs::is_directory(part, ec)) out.push_back(part);
  }
  // Where this libpipe lives, so that a prefix moved elsewhere keeps its plugin directory.
  Dl_info info{};
  if (::dladdr(reinterpret_cast<void*>(&libpipe_anchor), &info) && info.dli_fname)
    out.push_back((fs::path(info.dli_fname).parent_path() / "pipe" / "plugins").string());
  return out;
}

bool plugin_trusted(const std::string& path, const PluginConsent& consent) {
  const fs::path file = real(path);
  if (file.empty()) return false;
  std::vector<std::string> named = consent.command_line;
  for (const std::string& p : plugin_path_entries()) named.push_back(p);  // the user's own, links too
  for (const std::string& n : named)
    if (real(n) == file) return true;
  for (const std::string& dir : trusted_plugin_dirs())
    if (inside(file, real(dir))) return true;
  return false;
}

std::string plugin_consent_message(const GraphPlugin& p) {
  return fmt::format("plugin '{}' ({}) not loaded: plugins named by a graph run code as you; if you trust this "
                     "graph, pass --allow-plugins (or set PIPE_ALLOW_PLUGINS=1), or add the plugin's directory "
                     "to PIPE_PLUGIN_PATH (docs/security.md)", p.written, p.path);
}

bool load_graph_plugins(const std::vector<GraphPlugin>& plugins, const PluginConsent& consent,
                        Registry& registry, Diagnostics& diag) {
  bool all = true;
  for (const GraphPlugin& p : plugins) {
    std::error_code ec;
    if (!fs::exists(p.path, ec)) {  // the validator reports it, with the reason
      all = false;
    } else if (!consent.load) {
      diag.warning(p.line, p.col, fmt::format("plugin '{}' not loaded (--no-plugins)", p.written));
      all = false;
    } else if (consent.allow_graph_plugins) {
      load_plugin(p.path, registry);
    } else if (const std::string file = real(p.path).string(); plugin_trusted(file, consent)) {
      load_plugin(file, registry);  // the file that was checked, not a link that may change since
    } else {
      diag.error(p.line, p.col, plugin_consent_message(p));
      all = false;
    }
  }
  return all;
}

}  // namespace pipeline
