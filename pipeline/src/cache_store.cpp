#include "cache_store.h"

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <map>
#include <mutex>
#include <stdexcept>

#include <dirent.h>
#include <fcntl.h>
#include <pwd.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fmt/format.h>
#include <yaml-cpp/yaml.h>

#include "json.h"

#ifndef PIPE_VERSION_STRING
#define PIPE_VERSION_STRING "0.1.0"
#endif

namespace pipeline {

// ---------------------------------------------------------------------------------------
// XXH64 (xxHash specification, 64-bit variant), two seeds.

namespace {

constexpr uint64_t P1 = 0x9E3779B185EBCA87ULL;
constexpr uint64_t P2 = 0xC2B2AE3D27D4EB4FULL;
constexpr uint64_t P3 = 0x165667B19E3779F9ULL;
constexpr uint64_t P4 = 0x85EBCA77C2B2AE63ULL;
constexpr uint64_t P5 = 0x27D4EB2F165667C5ULL;
constexpr uint64_t kSeeds[2] = {0, 0x9E3779B97F4A7C15ULL};

inline uint64_t rotl(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }
inline uint64_t read64(const unsigned char* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];  // little endian on every host
  return v;
}
inline uint32_t read32(const unsigned char* p) {
  return uint32_t(p[0]) | uint32_t(p[1]) << 8 | uint32_t(p[2]) << 16 | uint32_t(p[3]) << 24;
}
inline uint64_t xround(uint64_t acc, uint64_t input) {
  acc += input * P2;
  acc = rotl(acc, 31);
  return acc * P1;
}
inline uint64_t merge_round(uint64_t acc, uint64_t val) {
  acc ^= xround(0, val);
  return acc * P1 + P4;
}

}  // namespace

void Hasher::Lane::reset(uint64_t s) {
  seed = s;
  v[0] = s + P1 + P2;
  v[1] = s + P2;
  v[2] = s;
  v[3] = s - P1;
  total = 0;
}

void Hasher::Lane::stripe(const unsigned char* p) {
  for (int i = 0; i < 4; ++i) v[i] = xround(v[i], read64(p + 8 * i));
}

uint64_t Hasher::Lane::finish(const unsigned char* tail, std::size_t n) const {
  uint64_t h;
  if (total >= 32) {
    h = rotl(v[0], 1) + rotl(v[1], 7) + rotl(v[2], 12) + rotl(v[3], 18);
    for (int i = 0; i < 4; ++i) h = merge_round(h, v[i]);
  } else {
    h = seed + P5;
  }
  h += total;
  const unsigned char* p = tail;
  while (n >= 8) {
    h ^= xround(0, read64(p));
    h = rotl(h, 27) * P1 + P4;
    p += 8;
    n -= 8;
  }
  if (n >= 4) {
    h ^= uint64_t(read32(p)) * P1;
    h = rotl(h, 23) * P2 + P3;
    p += 4;
    n -= 4;
  }
  while (n > 0) {
    h ^= uint64_t(*p) * P5;
    h = rotl(h, 11) * P1;
    ++p;
    --n;
  }
  h ^= h >> 33;
  h *= P2;
  h ^= h >> 29;
  h *= P3;
  h ^= h >> 32;
  return h;
}

Hasher::Hasher() {
  for (int i = 0; i < 2; ++i) lanes_[i].reset(kSeeds[i]);
}

Hasher& Hasher::update(const void* data, std::size_t size) {
  const auto* p = static_cast<const unsigned char*>(data);
  for (Lane& l : lanes_) l.total += size;
  if (buffered_ + size < 32) {
    if (size) std::memcpy(buf_ + buffered_, p, size);
    buffered_ += size;
    return *this;
  }
  if (buffered_) {
    const std::size_t fill = 32 - buffered_;
    std::memcpy(buf_ + buffered_, p, fill);
    for (Lane& l : lanes_) l.stripe(buf_);
    p += fill;
    size -= fill;
    buffered_ = 0;
  }
  while (size >= 32) {
    for (Lane& l : lanes_) l.stripe(p);
    p += 32;
    size -= 32;
  }
  if (size) std::memcpy(buf_, p, size);
  buffered_ = size;
  return *this;
}

Hasher& Hasher::field(std::string_view s) {
  unsigned char len[8];
  uint64_t n = s.size();
  for (int i = 0; i < 8; ++i) len[i] = static_cast<unsigned char>(n >> (8 * i));
  update(len, 8);
  return update(s);
}

