// A .gz file's bytes, decompressed by gzip(1): independently of pipe's own reader (zlib is
// private to libpipe), for tests that check what pipe reads from the same files.
#pragma once

#include <catch2/catch.hpp>

#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

inline std::vector<uint8_t> gunzip(const std::string& path) {
  FILE* f = popen(("gzip -dc '" + path + "'").c_str(), "r");
  REQUIRE(f != nullptr);
  std::vector<uint8_t> out;
  uint8_t buf[1 << 16];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, f)) > 0) out.insert(out.end(), buf, buf + n);
  REQUIRE(pclose(f) == 0);
  return out;
}
