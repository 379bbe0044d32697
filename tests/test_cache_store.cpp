// The content-addressed feature cache: hashing, cache dir resolution, the npy + manifest
// round trip, corruption detection, incomplete writers, locking, list/remove, and the
// `cache` stage's parameters.
#include <catch2/catch.hpp>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

// The one-shot reference for Hasher, compiled here (static, renamed symbols): no link needed.
#define XXH_INLINE_ALL
#include <xxhash.h>

#include "cache_store.h"
#include "pipe/testing.h"

using namespace pipeline;

namespace {

struct TempDir {
  std::string path;
  TempDir() {
    char tmpl[] = "/tmp/pipe-cache-test-XXXXXX";
    const char* p = ::mkdtemp(tmpl);
    REQUIRE(p != nullptr);
    path = p;
  }
  ~TempDir() { std::system(("rm -rf '" + path + "'").c_str()); }
};

bool exists(const std::string& p) {
  struct stat st {};
  return ::stat(p.c_str(), &st) == 0;
}

std::vector<std::string> files_in(const std::string& dir) {
  std::vector<std::string> out;
  if (FILE* f = ::popen(("ls -A '" + dir + "' 2>/dev/null").c_str(), "r")) {
    char line[512];
    while (std::fgets(line, sizeof line, f)) {
      std::string s = line;
      if (!s.empty() && s.back() == '\n') s.pop_back();
      out.push_back(s);
    }
    ::pclose(f);
  }
  return out;
}

std::string read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

float value(int64_t id, int view, int k) { return float(id * 100 + view * 10 + k) + 0.25f; }

Tensor row(int64_t id, int view, std::vector<int64_t> shape = {3, 2}) {
  float* w = nullptr;
  Tensor t = Tensor::zeros(std::move(shape), &w);
  for (int64_t k = 0; k < t.numel(); ++k) w[k] = value(id, view, static_cast<int>(k));
  return t;
}

// Writes a complete entry: `count` samples x `views`, rows in reverse order, `skip` skipped.
void write_entry(FeatureCache& cache, const std::string& fp, const std::string& split,
                 int64_t count = 5, int views = 2, std::vector<int64_t> skip = {}) {
  FeatureCache::Writer w = cache.begin(fp, split, count, views, "test entry " + fp);
  for (int64_t id = count - 1; id >= 0; --id) {
    if (std::find(skip.begin(), skip.end(), id) != skip.end()) {
      w.skip(id, "unreadable #" + std::to_string(id));
      continue;
    }
    for (int v = views - 1; v >= 0; --v) w.add(id, v, static_cast<int>(id % 2), row(id, v));
  }
  w.commit();
}

// Runs fn with stderr captured; returns what it printed.
template <typename F>
std::string capture_stderr(F fn) {
  std::fflush(stderr);
  char tmpl[] = "/tmp/pipe-cache-stderr-XXXXXX";
  const int fd = ::mkstemp(tmpl);
  REQUIRE(fd >= 0);
  const int saved = ::dup(2);
  ::dup2(fd, 2);
  fn();
  std::fflush(stderr);
  ::dup2(saved, 2);
  ::close(saved);
  ::close(fd);
  std::string out = read_all(tmpl);
  ::unlink(tmpl);
  return out;
}

struct EnvGuard {
  std::vector<std::pair<std::string, std::optional<std::string>>> saved;
  void set(const std::string& k, const char* v) {
    const char* old = std::getenv(k.c_str());
    saved.emplace_back(k, old ? std::optional<std::string>(old) : std::nullopt);
    if (v) ::setenv(k.c_str(), v, 1);
    else ::unsetenv(k.c_str());
  }
  ~EnvGuard() {
    for (auto it = saved.rbegin(); it != saved.rend(); ++it) {
      if (it->second) ::setenv(it->first.c_str(), it->second->c_str(), 1);
      else ::unsetenv(it->first.c_str());
    }
  }
};

}  // namespace