std::array<uint64_t, 2> Hasher::digest() const {
  return {lanes_[0].finish(buf_, buffered_), lanes_[1].finish(buf_, buffered_)};
}

std::string Hasher::hex() const {
  const auto d = digest();
  return fmt::format("{:016x}{:016x}", d[0], d[1]);
}

std::string hash_hex(std::string_view bytes) { return Hasher().update(bytes).hex(); }

std::string hash_file(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    throw std::runtime_error(fmt::format("cannot read {}: {}", path, std::strerror(errno)));
  Hasher h;
  std::vector<unsigned char> buf(1 << 20);
  for (;;) {
    const ssize_t n = ::read(fd, buf.data(), buf.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      const int e = errno;
      ::close(fd);
      throw std::runtime_error(fmt::format("cannot read {}: {}", path, std::strerror(e)));
    }
    if (n == 0) break;
    h.update(buf.data(), static_cast<std::size_t>(n));
  }
  ::close(fd);
  return h.hex();
}

// ---------------------------------------------------------------------------------------
// Paths and small file helpers.

std::string resolve_cache_dir(const std::string& stage_dir) {
  const auto env = [](const char* name) -> std::string {
    const char* v = std::getenv(name);
    return v ? std::string(v) : std::string();
  };
  const auto home = [&]() -> std::string {
    std::string h = env("HOME");
    if (!h.empty()) return h;
    if (const passwd* pw = ::getpwuid(::getuid()); pw && pw->pw_dir) return pw->pw_dir;
    return ".";
  };
  if (!stage_dir.empty()) {
    if (stage_dir == "~") return home();
    if (stage_dir.rfind("~/", 0) == 0) return home() + stage_dir.substr(1);
    return stage_dir;
  }
  if (std::string d = env("PIPE_CACHE_DIR"); !d.empty()) return d;
  if (std::string d = env("XDG_CACHE_HOME"); !d.empty()) return d + "/pipe";
  return home() + "/.cache/pipe";
}

namespace {

bool valid_name(const std::string& s) {
  if (s.empty() || s.size() > 200) return false;
  for (char c : s)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-')) return false;
  return true;
}

void check_names(const std::string& fingerprint, const std::string& split) {
  if (!valid_name(fingerprint))
    throw std::invalid_argument(
        fmt::format("cache fingerprint '{}' must be non-empty [A-Za-z0-9_-]", fingerprint));
  if (!valid_name(split))
    throw std::invalid_argument(
        fmt::format("cache split name '{}' must be non-empty [A-Za-z0-9_-]", split));
}

[[noreturn]] void sys_fail(const std::string& what, const std::string& path) {
  throw std::runtime_error(fmt::format("{} {}: {}", what, path, std::strerror(errno)));
}

void make_dirs(const std::string& path) {
  std::string cur;
  std::size_t pos = 0;
  while (pos != std::string::npos) {
    pos = path.find('/', pos + 1);
    cur = path.substr(0, pos);
    if (cur.empty()) continue;
    if (::mkdir(cur.c_str(), 0755) != 0 && errno != EEXIST) sys_fail("cannot create", cur);
  }
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0 || !S_ISDIR(st.st_mode))
    throw std::runtime_error(fmt::format("cache directory {} is not a directory", path));
}

void fsync_dir(const std::string& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return;
  ::fsync(fd);
  ::close(fd);
}

uint64_t file_size(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 ? static_cast<uint64_t>(st.st_size) : 0;
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

std::string utc_now() {
  const std::time_t t = std::time(nullptr);
  std::tm tm {};
  ::gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

// flock(2) on <dir>/<split>.lock. Returns the fd holding the lock, or -1 when `wait` is
// false and another open file description holds it.
int acquire_lock(const std::string& path, bool wait) {
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) sys_fail("cannot open lock file", path);
  for (;;) {
    if (::flock(fd, LOCK_EX | (wait ? 0 : LOCK_NB)) == 0) return fd;
    if (errno == EINTR) continue;
    const int e = errno;
    ::close(fd);
    if (e == EWOULDBLOCK) return -1;
    errno = e;
    sys_fail("cannot lock", path);
  }
}

// The numpy v1.0 header for a float32 C-order array: magic, version, little-endian header
// length, then a Python dict literal padded with spaces (and ended by '\n') so that the
// data starts at a multiple of 64 bytes.
std::string npy_header(const std::vector<int64_t>& shape) {
  std::string dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (i) dict += ", ";
    dict += std::to_string(shape[i]);
  }
  if (shape.size() == 1) dict += ',';
  dict += "), }";
  const std::size_t unpadded = 10 + dict.size() + 1;
  dict.append((64 - unpadded % 64) % 64, ' ');
  dict += '\n';
  if (dict.size() > 0xFFFF) throw std::runtime_error("npy header too long");
  std::string h = "\x93NUMPY";
  h += '\x01';
  h += '\x00';
  h += static_cast<char>(dict.size() & 0xFF);
  h += static_cast<char>(dict.size() >> 8);
  return h + dict;
}

