#include "cache_cli.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <iterator>
#include <numeric>
#include <regex>
#include <stdexcept>

#include <fmt/format.h>

#include "files.h"

namespace pipeline {

namespace {

using json = nlohmann::ordered_json;

std::string plural(size_t n, const char* one, const char* many) { return fmt::format("{} {}", n, n == 1 ? one : many); }

// Removes `victims` (indexes into `entries`) that no writer holds; counts what went and what stayed.
struct Evicted {
  size_t entries = 0, busy = 0;
  uint64_t bytes = 0;
};
Evicted evict_all(FeatureCache& store, const std::vector<CacheEntryInfo>& entries, const std::vector<size_t>& victims) {
  Evicted r;
  for (size_t i : victims) {
    const std::optional<uint64_t> freed = store.evict(entries[i].fingerprint, entries[i].split);
    if (!freed) {
      ++r.busy;
      continue;
    }
    ++r.entries;
    r.bytes += *freed;
  }
  return r;
}

std::string busy_note(const Evicted& e) {
  return e.busy ? fmt::format("; {} being written left alone", plural(e.busy, "entry", "entries")) : "";
}

uint64_t total_bytes(const std::vector<CacheEntryInfo>& entries) {
  uint64_t t = 0;
  for (const CacheEntryInfo& e : entries) t += e.bytes;
  return t;
}

}  // namespace

uint64_t parse_size(const std::string& text) {
  static const std::regex form(R"(^(\d+(\.\d*)?|\.\d+)([KMGT]?)(I?B)?$)", std::regex::icase);
  std::smatch m;
  const std::string why =
      fmt::format("--max-size '{}': expected a size such as 500M or 2G (a number, then K, M, G or T: powers of 1024)", text);
  if (!std::regex_match(text, m, form)) throw std::invalid_argument(why);
  const std::string unit = m[3].str();
  const int power = unit.empty() ? 0 : static_cast<int>(std::string("KMGT").find(static_cast<char>(std::toupper(unit[0])))) + 1;
  const double bytes = std::stod(m[1].str()) * std::pow(1024.0, power);
  if (!(bytes < 9.0e18)) throw std::invalid_argument(fmt::format("--max-size '{}': too large", text));
  return static_cast<uint64_t>(bytes);
}

double parse_days(const std::string& text) {
  static const std::regex form(R"(^(\d+(\.\d*)?|\.\d+)$)");
  if (!std::regex_match(text, form) || !(std::stod(text) < 1.0e7))
    throw std::invalid_argument(fmt::format("--older-than '{}': expected a number of days, such as 30 or 0.5", text));
  return std::stod(text) * 86400.0;
}

std::string size_text(uint64_t bytes) {
  if (bytes < 1024) return fmt::format("{} B", bytes);
  const char* units[] = {"KiB", "MiB", "GiB", "TiB", "PiB"};
  double v = static_cast<double>(bytes) / 1024.0;
  size_t u = 0;
  for (; v >= 1024.0 && u + 1 < std::size(units); ++u) v /= 1024.0;
  // Three significant digits: "1.50 KiB", "20.0 MiB", "512 MiB".
  const int decimals = v < 10 ? 2 : v < 100 ? 1 : 0;
  return fmt::format("{:.{}f} {}", v, decimals, units[u]);
}

std::string age_text(std::time_t then, std::time_t now) {
  if (then <= 0) return "-";
  const long long d = static_cast<long long>(now - then);
  if (d < 60) return "just now";  // a clock behind the file's too
  if (d < 3600) return fmt::format("{} min ago", d / 60);
  if (d < 2 * 86400) return fmt::format("{} h ago", d / 3600);
  return fmt::format("{} days ago", d / 86400);
}

std::string cache_nodes_short(const std::string& description) {
  // plan.cpp's cache_key: "source NAME [identity] -> stage(params)[fp] -> ... | split=S views=V"
  const std::string sep = " -> ";
  if (description.rfind("source ", 0) != 0) return description.substr(0, 40);
  std::vector<std::string> names;
  for (size_t at = 0; at != std::string::npos;) {
    const size_t next = description.find(sep, at);
    const std::string part = description.substr(at, next == std::string::npos ? std::string::npos : next - at);
    if (names.empty()) names.push_back(part.substr(7, part.find(' ', 7) - 7));  // after "source "
    else names.push_back(part.substr(0, part.find('(')));
    at = next == std::string::npos ? next : next + sep.size();
  }
  return fmt::format("{}", fmt::join(names, ">"));
}

std::string cache_table(const std::vector<CacheEntryInfo>& entries, std::time_t now) {
  size_t w = 5;  // "nodes"
  for (const CacheEntryInfo& e : entries) w = std::max(w, cache_nodes_short(e.description).size());
  const auto row = [w](const std::string& key, const std::string& nodes, const std::string& split, const std::string& views,
                       const std::string& rows, const std::string& size, const std::string& used) {
    return fmt::format("{:<12}  {:<{}}  {:<10}  {:>5}  {:>8}  {:>10}  {}\n", key, nodes, w, split, views, rows, size, used);
  };
  std::string out = row("key", "nodes", "split", "views", "rows", "size", "last used");
  for (const CacheEntryInfo& e : entries)
    out += row(e.fingerprint.substr(0, 12), cache_nodes_short(e.description), e.split, std::to_string(e.views),
               std::to_string(e.count), size_text(e.bytes), age_text(e.last_used, now));
  return out + fmt::format("total  {}, {}\n", plural(entries.size(), "entry", "entries"), size_text(total_bytes(entries)));
}

json cache_json(const std::string& root, const std::vector<CacheEntryInfo>& entries) {
  json list = json::array();
  for (const CacheEntryInfo& e : entries)
    list.push_back({{"fingerprint", e.fingerprint},
                    {"nodes", cache_nodes_short(e.description)},
                    {"split", e.split},
                    {"views", e.views},
                    {"rows", e.count},
                    {"feature_shape", e.feature_shape},
                    {"skipped", e.skipped},
                    {"bytes", e.bytes},
                    {"created", e.created},
                    {"last_used", e.last_used > 0 ? json(utc_time(e.last_used)) : json()},
                    {"description", e.description},
                    {"path", e.path}});
  return {{"root", root}, {"entries", list}, {"total", {{"entries", entries.size()}, {"bytes", total_bytes(entries)}}}};
}

std::vector<size_t> gc_victims(const std::vector<CacheEntryInfo>& entries, uint64_t max_bytes) {
  std::vector<size_t> order(entries.size());
  std::iota(order.begin(), order.end(), size_t{0});
  // Least recently used first; list() order (fingerprint, split) breaks ties, so a rerun agrees.
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return entries[a].last_used < entries[b].last_used; });
  uint64_t total = total_bytes(entries);
  std::vector<size_t> victims;
  for (size_t i : order) {
    if (total <= max_bytes) break;
    victims.push_back(i);
    total -= entries[i].bytes;
  }
  return victims;
}

