// The user's home directory: $HOME when set and non-empty, else the password database, else
// ".". One rule for "~" in graph paths (paths.cpp) and for the default cache root
// (cache_store.cpp).
#pragma once

#include <pwd.h>
#include <unistd.h>

#include <cstdlib>
#include <string>

namespace pipeline {

inline std::string home_dir() {
  if (const char* h = std::getenv("HOME"); h && *h) return h;
  if (const passwd* pw = ::getpwuid(::getuid()); pw && pw->pw_dir) return pw->pw_dir;
  return ".";
}

}  // namespace pipeline