void pwrite_all(int fd, const void* data, std::size_t size, off_t offset, const std::string& path) {
  const auto* p = static_cast<const char*>(data);
  while (size > 0) {
    const ssize_t n = ::pwrite(fd, p, size, offset);
    if (n < 0) {
      if (errno == EINTR) continue;
      sys_fail("cannot write", path);
    }
    p += n;
    size -= static_cast<std::size_t>(n);
    offset += n;
  }
}

std::atomic<uint64_t> g_temp_seq{0};

int64_t product(const std::vector<int64_t>& v) {
  int64_t p = 1;
  for (int64_t d : v) p *= d;
  return p;
}

}  // namespace

// ---------------------------------------------------------------------------------------
// FeatureCache

FeatureCache::FeatureCache(std::string root) : root_(std::move(root)) {
  while (root_.size() > 1 && root_.back() == '/') root_.pop_back();
  if (root_.empty()) throw std::invalid_argument("feature cache root is empty");
}

std::string FeatureCache::entry_dir(const std::string& fingerprint) const {
  return root_ + "/" + fingerprint;
}
std::string FeatureCache::npy_path(const std::string& fingerprint, const std::string& split) const {
  return entry_dir(fingerprint) + "/" + split + ".npy";
}
std::string FeatureCache::manifest_path(const std::string& fingerprint,
                                        const std::string& split) const {
  return entry_dir(fingerprint) + "/" + split + ".json";
}

// ---------------------------------------------------------------------------------------
// Writer

struct FeatureCache::Writer::Impl {
  std::string dir, fingerprint, split, description, npy, manifest, tmp;
  int64_t count = 0;
  int views = 0;
  int lock_fd = -1;
  int fd = -1;
  std::mutex mu;
  bool shape_fixed = false;
  std::vector<int64_t> feature_shape;
  int64_t row_floats = 0;
  std::size_t header_size = 0;
  std::vector<uint8_t> present;  // count * views
  std::vector<int> labels;       // count, -1 until set
  std::map<int64_t, std::string> skips;
  bool committed = false;

  ~Impl() {
    if (fd >= 0) ::close(fd);
    if (!committed && !tmp.empty()) ::unlink(tmp.c_str());
    if (lock_fd >= 0) ::close(lock_fd);  // releases the flock
  }

  // Creates the temp file once the feature shape is known. Caller holds mu.
  void create_file(std::vector<int64_t> shape) {
    feature_shape = std::move(shape);
    row_floats = product(feature_shape);
    shape_fixed = true;
    std::vector<int64_t> full{count, views};
    full.insert(full.end(), feature_shape.begin(), feature_shape.end());
    const std::string header = npy_header(full);
    header_size = header.size();
    tmp = fmt::format("{}.tmp.{}.{}", npy, ::getpid(), g_temp_seq.fetch_add(1));
    fd = ::open(tmp.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0) {
      const std::string t = tmp;
      tmp.clear();
      sys_fail("cannot create", t);
    }
    const off_t total = static_cast<off_t>(header_size) +
                        static_cast<off_t>(count) * views * row_floats *
                            static_cast<off_t>(sizeof(float));
    if (::ftruncate(fd, total) != 0) sys_fail("cannot size", tmp);
    pwrite_all(fd, header.data(), header.size(), 0, tmp);
  }
};

FeatureCache::Writer::Writer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
FeatureCache::Writer::Writer(Writer&&) noexcept = default;
FeatureCache::Writer& FeatureCache::Writer::operator=(Writer&&) noexcept = default;
FeatureCache::Writer::~Writer() = default;

const std::string& FeatureCache::Writer::fingerprint() const { return impl_->fingerprint; }
const std::string& FeatureCache::Writer::split() const { return impl_->split; }
bool FeatureCache::Writer::committed() const {
  std::lock_guard<std::mutex> g(impl_->mu);
  return impl_->committed;
}

