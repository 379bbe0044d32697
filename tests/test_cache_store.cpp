// The content-addressed feature cache: hashing, cache dir resolution, the npy + manifest
// round trip, corruption detection, incomplete writers, locking, list/remove, and the
// `cache` stage's parameters.
#include <catch2/catch.hpp>

#include <algorithm>
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

#include <yaml-cpp/yaml.h>

#include "cache.h"
#include "cache_store.h"
#include "testing.h"

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

// File-backed resident memory of this process (RssFile in /proc/self/status), KiB.
int64_t rss_file_kib() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("RssFile:", 0) == 0) return std::stoll(line.substr(8));
  return -1;
}

}  // namespace

TEST_CASE("cache hash and cache dir resolution", "[cache]") {
  SECTION("XXH64 lanes match the reference vectors; streaming equals one shot") {
    CHECK(Hasher().digest()[0] == 0xEF46DB3751D8E999ULL);  // XXH64("", 0)
    CHECK(Hasher().update("abc").digest()[0] == 0x44BC2CF5AD770999ULL);  // XXH64("abc", 0)
    CHECK(Hasher().digest()[0] != Hasher().digest()[1]);
    const std::string h = hash_hex("hello");
    CHECK(h.size() == 32);
    CHECK(h.find_first_not_of("0123456789abcdef") == std::string::npos);
    CHECK(h == hash_hex("hello"));
    CHECK(h != hash_hex("hellp"));

    std::string data(1000, '\0');
    for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<char>((i * 7919) >> 3);
    const std::string whole = hash_hex(data);
    for (size_t cut : {size_t(1), size_t(31), size_t(32), size_t(33), size_t(500), size_t(999)}) {
      Hasher s;
      s.update(data.substr(0, cut)).update(data.substr(cut));
      CHECK(s.hex() == whole);
    }
    Hasher bytewise;
    for (char c : data) bytewise.update(&c, 1);
    CHECK(bytewise.hex() == whole);
    CHECK(Hasher().field("ab").field("c").hex() != Hasher().field("a").field("bc").hex());

    TempDir tmp;
    const std::string f = tmp.path + "/blob";
    std::ofstream(f, std::ios::binary) << data;
    CHECK(hash_file(f) == whole);
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
    const YAML::Node m = YAML::LoadFile(cache.manifest_path(fp, "train"));
    CHECK(m["fingerprint"].as<std::string>() == fp);
    CHECK(m["split"].as<std::string>() == "train");
    CHECK(m["count"].as<int>() == 5);
    CHECK(m["views"].as<int>() == 2);
    CHECK(m["dtype"].as<std::string>() == "float32");
    CHECK(m["feature_shape"].as<std::vector<int64_t>>() == std::vector<int64_t>{3, 2});
    CHECK(m["labels"].as<std::vector<int>>() == std::vector<int>{0, 1, 0, -1, 0});
    CHECK(m["skipped"][0]["id"].as<int>() == 3);
    CHECK(m["skipped"][0]["reason"].as<std::string>() == "unreadable #3");
    CHECK(m["bytes"].as<uint64_t>() == read_all(cache.npy_path(fp, "train")).size());
    CHECK(m["checksum"].as<std::string>() == hash_file(cache.npy_path(fp, "train")));
    CHECK(m["created"].as<std::string>().size() == 20);
    CHECK_FALSE(m["pipe_version"].as<std::string>().empty());
  }

  SECTION("a large entry is verified and read without staying resident") {
    // 6,000 rows of 8 KiB: 47 MiB of file. Touched pages of a mapping count in the RSS, so a
    // reader that hashed or served the file through a plain mapping would hold all of it.
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
    const int64_t before = rss_file_kib();
    REQUIRE(before >= 0);
    int64_t peak = before;
    std::shared_ptr<const FeatureCache::Entry> e = cache.open(fp, "big");
    REQUIRE(e);
    peak = std::max(peak, rss_file_kib());
    double sum = 0, expected = 0;
    // In a scattered order, as epochs read: each fault maps the pages around it as well.
    for (int64_t i = 0; i < count; ++i) {
      const int64_t id = i * 7919 % count;
      const Tensor t = e->features(id, 0);
      for (int64_t k = 0; k < floats; k += 512) {
        sum += t.ptr()[k];
        expected += float(id) + float(k);
      }
      if (i % 250 == 0) peak = std::max(peak, rss_file_kib());
    }
    CHECK(sum == expected);
    INFO("file-backed RSS before open " << before << " KiB, peak " << peak << " KiB");
    CHECK(peak - before < 20 * 1024);  // the 8 MiB drop window plus fault-around, not 47 MiB
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
    if (child == 0) {  // holds the lock for a while, then commits
      int code = 0;
      try {
        FeatureCache c(root);
        FeatureCache::Writer w = c.begin(fp, "train", 1, 1, "from child");
        (void)!::write(ready[1], "x", 1);
        std::this_thread::sleep_for(std::chrono::milliseconds(300));
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
    const auto t0 = std::chrono::steady_clock::now();
    {
      FeatureCache::Writer w = cache.begin(fp, "train", 1, 1, "parent");  // waits
      CHECK(std::chrono::steady_clock::now() - t0 > std::chrono::milliseconds(100));
      auto e = cache.open(fp, "train");  // the child finished it meanwhile
      REQUIRE(e);
      CHECK(e->label(0) == 7);
      CHECK(e->description() == "from child");
    }
    int status = 0;
    REQUIRE(::waitpid(child, &status, 0) == child);
    CHECK(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 0);
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

TEST_CASE("cache stage parameters", "[cache][stage]") {
  using stages::CacheStage;
  auto plain = testing::make<CacheStage>("{stage: cache}", "memo", 5, "/graphs");
  CHECK(plain->views() == 0);
  CHECK(plain->dir().empty());
  CHECK(plain->root() == resolve_cache_dir(""));
  CHECK(plain->stored_views(Split::train) == 1);
  CHECK(plain->view_for(3, 10) == 0);

  auto k = testing::make<CacheStage>("{stage: cache, views: 4, dir: features}", "memo", 5, "/graphs");
  CHECK(k->dir() == "/graphs/features");
  CHECK(k->root() == "/graphs/features");
  CHECK(k->stored_views(Split::train) == 4);
  CHECK(k->stored_views(Split::validation) == 1);
  CHECK(k->stored_views(Split::test) == 1);
  std::vector<int> seen(4, 0);
  for (int epoch = 1; epoch <= 5; ++epoch)
    for (int64_t id = 0; id < 40; ++id) {
      const int v = k->view_for(epoch, id);
      REQUIRE(v >= 0);
      REQUIRE(v < 4);
      CHECK(v == k->view_for(epoch, id));  // a pure function of (seed, node, epoch, id)
      ++seen[static_cast<size_t>(v)];
    }
  for (int n : seen) CHECK(n > 20);  // every view is used (200 picks, ~50 each)

  auto abs = testing::make<CacheStage>("{stage: cache, dir: /abs/dir}", "memo", 5, "/graphs");
  CHECK(abs->root() == "/abs/dir");
  CHECK_THROWS(testing::make<CacheStage>("{stage: cache, views: -1}"));
}