TEST_CASE("cache hash and cache dir resolution", "[cache]") {
  SECTION("Hasher is streaming XXH3-128: one-shot XXH3_128bits of the same bytes, any split") {
    // The one-shot reference is xxhash.h compiled inline here (XXH_INLINE_ALL), not the
    // library's streaming code that Hasher calls.
    const auto reference = [](const std::string& bytes) {
      return XXH3_128bits(bytes.data(), bytes.size());
    };
    const auto canonical_hex = [](XXH128_hash_t h) {
      XXH128_canonical_t c;
      XXH128_canonicalFromHash(&c, h);
      std::string out;
      for (unsigned char byte : c.digest) {
        char two[3];
        std::snprintf(two, sizeof two, "%02x", byte);
        out += two;
      }
      return out;
    };
    std::string data(5000, '\0');
    for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<char>((i * 7919) >> 3);
    // XXH3 has separate paths for 0, 1-3, 4-8, 9-16, 17-128, 129-240 and longer inputs; the
    // streaming state buffers 256 bytes and consumes 64-byte stripes in 1024-byte blocks.
    for (size_t n : {size_t(0), size_t(1), size_t(3), size_t(8), size_t(16), size_t(17), size_t(128),
                     size_t(129), size_t(240), size_t(241), size_t(256), size_t(1024), size_t(1025),
                     size_t(5000)}) {
      const std::string bytes = data.substr(0, n);
      const XXH128_hash_t want = reference(bytes);
      Hasher whole;
      whole.update(bytes);
      CHECK(whole.digest() == std::array<uint64_t, 2>{want.high64, want.low64});
      CHECK(whole.hex() == canonical_hex(want));  // high64 then low64: xxHash's canonical form
      CHECK(hash_hex(bytes) == canonical_hex(want));
      for (size_t cut : {size_t(0), size_t(1), size_t(63), size_t(64), size_t(65), size_t(255),
                         size_t(256), size_t(257), size_t(1023), size_t(1024), size_t(1025), n / 2,
                         n > 0 ? n - 1 : 0}) {
        if (cut > n) continue;
        INFO("n = " << n << ", cut at " << cut);
        Hasher two;
        two.update(bytes.substr(0, cut)).update(bytes.substr(cut));
        CHECK(two.hex() == whole.hex());
        Hasher three;  // three pieces, the middle one possibly empty
        const size_t mid = cut + (n - cut) / 3;
        three.update(bytes.substr(0, cut)).update(bytes.substr(cut, mid - cut)).update(bytes.substr(mid));
        CHECK(three.hex() == whole.hex());
      }
      Hasher bytewise;
      for (char c : bytes) bytewise.update(&c, 1);
      CHECK(bytewise.hex() == whole.hex());
    }
    CHECK(Hasher().update(nullptr, 0).hex() == canonical_hex(reference("")));
    const std::string h = hash_hex("hello");
    CHECK(h.size() == 32);
    CHECK(h.find_first_not_of("0123456789abcdef") == std::string::npos);
    CHECK(h != hash_hex("hellp"));

    // digest() does not reset; a copy carries the state on independently.
    Hasher running;
    running.update("abc");
    CHECK(running.hex() == running.hex());
    Hasher copy = running;
    copy.update("def");
    CHECK(running.hex() == hash_hex("abc"));
    CHECK(copy.hex() == hash_hex("abcdef"));
    running.update("def");
    CHECK(running.hex() == copy.hex());

    // field(): 8-byte little-endian length, then the bytes.
    const std::string ab_prefixed = std::string("\x02\0\0\0\0\0\0\0", 8) + "ab";
    CHECK(Hasher().field("ab").hex() == canonical_hex(reference(ab_prefixed)));
    const std::string empty_prefixed(8, '\0');
    CHECK(Hasher().field("").hex() == canonical_hex(reference(empty_prefixed)));
    CHECK(Hasher().field("ab").field("c").hex() != Hasher().field("a").field("bc").hex());
    CHECK(Hasher().field("ab").field("c").hex() ==
          canonical_hex(reference(ab_prefixed + std::string("\x01\0\0\0\0\0\0\0", 8) + "c")));
    CHECK(Hasher().field("ab").hex() != hash_hex("ab"));

    // hash_file streams the file (reads of 1 MiB): equal to the one-shot hash of its bytes.
    TempDir tmp;
    std::string big(size_t(3) << 19, '\0');  // 1.5 MiB
    for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<char>((i * 2654435761u) >> 13);
    for (const std::string* content : {&data, &big}) {
      const std::string f = tmp.path + "/blob";
      std::ofstream(f, std::ios::binary | std::ios::trunc) << *content;
      CHECK(hash_file(f) == canonical_hex(reference(*content)));
    }
    std::ofstream(tmp.path + "/empty", std::ios::binary);
    CHECK(hash_file(tmp.path + "/empty") == canonical_hex(reference("")));
    CHECK_THROWS_AS(hash_file(tmp.path + "/missing"), std::runtime_error);
  }

  SECTION("resolve_cache_dir: stage dir, then PIPE_CACHE_DIR, XDG_CACHE_HOME, ~/.cache") {
    EnvGuard env;
    env.set("HOME", "/home/someone");
    env.set("PIPE_CACHE_DIR", "/pipe/cache");
    env.set("XDG_CACHE_HOME", "/xdg");
    CHECK(resolve_cache_dir("/explicit") == "/explicit");
    CHECK(resolve_cache_dir("~/mine") == "/home/someone/mine");
    CHECK(resolve_cache_dir("") == "/pipe/cache");
    env.set("PIPE_CACHE_DIR", "");  // empty counts as unset
    CHECK(resolve_cache_dir("") == "/xdg/pipe");
    env.set("PIPE_CACHE_DIR", nullptr);
    CHECK(resolve_cache_dir("") == "/xdg/pipe");
    env.set("XDG_CACHE_HOME", nullptr);
    CHECK(resolve_cache_dir("") == "/home/someone/.cache/pipe");
  }
}