void FeatureCache::Writer::add(int64_t id, int view, int label, const Tensor& features) {
  Impl& w = *impl_;
  if (!features.defined())
    throw std::invalid_argument(fmt::format("cache {}/{}: sample {} view {} has no features",
                                            w.fingerprint, w.split, id, view));
  int64_t idx = 0;
  off_t offset = 0;
  {
    std::lock_guard<std::mutex> g(w.mu);
    if (w.committed) throw std::logic_error("cache writer: add after commit");
    if (id < 0 || id >= w.count)
      throw std::out_of_range(fmt::format("cache {}/{}: sample id {} is outside [0, {})",
                                          w.fingerprint, w.split, id, w.count));
    if (view < 0 || view >= w.views)
      throw std::out_of_range(fmt::format("cache {}/{}: view {} is outside [0, {})",
                                          w.fingerprint, w.split, view, w.views));
    if (!w.shape_fixed) w.create_file(features.shape);
    else if (features.shape != w.feature_shape)
      throw std::invalid_argument(fmt::format(
          "cache {}/{}: sample {} has features {} but earlier samples have ({})", w.fingerprint,
          w.split, id, features.shape_string(), fmt::join(w.feature_shape, ", ")));
    idx = id * w.views + view;
    if (w.present[static_cast<std::size_t>(idx)])
      throw std::logic_error(fmt::format("cache {}/{}: sample {} view {} added twice",
                                         w.fingerprint, w.split, id, view));
    int& l = w.labels[static_cast<std::size_t>(id)];
    if (l != -1 && l != label)
      throw std::invalid_argument(fmt::format("cache {}/{}: sample {} has labels {} and {}",
                                              w.fingerprint, w.split, id, l, label));
    l = label;
    w.present[static_cast<std::size_t>(idx)] = 1;
    offset = static_cast<off_t>(w.header_size) +
             static_cast<off_t>(idx) * w.row_floats * static_cast<off_t>(sizeof(float));
  }
  try {
    pwrite_all(w.fd, features.ptr(), static_cast<std::size_t>(w.row_floats) * sizeof(float),
               offset, w.tmp);
  } catch (...) {
    std::lock_guard<std::mutex> g(w.mu);
    w.present[static_cast<std::size_t>(idx)] = 0;
    throw;
  }
}

void FeatureCache::Writer::skip(int64_t id, const std::string& reason) {
  Impl& w = *impl_;
  std::lock_guard<std::mutex> g(w.mu);
  if (w.committed) throw std::logic_error("cache writer: skip after commit");
  if (id < 0 || id >= w.count)
    throw std::out_of_range(fmt::format("cache {}/{}: sample id {} is outside [0, {})",
                                        w.fingerprint, w.split, id, w.count));
  w.skips.emplace(id, reason);
}

void FeatureCache::Writer::commit() {
  Impl& w = *impl_;
  std::lock_guard<std::mutex> g(w.mu);
  if (w.committed) throw std::logic_error("cache writer: commit called twice");

  int64_t missing = 0, first_id = -1;
  int first_view = -1;
  for (int64_t id = 0; id < w.count; ++id) {
    if (w.skips.count(id)) continue;
    for (int v = 0; v < w.views; ++v)
      if (!w.present[static_cast<std::size_t>(id * w.views + v)]) {
        if (missing++ == 0) first_id = id, first_view = v;
      }
  }
  if (missing)
    throw std::logic_error(fmt::format(
        "cache {}/{}: cannot commit: {} of {} rows missing (first: sample {} view {})",
        w.fingerprint, w.split, missing, w.count * w.views, first_id, first_view));

  if (!w.shape_fixed) w.create_file({0});  // nothing added: every sample skipped, or N = 0

  if (::fsync(w.fd) != 0) sys_fail("cannot sync", w.tmp);
  // Checksum of the whole file as written (header + rows), read back from the page cache.
  Hasher h;
  std::vector<unsigned char> buf(1 << 20);
  uint64_t size = 0;
  for (;;) {
    const ssize_t n = ::pread(w.fd, buf.data(), buf.size(), static_cast<off_t>(size));
    if (n < 0) {
      if (errno == EINTR) continue;
      sys_fail("cannot read back", w.tmp);
    }
    if (n == 0) break;
    h.update(buf.data(), static_cast<std::size_t>(n));
    size += static_cast<uint64_t>(n);
  }
  if (::close(w.fd) != 0) {
    w.fd = -1;
    sys_fail("cannot close", w.tmp);
  }
  w.fd = -1;

  Json skipped = Json::array();
  for (const auto& [id, reason] : w.skips) {
    Json o = Json::object();
    o.set("id", id);
    o.set("reason", reason);
    skipped.push(std::move(o));
  }
  Json labels = Json::array();
  for (int l : w.labels) labels.push(l);
  Json shape = Json::array();
  for (int64_t d : w.feature_shape) shape.push(d);

  Json m = Json::object();
  m.set("format", "pipe feature cache");
  m.set("format_version", 1);
  m.set("fingerprint", w.fingerprint);
  m.set("description", w.description);
  m.set("split", w.split);
  m.set("count", w.count);
  m.set("views", w.views);
  m.set("feature_shape", std::move(shape));
  m.set("dtype", "float32");
  m.set("file", w.split + ".npy");
  m.set("header_bytes", static_cast<int64_t>(w.header_size));
  m.set("bytes", size);
  m.set("checksum", h.hex());
  m.set("checksum_algorithm", "xxh64x2 (seeds 0, 0x9e3779b97f4a7c15) of the whole .npy file");
  m.set("labels", std::move(labels));
  m.set("skipped", std::move(skipped));
  m.set("created", utc_now());
  m.set("pipe_version", PIPE_VERSION_STRING);

  // Hide any older entry first, so that a reader never pairs an old manifest with the new
  // data; then data, then the manifest that makes the entry visible.
  if (::unlink(w.manifest.c_str()) != 0 && errno != ENOENT) sys_fail("cannot replace", w.manifest);
  if (std::rename(w.tmp.c_str(), w.npy.c_str()) != 0) sys_fail("cannot rename into place", w.tmp);
  w.tmp.clear();
  try {
    write_file_atomic(w.manifest, m.dump(1) + "\n");
  } catch (...) {
    // No manifest (a full disk): the data without it is no entry, only space that a full
    // disk needs back. Any older entry was already hidden above.
    ::unlink(w.npy.c_str());
    throw;
  }
  fsync_dir(w.dir);
  w.committed = true;
}