int run_cache_ls(const CacheOptions& o, std::FILE* out, std::FILE*) {
  const FeatureCache store(resolve_cache_dir(o.dir));
  const std::vector<CacheEntryInfo> entries = store.list();
  if (o.json) {
    std::fprintf(out, "%s\n", cache_json(store.root(), entries).dump(2).c_str());
    return 0;
  }
  std::fprintf(out, "cache %s\n%s", store.root().c_str(), cache_table(entries, std::time(nullptr)).c_str());
  return 0;
}

int run_cache_rm(const CacheOptions& o, std::FILE* out, std::FILE* err) {
  if (o.all && (!o.prefix.empty() || !o.older_than.empty())) {
    std::fprintf(err, "pipe cache rm: --all removes every entry; give it no fingerprint and no --older-than\n");
    return 2;
  }
  if (!o.all && o.prefix.empty() && o.older_than.empty()) {  // removing everything takes an explicit --all
    std::fprintf(err, "pipe cache rm: give a fingerprint prefix, --older-than DAYS or --all\n");
    return 2;
  }
  if (o.older_than.empty()) {
    FeatureCache store(resolve_cache_dir(o.dir));
    const CacheRemoved r = o.all ? store.remove_all() : store.remove(o.prefix);
    std::fprintf(out, "removed %d entr%s (%d fingerprint%s, %.1f MB)\n", r.entries, r.entries == 1 ? "y" : "ies",
                 r.fingerprints, r.fingerprints == 1 ? "" : "s", static_cast<double>(r.bytes) / 1e6);
    return 0;
  }
  double seconds = 0;
  try {
    seconds = parse_days(o.older_than);
  } catch (const std::invalid_argument& e) {
    std::fprintf(err, "pipe cache rm: %s\n", e.what());
    return 2;
  }
  FeatureCache store(resolve_cache_dir(o.dir));
  const std::vector<CacheEntryInfo> entries = store.list();
  const double cutoff = static_cast<double>(std::time(nullptr)) - seconds;
  std::vector<size_t> victims;
  for (size_t i = 0; i < entries.size(); ++i)
    if (static_cast<double>(entries[i].last_used) < cutoff && entries[i].fingerprint.rfind(o.prefix, 0) == 0) victims.push_back(i);
  const Evicted r = evict_all(store, entries, victims);
  std::fprintf(out, "removed %s (%s) last used more than %s days ago%s\n", plural(r.entries, "entry", "entries").c_str(),
               size_text(r.bytes).c_str(), o.older_than.c_str(), busy_note(r).c_str());
  return 0;
}

int run_cache_gc(const CacheOptions& o, std::FILE* out, std::FILE* err) {
  uint64_t max_bytes = 0;
  try {
    max_bytes = parse_size(o.max_size);
  } catch (const std::invalid_argument& e) {
    std::fprintf(err, "pipe cache gc: %s\n", e.what());
    return 2;
  }
  FeatureCache store(resolve_cache_dir(o.dir));
  const std::vector<CacheEntryInfo> entries = store.list();
  const Evicted r = evict_all(store, entries, gc_victims(entries, max_bytes));
  const uint64_t total = total_bytes(entries), left = total > r.bytes ? total - r.bytes : 0;
  std::fprintf(out, "removed %s (%s), least recently used first%s; the cache holds %s (limit %s)\n",
               plural(r.entries, "entry", "entries").c_str(), size_text(r.bytes).c_str(), busy_note(r).c_str(),
               size_text(left).c_str(), size_text(max_bytes).c_str());
  return 0;
}

}  // namespace pipeline