TEST_CASE("feature cache entries", "[cache]") {
  TempDir tmp;
  const std::string root = tmp.path + "/root";
  FeatureCache cache(root);
  const std::string fp = hash_hex("fingerprint");

  SECTION("round trip: out-of-order rows, skips, zero-copy tensors that outlive the entry") {
    write_entry(cache, fp, "train", 5, 2, {3});
    CHECK(files_in(cache.entry_dir(fp)) ==
          std::vector<std::string>{"train.json", "train.lock", "train.npy"});

    std::shared_ptr<const FeatureCache::Entry> e = cache.open(fp, "train");
    REQUIRE(e);
    CHECK(e->count() == 5);
    CHECK(e->views() == 2);
    CHECK(e->feature_shape() == std::vector<int64_t>{3, 2});
    CHECK(e->description() == "test entry " + fp);
    for (int64_t id = 0; id < 5; ++id) {
      if (id == 3) continue;
      CHECK_FALSE(e->skipped(id));
      CHECK(e->skip_reason(id).empty());
      CHECK(e->label(id) == id % 2);
      for (int v = 0; v < 2; ++v) {
        const Tensor t = e->features(id, v);
        REQUIRE(t.shape == std::vector<int64_t>{3, 2});
        for (int k = 0; k < 6; ++k) CHECK(t.ptr()[k] == value(id, v, k));
      }
    }
    CHECK(e->skipped(3));
    CHECK(e->skip_reason(3) == "unreadable #3");
    CHECK(e->label(3) == -1);
    REQUIRE(e->skips().size() == 1);
    CHECK(e->skips()[0].id == 3);
    CHECK_THROWS_AS(e->features(3, 0), std::logic_error);
    CHECK_THROWS_AS(e->features(5, 0), std::out_of_range);
    CHECK_THROWS_AS(e->features(0, 2), std::out_of_range);
    CHECK_THROWS_AS(e->label(-1), std::out_of_range);

    // Zero copy: rows are adjacent in one mapping, and a tensor keeps it alive.
    const Tensor a = e->features(2, 0), b = e->features(2, 1);
    CHECK(b.ptr() - a.ptr() == 6);
    CHECK(e->features(2, 1).ptr() == b.ptr());
    e.reset();
    for (int k = 0; k < 6; ++k) CHECK(b.ptr()[k] == value(2, 1, k));

    // The manifest, read back as JSON.
    const auto m = nlohmann::json::parse(std::ifstream(cache.manifest_path(fp, "train")));
    CHECK(m.at("fingerprint") == fp);
    CHECK(m.at("split") == "train");
    CHECK(m.at("count") == 5);
    CHECK(m.at("views") == 2);
    CHECK(m.at("dtype") == "float32");
    CHECK(m.at("feature_shape").get<std::vector<int64_t>>() == std::vector<int64_t>{3, 2});
    CHECK(m.at("labels").get<std::vector<int>>() == std::vector<int>{0, 1, 0, -1, 0});
    CHECK(m.at("skipped").at(0).at("id") == 3);
    CHECK(m.at("skipped").at(0).at("reason") == "unreadable #3");
    CHECK(m.at("bytes") == read_all(cache.npy_path(fp, "train")).size());
    CHECK(m.at("checksum") == hash_file(cache.npy_path(fp, "train")));
    CHECK(m.at("created").get<std::string>().size() == 20);
    CHECK_FALSE(m.at("pipe_version").get<std::string>().empty());
  }

  SECTION("a large entry is verified and read back in a scattered order") {
    // 6,000 rows of 8 KiB: 47 MiB of file, more than the reader's 8 MiB drop window. How much
    // of it stays resident is a measurement, not a test: `pipe bench` reports it ("cache
    // read resident memory").
    const int64_t count = 6000, floats = 2048;
    {
      FeatureCache::Writer w = cache.begin(fp, "big", count, 1, "large entry");
      for (int64_t id = 0; id < count; ++id) {
        float* p = nullptr;
        Tensor t = Tensor::zeros({floats}, &p);
        for (int64_t k = 0; k < floats; k += 512) p[k] = float(id) + float(k);
        w.add(id, 0, 0, t);
      }
      w.commit();
    }
    std::shared_ptr<const FeatureCache::Entry> e = cache.open(fp, "big");
    REQUIRE(e);
    double sum = 0, expected = 0;
    // In a scattered order, as epochs read: each fault maps the pages around it as well.
    for (int64_t i = 0; i < count; ++i) {
      const int64_t id = i * 7919 % count;
      const Tensor t = e->features(id, 0);
      for (int64_t k = 0; k < floats; k += 512) {
        sum += t.ptr()[k];
        expected += float(id) + float(k);
      }
    }
    CHECK(sum == expected);
  }

  SECTION("the .npy file is numpy format v1.0: header, 64-byte alignment, C-order data") {
    write_entry(cache, fp, "validation", 4, 1);
    const std::string f = read_all(cache.npy_path(fp, "validation"));
    REQUIRE(f.size() > 10);
    CHECK(f.compare(0, 6, "\x93NUMPY") == 0);
    CHECK(f[6] == 1);
    CHECK(f[7] == 0);
    const size_t hlen = size_t(uint8_t(f[8])) | size_t(uint8_t(f[9])) << 8;
    CHECK((10 + hlen) % 64 == 0);
    REQUIRE(f.size() == 10 + hlen + 4 * 1 * 6 * sizeof(float));
    const std::string header = f.substr(10, hlen);
    CHECK(header.back() == '\n');
    // Python dict literal: what numpy's parser (ast.literal_eval) reads.
    const std::string dict = header.substr(0, header.find_last_not_of(" \n") + 1);
    CHECK(dict == "{'descr': '<f4', 'fortran_order': False, 'shape': (4, 1, 3, 2), }");
    // Row (id 2, view 0), element 5, at the C-order offset.
    float x = 0;
    std::memcpy(&x, f.data() + 10 + hlen + ((2 * 1 + 0) * 6 + 5) * sizeof(float), sizeof x);
    CHECK(x == value(2, 0, 5));
  }

  SECTION("an incomplete writer leaves no entry and no temp file") {
    {
      FeatureCache::Writer w = cache.begin(fp, "train", 3, 1, "partial");
      w.add(1, 0, 1, row(1, 0));
      w.add(0, 0, 0, row(0, 0));
      CHECK(files_in(cache.entry_dir(fp)).size() == 2);  // lock + temp
      // Commit refuses while a row is missing; the writer stays usable.
      CHECK_THROWS_AS(w.commit(), std::logic_error);
      CHECK_FALSE(w.committed());
    }
    CHECK(files_in(cache.entry_dir(fp)) == std::vector<std::string>{"train.lock"});
    CHECK(cache.open(fp, "train") == nullptr);
    CHECK(cache.list().empty());

    FeatureCache::Writer w = cache.begin(fp, "train", 3, 1, "retry");
    w.add(0, 0, 0, row(0, 0));
    w.add(2, 0, 0, row(2, 0));
    CHECK_THROWS_WITH(w.commit(), Catch::Contains("sample 1 view 0"));
    w.skip(1, "gone");
    w.commit();
    CHECK(w.committed());
    auto e = cache.open(fp, "train");
    REQUIRE(e);
    CHECK(e->skipped(1));
    CHECK(e->features(2, 0).ptr()[0] == value(2, 0, 0));
  }

  SECTION("writer misuse is refused") {
    FeatureCache::Writer w = cache.begin(fp, "train", 2, 2, "");
    w.add(0, 0, 1, row(0, 0));
    CHECK_THROWS_AS(w.add(0, 0, 1, row(0, 0)), std::logic_error);          // twice
    CHECK_THROWS_AS(w.add(0, 1, 0, row(0, 1)), std::invalid_argument);     // label differs
    CHECK_THROWS_AS(w.add(1, 0, 1, row(1, 0, {6})), std::invalid_argument);  // shape differs
    CHECK_THROWS_AS(w.add(2, 0, 1, row(2, 0)), std::out_of_range);
    CHECK_THROWS_AS(w.add(1, 2, 1, row(1, 2)), std::out_of_range);
    CHECK_THROWS_AS(w.add(1, 0, 1, Tensor{}), std::invalid_argument);
    CHECK_THROWS_AS(w.skip(-1, "x"), std::out_of_range);
    CHECK_THROWS_AS(cache.begin("../evil", "train", 1, 1, ""), std::invalid_argument);
    CHECK_THROWS_AS(cache.open(fp, "a/b"), std::invalid_argument);
    CHECK_THROWS_AS(cache.begin(fp, "test", 1, 0, ""), std::invalid_argument);
  }

  SECTION("every sample skipped, and an empty split, still commit") {
    write_entry(cache, fp, "train", 2, 1, {0, 1});
    auto e = cache.open(fp, "train");
    REQUIRE(e);
    CHECK(e->skipped(0));
    CHECK(e->skipped(1));
    CHECK(e->feature_shape() == std::vector<int64_t>{0});
    write_entry(cache, fp, "test", 0, 1);
    auto t = cache.open(fp, "test");
    REQUIRE(t);
    CHECK(t->count() == 0);
  }

  SECTION("corruption is detected on open: warning, files removed, nullptr") {
    write_entry(cache, fp, "train");
    const std::string npy = cache.npy_path(fp, "train");
    const std::string manifest = cache.manifest_path(fp, "train");
    const off_t size = static_cast<off_t>(read_all(npy).size());
    REQUIRE(cache.open(fp, "train"));

    SECTION("truncated data file") {
      REQUIRE(::truncate(npy.c_str(), size - 4) == 0);
    }
    SECTION("one flipped byte in the data: the checksum catches it") {
      const int fd = ::open(npy.c_str(), O_RDWR);
      REQUIRE(fd >= 0);
      char c = 0;
      REQUIRE(::pread(fd, &c, 1, size - 7) == 1);
      c = static_cast<char>(c ^ 0x10);
      REQUIRE(::pwrite(fd, &c, 1, size - 7) == 1);
      ::close(fd);
    }
    SECTION("missing data file") {
      REQUIRE(::unlink(npy.c_str()) == 0);
    }
    SECTION("garbage manifest") {
      std::ofstream(manifest) << "{\"count\": [oops";
    }
    // Reading either would block forever.
    SECTION("data file replaced by a FIFO") {
      REQUIRE(::unlink(npy.c_str()) == 0);
      REQUIRE(::mkfifo(npy.c_str(), 0644) == 0);
    }
    SECTION("manifest replaced by a FIFO") {
      REQUIRE(::unlink(manifest.c_str()) == 0);
      REQUIRE(::mkfifo(manifest.c_str(), 0644) == 0);
    }
    std::shared_ptr<const FeatureCache::Entry> e;
    const std::string err = capture_stderr([&] { e = cache.open(fp, "train"); });
    CHECK(e == nullptr);
    CHECK(err.find("warning") != std::string::npos);
    CHECK((err.find(npy) != std::string::npos || err.find(manifest) != std::string::npos));
    CHECK(std::count(err.begin(), err.end(), '\n') == 1);
    CHECK_FALSE(exists(npy));
    CHECK_FALSE(exists(manifest));
    // Recompute: the same entry can be written again and read.
    write_entry(cache, fp, "train");
    auto again = cache.open(fp, "train");
    REQUIRE(again);
    CHECK(again->features(4, 1).ptr()[5] == value(4, 1, 5));
  }

  SECTION("an entry of another format version (the previous one: XXH64 checksums) is recomputed") {
    // Everything valid but format_version: written by the previous pipe (1, whose checksums
    // were XXH64 under two seeds) or by a newer one. open() must not read it.
    for (int version : {1, 3}) {
      INFO("format_version " << version);
      write_entry(cache, fp, "train");
      const std::string npy = cache.npy_path(fp, "train");
      const std::string manifest = cache.manifest_path(fp, "train");
      REQUIRE(cache.open(fp, "train"));
      REQUIRE(nlohmann::json::parse(std::ifstream(manifest)).at("format_version") == 2);
      std::string text = read_all(manifest);
      const std::string field = "\"format_version\": 2";
      const size_t at = text.find(field);
      REQUIRE(at != std::string::npos);
      text.replace(at, field.size(), "\"format_version\": " + std::to_string(version));
      std::ofstream(manifest, std::ios::binary | std::ios::trunc) << text;
      REQUIRE(nlohmann::json::parse(std::ifstream(manifest)).at("format_version") == version);
      REQUIRE(cache.list().size() == 1);

      std::shared_ptr<const FeatureCache::Entry> e;
      const std::string err = capture_stderr([&] { e = cache.open(fp, "train"); });
      CHECK(e == nullptr);
      CHECK(err == "pipe: warning: cache file " + manifest + " is in another cache format (format_version " +
                       std::to_string(version) + ", this pipe reads 2" +
                       (version == 1 ? ": written by an older pipe" : "") +
                       "); removing the entry, it will be recomputed\n");
      CHECK_FALSE(exists(npy));
      CHECK_FALSE(exists(manifest));
      CHECK(cache.list().empty());
      CHECK(cache.open(fp, "train") == nullptr);  // now a plain miss: silent
    }
    // Recomputed: the current format, an XXH3-128 checksum.
    write_entry(cache, fp, "train");
    auto again = cache.open(fp, "train");
    REQUIRE(again);
    CHECK(again->features(4, 1).ptr()[5] == value(4, 1, 5));
    const auto m = nlohmann::json::parse(std::ifstream(cache.manifest_path(fp, "train")));
    CHECK(m.at("format") == "pipe feature cache");
    CHECK(m.at("format_version") == 2);
    CHECK(m.at("checksum_algorithm").get<std::string>().rfind("XXH3-128", 0) == 0);
  }

  SECTION("a manifest claiming rows that overflow, or too many dimensions, is refused") {
    // A hostile or damaged manifest: sizes are computed with overflow checks before anything
    // is mapped or read (found by fuzz_cache; tests/fuzz/regressions/cache/).
    write_entry(cache, fp, "train", 1, 1);
    const std::string manifest = cache.manifest_path(fp, "train");
    const std::string text = read_all(manifest);
    const std::string shape = "\"feature_shape\": [\n  3,\n  2\n ]";
    REQUIRE(text.find(shape) != std::string::npos);
    std::string dims;
    for (int i = 0; i < 30000; ++i) dims += i ? ", 1" : "1";
    for (const std::string& claim : {std::string("[4611686018427387904, 4, 0]"),
                                     std::string("[4611686018427387904, 4]"), "[" + dims + "]"}) {
      INFO(claim.substr(0, 40));
      write_entry(cache, fp, "train", 1, 1);
      std::string t = read_all(manifest);
      t.replace(t.find(shape), shape.size(), "\"feature_shape\": " + claim);
      std::ofstream(manifest, std::ios::binary | std::ios::trunc) << t;
      std::shared_ptr<const FeatureCache::Entry> e;
      const std::string err = capture_stderr([&] { CHECK_NOTHROW(e = cache.open(fp, "train")); });
      CHECK(e == nullptr);
      CHECK(err.find("pipe: warning: cache file " + manifest + " is corrupt (bad manifest: ") == 0);
      CHECK(std::count(err.begin(), err.end(), '\n') == 1);
      CHECK_FALSE(exists(manifest));
    }

    // 2^62 floats per row: 4 x 2^62 bytes wrap to 0 in 64 bits, so that the sizes agreed with
    // a file holding only the header (checksum right too) and the entry opened with rows
    // far outside its mapping (tests/fuzz/regressions/cache/row-bytes-wrap-to-zero.bin).
    write_entry(cache, fp, "train", 1, 1);
    const std::string npy = cache.npy_path(fp, "train");
    std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 1, 4611686018427387904), }";
    header.append((64 - (10 + header.size() + 1) % 64) % 64, ' ');
    header += '\n';
    header = std::string("\x93NUMPY\x01\x00", 8) + char(header.size() & 0xFF) + char(header.size() >> 8) + header;
    std::string t = read_all(manifest);
    t.replace(t.find(shape), shape.size(), "\"feature_shape\": [4611686018427387904]");
    const std::string bytes = "\"bytes\": " + std::to_string(read_all(npy).size());
    REQUIRE(t.find(bytes) != std::string::npos);
    t.replace(t.find(bytes), bytes.size(), "\"bytes\": " + std::to_string(header.size()));
    const std::string sum = hash_file(npy);
    REQUIRE(t.find(sum) != std::string::npos);
    t.replace(t.find(sum), sum.size(), hash_hex(header));
    std::ofstream(manifest, std::ios::binary | std::ios::trunc) << t;
    std::ofstream(npy, std::ios::binary | std::ios::trunc) << header;
    std::shared_ptr<const FeatureCache::Entry> e;
    const std::string err = capture_stderr([&] { e = cache.open(fp, "train"); });
    CHECK(e == nullptr);
    CHECK(err.find(" is corrupt (bad manifest: 1 samples x 1 views of features (4611686018427387904) overflow)") !=
          std::string::npos);
  }

  SECTION("a corrupt entry is left alone while a writer holds its lock") {
    write_entry(cache, fp, "train");
    const std::string npy = cache.npy_path(fp, "train");
    REQUIRE(::truncate(npy.c_str(), 100) == 0);
    std::optional<FeatureCache::Writer> w = cache.try_begin(fp, "train", 5, 2, "");
    REQUIRE(w);
    std::shared_ptr<const FeatureCache::Entry> e;
    capture_stderr([&] { e = cache.open(fp, "train"); });
    CHECK(e == nullptr);
    CHECK(exists(npy));
  }

  SECTION("locking: one writer per entry; begin waits for another process") {
    std::optional<FeatureCache::Writer> w1 = cache.try_begin(fp, "train", 1, 1, "");
    REQUIRE(w1);
    CHECK_FALSE(cache.try_begin(fp, "train", 1, 1, ""));
    CHECK(cache.try_begin(fp, "validation", 1, 1, ""));  // other entries are independent
    w1.reset();
    CHECK(cache.try_begin(fp, "train", 1, 1, ""));

    int ready[2];
    REQUIRE(::pipe(ready) == 0);
    const pid_t child = ::fork();
    REQUIRE(child >= 0);
    if (child == 0) {  // holds the lock until the parent is blocked on it, then commits
      int code = 0;
      try {
        FeatureCache c(root);
        FeatureCache::Writer w = c.begin(fp, "train", 1, 1, "from child");
        (void)!::write(ready[1], "x", 1);
        // The kernel lists a process blocked in flock(2) in /proc/locks as "-> FLOCK ... PID".
        // No sleep stands in for "the parent is waiting": this is the parent waiting.
        code = 3;  // the parent never blocked (bounded, so a begin() that does not wait fails)
        const std::string waiter = fmt::format("-> FLOCK  ADVISORY  WRITE {} ", ::getppid());
        for (int i = 0; i < 120000 && code == 3; ++i) {
          std::ifstream locks("/proc/locks");
          for (std::string line; std::getline(locks, line);)
            if (line.find(waiter) != std::string::npos) code = 0;
          if (code == 3) std::this_thread::sleep_for(std::chrono::milliseconds(1));
        }
        w.add(0, 0, 7, row(0, 0));
        w.commit();
      } catch (...) {
        code = 1;
      }
      ::_exit(code);
    }
    char x = 0;
    REQUIRE(::read(ready[0], &x, 1) == 1);
    CHECK_FALSE(cache.try_begin(fp, "train", 1, 1, ""));
    {
      FeatureCache::Writer w = cache.begin(fp, "train", 1, 1, "parent");  // waits for the child
      auto e = cache.open(fp, "train");  // the child finished it meanwhile
      REQUIRE(e);
      CHECK(e->label(0) == 7);
      CHECK(e->description() == "from child");
    }
    int status = 0;
    REQUIRE(::waitpid(child, &status, 0) == child);
    CHECK(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 0);  // 3: the child never saw the parent blocked on the lock
    ::close(ready[0]);
    ::close(ready[1]);
  }

  SECTION("list and remove") {
    CHECK(FeatureCache(tmp.path + "/nowhere").list().empty());
    write_entry(cache, "aaaa1111", "train", 3, 2, {1});
    write_entry(cache, "aaaa1111", "validation", 2, 1);
    write_entry(cache, "aaaa2222", "train", 1, 1);
    write_entry(cache, "bbbb", "test", 2, 1);
    // Not ours: a directory with other files, and a stray file in the root.
    REQUIRE(::mkdir((root + "/notes").c_str(), 0755) == 0);
    std::ofstream(root + "/notes/readme.txt") << "keep me";
    std::ofstream(root + "/stray.txt") << "keep me";
    REQUIRE(::mkdir((root + "/userdata").c_str(), 0755) == 0);  // cache-like names, no lock
    std::ofstream(root + "/userdata/data.json") << "{}";

    const auto all = cache.list();
    REQUIRE(all.size() == 4);
    CHECK(all[0].fingerprint == "aaaa1111");
    CHECK(all[0].split == "train");
    CHECK(all[0].count == 3);
    CHECK(all[0].views == 2);
    CHECK(all[0].skipped == 1);
    CHECK(all[0].feature_shape == std::vector<int64_t>{3, 2});
    CHECK(all[0].description == "test entry aaaa1111");
    CHECK(all[0].bytes > read_all(cache.npy_path("aaaa1111", "train")).size());
    CHECK(all[0].path == cache.npy_path("aaaa1111", "train"));
    CHECK_FALSE(all[0].created.empty());
    CHECK(all[1].split == "validation");
    CHECK(all[2].fingerprint == "aaaa2222");
    CHECK(all[3].fingerprint == "bbbb");

    CHECK_THROWS_AS(cache.remove(""), std::invalid_argument);
    CHECK(cache.remove("zzz").entries == 0);
    const CacheRemoved r = cache.remove("aaaa1");
    CHECK(r.entries == 2);
    CHECK(r.fingerprints == 1);
    CHECK(r.bytes > 0);
    CHECK_FALSE(exists(cache.entry_dir("aaaa1111")));
    CHECK(cache.open("aaaa1111", "train") == nullptr);
    CHECK(cache.list().size() == 2);

    const CacheRemoved rest = cache.remove_all();
    CHECK(rest.entries == 2);
    CHECK(rest.fingerprints == 2);
    CHECK(cache.list().empty());
    CHECK(read_all(root + "/notes/readme.txt") == "keep me");
    CHECK(read_all(root + "/stray.txt") == "keep me");
    CHECK(read_all(root + "/userdata/data.json") == "{}");
  }
}