std::optional<FeatureCache::Writer> FeatureCache::start(const std::string& fingerprint,
                                                        const std::string& split,
                                                        int64_t count, int views,
                                                        const std::string& description,
                                                        bool wait) {
  check_names(fingerprint, split);
  if (count < 0) throw std::invalid_argument("cache writer: negative sample count");
  if (views < 1) throw std::invalid_argument("cache writer: views must be at least 1");
  auto w = std::make_unique<Writer::Impl>();
  w->dir = entry_dir(fingerprint);
  make_dirs(w->dir);
  w->lock_fd = acquire_lock(w->dir + "/" + split + ".lock", wait);
  if (w->lock_fd < 0) return std::nullopt;
  // Every writer of this entry holds the lock we now hold, so any temp file of it that exists
  // was left by a writer that died (SIGKILL, power loss): remove it.
  {
    std::error_code ec;
    const std::string prefix = split + ".";
    for (const auto& e : std::filesystem::directory_iterator(w->dir, ec)) {
      const std::string name = e.path().filename().string();
      if (name.rfind(prefix, 0) == 0 && name.find(".tmp") != std::string::npos)
        std::filesystem::remove(e.path(), ec);
    }
  }
  w->fingerprint = fingerprint;
  w->split = split;
  w->description = description;
  w->npy = npy_path(fingerprint, split);
  w->manifest = manifest_path(fingerprint, split);
  w->count = count;
  w->views = views;
  w->present.assign(static_cast<std::size_t>(count * views), 0);
  w->labels.assign(static_cast<std::size_t>(count), -1);
  return Writer(std::move(w));
}

FeatureCache::Writer FeatureCache::begin(const std::string& fingerprint, const std::string& split,
                                         int64_t count, int views,
                                         const std::string& description) {
  return std::move(*start(fingerprint, split, count, views, description, true));
}

std::optional<FeatureCache::Writer> FeatureCache::try_begin(const std::string& fingerprint,
                                                            const std::string& split,
                                                            int64_t count, int views,
                                                            const std::string& description) {
  return start(fingerprint, split, count, views, description, false);
}

// ---------------------------------------------------------------------------------------
// Reader

