// `pipe cache ls | rm | gc`: the feature cache as a table (or JSON for scripts), and removal
// by fingerprint prefix, by last use (`rm --older-than DAYS`) and down to a size (`gc
// --max-size SIZE`, least recently used first). Entries being written are never evicted
// (FeatureCache::evict).
#pragma once

#include <cstdint>
#include <cstdio>
#include <ctime>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "cache_store.h"

namespace pipeline {

struct CacheOptions {
  std::string dir;         // --dir; "" : resolve_cache_dir's default
  std::string prefix;      // rm FINGERPRINT
  bool all = false;        // rm --all
  std::string older_than;  // rm --older-than DAYS
  std::string max_size;    // gc --max-size SIZE
  bool json = false;       // ls --json
};

// "500M", "2G", "1.5g", "800K", "1T", "4096" (bytes); an optional "B" or "iB" may follow the
// unit. K, M, G, T are powers of 1024, as size_text prints them. std::invalid_argument with a
// message for the user otherwise (negative, empty, unknown unit, too large).
uint64_t parse_size(const std::string& text);
// Days as a non-negative number ("30", "0.5") in seconds. std::invalid_argument otherwise.
double parse_days(const std::string& text);
// Bytes for people: "512 B", "1.5 KiB", "20.0 MiB", "2.00 GiB".
std::string size_text(uint64_t bytes);
// How long ago `then` was at `now`: "just now", "5 min ago", "3 h ago", "12 days ago".
std::string age_text(std::time_t then, std::time_t now);
// The upstream stages a cache key covers, from its description: "fashion_mnist>decode>convbase".
std::string cache_nodes_short(const std::string& description);

// `pipe cache ls`: a row per entry (key prefix, nodes, split, views, rows, size, last used)
// and a total line. `now` makes "last used" testable.
std::string cache_table(const std::vector<CacheEntryInfo>& entries, std::time_t now);
// `pipe cache ls --json`: {"root", "entries": [...], "total": {"entries", "bytes"}}.
nlohmann::ordered_json cache_json(const std::string& root, const std::vector<CacheEntryInfo>& entries);

// Which entries `pipe cache gc --max-size` removes: least recently used first, until the rest
// total at most `max_bytes`. Indexes into `entries`.
std::vector<size_t> gc_victims(const std::vector<CacheEntryInfo>& entries, uint64_t max_bytes);

// The subcommands; exit codes as main's: 0 ok, 2 usage error (a message on `err`).
int run_cache_ls(const CacheOptions& o, std::FILE* out, std::FILE* err);
int run_cache_rm(const CacheOptions& o, std::FILE* out, std::FILE* err);
int run_cache_gc(const CacheOptions& o, std::FILE* out, std::FILE* err);

}  // namespace pipeline