TEST_CASE("a private cache: owner-only modes whatever the umask, and roots others can write are refused", "[cache]") {
  TempDir tmp;
  const auto mode = [](const std::string& p) {
    struct stat st {};
    REQUIRE(::stat(p.c_str(), &st) == 0);
    return st.st_mode & 07777;
  };
  const auto refused = [](const std::string& root, const char* how) {
    if (std::string(how) == "world")
      return fmt::format("cache directory {0} is writable by every user (mode 0777): anyone could replace cached "
                         "features; run 'chmod o-w {0}' or set PIPE_CACHE_DIR to a private directory "
                         "(docs/security.md)", root);
    return fmt::format("cache directory {0} is writable by its group (mode 0775), who could replace cached features; "
                       "run 'chmod g-w {0}', or set PIPE_CACHE_SHARED=1 to share the cache with the group on purpose "
                       "(docs/security.md)", root);
  };
  EnvGuard env;
  env.set("PIPE_CACHE_SHARED", nullptr);

  SECTION("a fresh cache: directories 0700, files 0600, even under umask 000") {
    const std::string root = tmp.path + "/parent/cache";
    const mode_t old = ::umask(0);
    FeatureCache cache(root);
    write_entry(cache, "abcd", "train");
    ::umask(old);
    CHECK(mode(tmp.path + "/parent") == 0700);
    CHECK(mode(root) == 0700);
    CHECK(mode(cache.entry_dir("abcd")) == 0700);
    for (const char* ext : {".npy", ".json", ".lock"}) {
      INFO(ext);
      CHECK(mode(cache.entry_dir("abcd") + "/train" + ext) == 0600);
    }
    REQUIRE(cache.open("abcd", "train") != nullptr);
  }
  SECTION("a root from an older pipe (0755) is used as it is; its new entries are private") {
    const std::string root = tmp.path + "/old";
    REQUIRE(::mkdir(root.c_str(), 0755) == 0);
    REQUIRE(::chmod(root.c_str(), 0755) == 0);
    FeatureCache cache(root);
    write_entry(cache, "abcd", "train");
    CHECK(mode(root) == 0755);
    CHECK(mode(cache.entry_dir("abcd")) == 0700);
  }
  SECTION("a world- or group-writable root is refused, for reading and for writing") {
    const std::string root = tmp.path + "/open";
    {
      FeatureCache cache(root);
      write_entry(cache, "abcd", "train");
    }
    REQUIRE(::chmod(root.c_str(), 0777) == 0);
    FeatureCache cache(root);
    CHECK_THROWS_WITH(cache.open("abcd", "train"), refused(root, "world"));
    CHECK_THROWS_WITH(cache.begin("ef01", "train", 1, 1, ""), refused(root, "world"));
    REQUIRE(::chmod(root.c_str(), 0775) == 0);
    CHECK_THROWS_WITH(cache.open("abcd", "train"), refused(root, "group"));
    CHECK_THROWS_WITH(cache.begin("ef01", "train", 1, 1, ""), refused(root, "group"));
    CHECK_FALSE(exists(cache.entry_dir("ef01")));
  }
  SECTION("PIPE_CACHE_SHARED=1: a group-writable root is trusted, entries are 0770/0660 in its group") {
    env.set("PIPE_CACHE_SHARED", "1");
    const std::string root = tmp.path + "/team";
    REQUIRE(::mkdir(root.c_str(), 0700) == 0);
    REQUIRE(::chmod(root.c_str(), 02770) == 0);  // the setgid group directory docs/security.md recommends
    FeatureCache cache(root);
    CHECK(cache.shared());
    write_entry(cache, "abcd", "train");
    REQUIRE(cache.open("abcd", "train") != nullptr);
    CHECK(mode(cache.entry_dir("abcd")) == 02770);
    CHECK(mode(cache.npy_path("abcd", "train")) == 0660);
    CHECK(mode(cache.manifest_path("abcd", "train")) == 0660);
    // Every user is not a group: a world-writable root is refused even when shared.
    REQUIRE(::chmod(root.c_str(), 0777) == 0);
    CHECK_THROWS_WITH(cache.open("abcd", "train"), refused(root, "world"));
  }
  SECTION("a root another user owns is refused unless shared") {
    if (::geteuid() != 0) return;  // only root can give a directory away
    const std::string root = tmp.path + "/theirs";
    REQUIRE(::mkdir(root.c_str(), 0700) == 0);
    REQUIRE(::chown(root.c_str(), 65534, 65534) == 0);
    FeatureCache cache(root);
    CHECK_THROWS_WITH(cache.open("abcd", "train"),
                      fmt::format("cache directory {} belongs to another user (uid 65534), who could replace cached "
                                  "features; set PIPE_CACHE_DIR to a directory of your own, or PIPE_CACHE_SHARED=1 to "
                                  "trust a shared cache (docs/security.md)", root));
    env.set("PIPE_CACHE_SHARED", "1");
    CHECK(FeatureCache(root).open("abcd", "train") == nullptr);
  }
}