// Pages of a file mapping that the process has touched count in its RSS until unmapped, so
// reading a cache through a plain mapping would make a run's RSS grow with the cache size,
// not with what it uses. The mapping is read-only, shared and backed by a file that never
// changes while mapped (writers rename a new file into place), so dropping resident pages
// with MADV_DONTNEED loses nothing: a later access faults the same bytes back in from the
// page cache. Readers keep their views valid across a drop; only the RSS accounting changes.
struct FeatureCache::Entry::Mapping {
  void* addr = nullptr;
  std::size_t size = 0;
  std::atomic<uint64_t> served{0};
  Mapping(void* a, std::size_t s) : addr(a), size(s) {}
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;
  ~Mapping() {
    if (addr && addr != MAP_FAILED) ::munmap(addr, size);
  }
  void drop(std::size_t offset, std::size_t length) const {
    const std::size_t page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
    const std::size_t begin = offset / page * page;
    const std::size_t end = std::min(size, offset + length);
    if (end > begin)
      ::madvise(static_cast<char*>(addr) + begin, end - begin, MADV_DONTNEED);
  }
  // Called for every row handed out: after each kDropWindow bytes, drops the whole mapping,
  // so at most about that much of it stays resident however large the file is. A fault on
  // a file mapping maps the cached pages around it too (the kernel's fault-around, 64 KiB by
  // default), so a row read in random order can make far more than its own size resident:
  // each read is charged that much.
  void note_read(std::size_t bytes) {
    constexpr std::size_t kFaultAround = std::size_t{64} << 10;
    bytes += kFaultAround;
    const uint64_t before = served.fetch_add(bytes, std::memory_order_relaxed);
    if ((before + bytes) / kDropWindow != before / kDropWindow) drop(0, size);
  }
};

namespace {

struct Corrupt : std::runtime_error {
  std::string file;
  Corrupt(std::string f, const std::string& why) : std::runtime_error(why), file(std::move(f)) {}
};

}  // namespace

std::shared_ptr<const FeatureCache::Entry> FeatureCache::open(const std::string& fingerprint,
                                                              const std::string& split) const {
  check_names(fingerprint, split);
  const std::string manifest = manifest_path(fingerprint, split);
  const std::string npy = npy_path(fingerprint, split);
  struct stat st {};
  if (::stat(manifest.c_str(), &st) != 0) return nullptr;  // missing (or being replaced)

  try {
    YAML::Node m;
    try {
      m = YAML::LoadFile(manifest);
    } catch (const std::exception& e) {
      throw Corrupt(manifest, fmt::format("unreadable manifest: {}", e.what()));
    }
    auto e = std::shared_ptr<Entry>(new Entry());
    uint64_t bytes = 0;
    std::string checksum;
    try {
      if (!m.IsMap()) throw std::runtime_error("not a JSON object");
      if (m["fingerprint"].as<std::string>() != fingerprint)
        throw std::runtime_error("fingerprint does not match its directory");
      if (m["split"].as<std::string>() != split)
        throw std::runtime_error("split does not match its file name");
      if (m["dtype"].as<std::string>() != "float32") throw std::runtime_error("dtype is not float32");
      e->count_ = m["count"].as<int64_t>();
      e->views_ = m["views"].as<int>();
      e->feature_shape_ = m["feature_shape"].as<std::vector<int64_t>>();
      e->description_ = m["description"].as<std::string>();
      bytes = m["bytes"].as<uint64_t>();
      checksum = m["checksum"].as<std::string>();
      e->labels_ = m["labels"].as<std::vector<int>>();
      for (const YAML::Node& s : m["skipped"])
        e->skips_.push_back({s["id"].as<int64_t>(), s["reason"].as<std::string>()});
    } catch (const std::exception& ex) {
      throw Corrupt(manifest, fmt::format("bad manifest: {}", ex.what()));
    }
    if (e->count_ < 0 || e->views_ < 1 || static_cast<int64_t>(e->labels_.size()) != e->count_)
      throw Corrupt(manifest, "bad manifest: count, views and labels disagree");
    for (int64_t d : e->feature_shape_)
      if (d < 0) throw Corrupt(manifest, "bad manifest: negative feature dimension");
    e->skip_index_.assign(static_cast<std::size_t>(e->count_), -1);
    std::sort(e->skips_.begin(), e->skips_.end(),
              [](const CacheSkip& a, const CacheSkip& b) { return a.id < b.id; });
    for (std::size_t i = 0; i < e->skips_.size(); ++i) {
      const int64_t id = e->skips_[i].id;
      if (id < 0 || id >= e->count_) throw Corrupt(manifest, "bad manifest: skipped id out of range");
      e->skip_index_[static_cast<std::size_t>(id)] = static_cast<int32_t>(i);
    }

    std::vector<int64_t> full{e->count_, e->views_};
    full.insert(full.end(), e->feature_shape_.begin(), e->feature_shape_.end());
    const std::string header = npy_header(full);
    e->row_floats_ = product(e->feature_shape_);
    const uint64_t expected =
        header.size() + static_cast<uint64_t>(e->count_) * static_cast<uint64_t>(e->views_) *
                            static_cast<uint64_t>(e->row_floats_) * sizeof(float);
    if (expected != bytes)
      throw Corrupt(manifest, fmt::format("bad manifest: shape needs {} bytes, manifest says {}",
                                          expected, bytes));

    const int fd = ::open(npy.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) throw Corrupt(npy, fmt::format("cannot open: {}", std::strerror(errno)));
    if (::fstat(fd, &st) != 0 || static_cast<uint64_t>(st.st_size) != bytes) {
      const uint64_t actual = static_cast<uint64_t>(st.st_size);
      ::close(fd);
      throw Corrupt(npy, fmt::format("{} bytes, manifest says {}", actual, bytes));
    }
    void* addr = ::mmap(nullptr, bytes, PROT_READ, MAP_SHARED, fd, 0);
    const int map_errno = errno;
    ::close(fd);
    if (addr == MAP_FAILED)
      throw Corrupt(npy, fmt::format("cannot map: {}", std::strerror(map_errno)));
    auto mapping = std::make_shared<Entry::Mapping>(addr, bytes);
    const auto* base = static_cast<const unsigned char*>(addr);
    if (std::memcmp(base, header.data(), header.size()) != 0)
      throw Corrupt(npy, "npy header does not match the manifest");
    // Verified chunk by chunk, each dropped once hashed: checking a file must not leave all
    // of it resident (see Mapping).
    ::madvise(addr, bytes, MADV_SEQUENTIAL);
    Hasher hasher;
    for (uint64_t off = 0; off < bytes; off += Entry::kDropWindow) {
      const auto len = static_cast<std::size_t>(std::min<uint64_t>(Entry::kDropWindow, bytes - off));
      hasher.update(base + off, len);
      mapping->drop(static_cast<std::size_t>(off), len);
    }
    ::madvise(addr, bytes, MADV_NORMAL);
    const std::string sum = hasher.hex();
    if (sum != checksum)
      throw Corrupt(npy, fmt::format("checksum {} but manifest says {}", sum, checksum));

    e->fingerprint_ = fingerprint;
    e->split_ = split;
    e->path_ = npy;
    e->rows_ = reinterpret_cast<const float*>(base + header.size());
    e->mapping_ = std::move(mapping);
    return e;
  } catch (const Corrupt& c) {
    std::fprintf(stderr, "pipe: warning: cache file %s is corrupt (%s); removing the entry, "
                 "it will be recomputed\n", c.file.c_str(), c.what());
    std::fflush(stderr);
    // Remove only when no writer holds the lock (a writer is about to replace the files).
    const int lock = acquire_lock(entry_dir(fingerprint) + "/" + split + ".lock", false);
    if (lock >= 0) {
      ::unlink(manifest.c_str());
      ::unlink(npy.c_str());
      ::close(lock);
    }
    return nullptr;
  }
}

