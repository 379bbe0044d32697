#include "plugin_loader.h"

#include <dlfcn.h>

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

std::vector<std::string> plugin_path_entries() {
  std::vector<std::string> out;
  const char* env = std::getenv("PIPE_PLUGIN_PATH");
  if (!env || !*env) return out;
  std::stringstream ss(env);
  for (std::string part; std::getline(ss, part, ':');) {
    if (part.empty()) continue;
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

}  // namespace pipeline