// ---------------------------------------------------------------------------------------
// Entry

int FeatureCache::Entry::label(int64_t id) const {
  if (id < 0 || id >= count_)
    throw std::out_of_range(fmt::format("cache {}/{}: sample id {} is outside [0, {})",
                                        fingerprint_, split_, id, count_));
  return labels_[static_cast<std::size_t>(id)];
}

bool FeatureCache::Entry::skipped(int64_t id) const {
  if (id < 0 || id >= count_)
    throw std::out_of_range(fmt::format("cache {}/{}: sample id {} is outside [0, {})",
                                        fingerprint_, split_, id, count_));
  return skip_index_[static_cast<std::size_t>(id)] >= 0;
}

const std::string& FeatureCache::Entry::skip_reason(int64_t id) const {
  static const std::string none;
  if (!skipped(id)) return none;
  return skips_[static_cast<std::size_t>(skip_index_[static_cast<std::size_t>(id)])].reason;
}

Tensor FeatureCache::Entry::features(int64_t id, int view) const {
  if (view < 0 || view >= views_)
    throw std::out_of_range(fmt::format("cache {}/{}: view {} is outside [0, {})", fingerprint_,
                                        split_, view, views_));
  if (skipped(id))
    throw std::logic_error(fmt::format("cache {}/{}: sample {} was skipped ({})", fingerprint_,
                                       split_, id, skip_reason(id)));
  Tensor t;
  t.shape = feature_shape_;
  const float* row = rows_ + (id * views_ + view) * row_floats_;
  mapping_->note_read(static_cast<std::size_t>(row_floats_) * sizeof(float));
  t.data = std::shared_ptr<const float>(mapping_, row);  // aliasing: keeps the mapping alive
  return t;
}

// ---------------------------------------------------------------------------------------
// Listing and removal

namespace {

// A file name the cache writes: <split>.npy, <split>.json, <split>.lock, or a temp file.
bool cache_file_name(const std::string& name) {
  for (const char* ext : {".npy", ".json", ".lock"}) {
    const std::size_t p = name.find(ext);
    if (p == std::string::npos || p == 0) continue;
    const std::string rest = name.substr(p + std::strlen(ext));
    if (valid_name(name.substr(0, p)) && (rest.empty() || rest.rfind(".tmp.", 0) == 0))
      return true;
  }
  return false;
}

std::vector<std::string> list_dir(const std::string& dir) {
  std::vector<std::string> out;
  DIR* d = ::opendir(dir.c_str());
  if (!d) return out;
  while (const dirent* e = ::readdir(d)) {
    const std::string n = e->d_name;
    if (n != "." && n != "..") out.push_back(n);
  }
  ::closedir(d);
  std::sort(out.begin(), out.end());
  return out;
}

bool is_dir(const std::string& path) {
  struct stat st {};
  return ::lstat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}
bool is_file(const std::string& path) {
  struct stat st {};
  return ::lstat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

// Fingerprint directories under root: valid names, holding only regular files that the
// cache writes, among them at least one lock file. Anything else (a cache dir pointed at a home directory...) is not ours.
std::vector<std::string> entry_dirs(const std::string& root) {
  std::vector<std::string> out;
  for (const std::string& name : list_dir(root)) {
    const std::string dir = root + "/" + name;
    if (!valid_name(name) || !is_dir(dir)) continue;
    const auto files = list_dir(dir);
    if (files.empty()) continue;
    bool ours = true, locked = false;
    for (const std::string& f : files) {
      if (!cache_file_name(f) || !is_file(dir + "/" + f)) ours = false;
      if (ends_with(f, ".lock")) locked = true;  // every writer creates one first
    }
    if (ours && locked) out.push_back(name);
  }
  return out;
}

}  // namespace

std::vector<CacheEntryInfo> FeatureCache::list() const {
  std::vector<CacheEntryInfo> out;
  for (const std::string& fp : entry_dirs(root_)) {
    for (const std::string& f : list_dir(entry_dir(fp))) {
      if (!ends_with(f, ".json")) continue;
      const std::string split = f.substr(0, f.size() - 5);
      if (!valid_name(split)) continue;
      try {
        const YAML::Node m = YAML::LoadFile(manifest_path(fp, split));
        CacheEntryInfo info;
        info.fingerprint = fp;
        info.split = split;
        info.count = m["count"].as<int64_t>();
        info.views = m["views"].as<int>();
        info.feature_shape = m["feature_shape"].as<std::vector<int64_t>>();
        info.skipped = static_cast<int64_t>(m["skipped"].size());
        info.description = m["description"].as<std::string>();
        info.created = m["created"].as<std::string>();
        info.path = npy_path(fp, split);
        info.bytes = file_size(info.path) + file_size(manifest_path(fp, split));
        out.push_back(std::move(info));
      } catch (const std::exception&) {
        // Not a manifest we can read: not listed (open() would report and remove it).
      }
    }
  }
  return out;
}

namespace {

// Deletes one fingerprint directory: manifests first, so that each entry stops being
// complete before its data goes.
void remove_entry_dir(const std::string& dir, CacheRemoved& r) {
  auto files = list_dir(dir);
  std::stable_partition(files.begin(), files.end(),
                        [](const std::string& f) { return ends_with(f, ".json"); });
  for (const std::string& f : files) {
    const std::string path = dir + "/" + f;
    const uint64_t size = file_size(path);
    if (::unlink(path.c_str()) == 0) {
      r.bytes += size;
      if (ends_with(f, ".json") && f.find(".tmp.") == std::string::npos) ++r.entries;
    }
  }
  if (::rmdir(dir.c_str()) == 0) ++r.fingerprints;
}

}  // namespace

CacheRemoved FeatureCache::remove(const std::string& fingerprint_prefix) {
  if (fingerprint_prefix.empty())
    throw std::invalid_argument("cache remove: empty fingerprint prefix (use remove_all)");
  CacheRemoved r;
  for (const std::string& fp : entry_dirs(root_))
    if (fp.rfind(fingerprint_prefix, 0) == 0) remove_entry_dir(entry_dir(fp), r);
  return r;
}

CacheRemoved FeatureCache::remove_all() {
  CacheRemoved r;
  for (const std::string& fp : entry_dirs(root_)) remove_entry_dir(entry_dir(fp), r);
  return r;
}

}  // namespace pipeline
