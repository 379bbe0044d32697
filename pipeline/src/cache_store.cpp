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
#include <fstream>
#include <limits>
#include <map>
#include <mutex>
#include <new>
#include <stdexcept>
#include <type_traits>

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define XXH_STATIC_LINKING_ONLY  // XXH3_state_t's definition, for Hasher's inline state
#include <xxhash.h>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "files.h"
#include "home_dir.h"


namespace pipeline {

// ---------------------------------------------------------------------------------------
// XXH3-128 (libxxhash), streamed.

namespace {

static_assert(alignof(XXH3_state_t) <= 64, "Hasher::state_ is not aligned enough for XXH3_state_t");
static_assert(std::is_trivially_copyable_v<XXH3_state_t>, "a Hasher copy must copy the XXH3 state");

XXH3_state_t* xxh3(unsigned char* storage) {
  return std::launder(reinterpret_cast<XXH3_state_t*>(storage));
}
const XXH3_state_t* xxh3(const unsigned char* storage) {
  return std::launder(reinterpret_cast<const XXH3_state_t*>(storage));
}

}  // namespace

Hasher::Hasher() {
  static_assert(sizeof(XXH3_state_t) <= sizeof(state_), "Hasher::state_ is too small for XXH3_state_t");
  new (state_) XXH3_state_t;
  if (XXH3_128bits_reset(xxh3(state_)) != XXH_OK) throw std::logic_error("XXH3_128bits_reset failed");
}

Hasher& Hasher::update(const void* data, std::size_t size) {
  if (size == 0) return *this;  // data may be null then
  if (XXH3_128bits_update(xxh3(state_), data, size) != XXH_OK)
    throw std::logic_error("XXH3_128bits_update failed");
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
  const XXH128_hash_t h = XXH3_128bits_digest(xxh3(state_));
  return {h.high64, h.low64};
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
  const auto home = home_dir;
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

// flock(2) on <dir>/<split>.lock. Returns the fd holding the lock, or -1 when `wait` is
// false and another open file description holds it.
// A lock file this process owns gets `mode` (one another user made, in a shared cache, is
// theirs to set).
int acquire_lock(const std::string& path, bool wait, mode_t mode) {
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, mode);
  if (fd < 0) sys_fail("cannot open lock file", path);
  struct stat st {};
  if (::fstat(fd, &st) == 0 && st.st_uid == ::geteuid() && (st.st_mode & 07777) != mode && ::fchmod(fd, mode) != 0) {
    const int e = errno;
    ::close(fd);
    errno = e;
    sys_fail("cannot set the mode of", path);
  }
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

// The manifest's format_version. 2: XXH3-128 checksums (libxxhash). 1 (before): XXH64 under
// two seeds. open() treats any other version as another format: warning, removed, recomputed.
constexpr int kFormatVersion = 2;
constexpr const char* kFormatName = "pipe feature cache";

// The rows of an entry: floats per row (product of the feature shape) and the bytes of all
// count x views rows, or nullopt when a dimension is negative or any product overflows
// (a manifest can claim any shape; the sizes are computed before anything is allocated).
struct RowSizes {
  int64_t row_floats = 0;
  uint64_t data_bytes = 0;
};
std::optional<RowSizes> row_sizes(int64_t count, int64_t views, const std::vector<int64_t>& shape) {
  if (count < 0 || views < 0) return std::nullopt;
  RowSizes r;
  r.row_floats = 1;
  for (int64_t d : shape)
    if (d < 0 || __builtin_mul_overflow(r.row_floats, d, &r.row_floats)) return std::nullopt;
  uint64_t b = 0;
  if (__builtin_mul_overflow(static_cast<uint64_t>(count), static_cast<uint64_t>(views), &b) ||
      __builtin_mul_overflow(b, static_cast<uint64_t>(r.row_floats), &b) ||
      __builtin_mul_overflow(b, uint64_t{sizeof(float)}, &b) ||
      b > static_cast<uint64_t>(std::numeric_limits<int64_t>::max() / 2))  // off_t, with the header
    return std::nullopt;
  r.data_bytes = b;
  return r;
}

}  // namespace

// ---------------------------------------------------------------------------------------
// FeatureCache

FeatureCache::FeatureCache(std::string root) : root_(std::move(root)) {
  while (root_.size() > 1 && root_.back() == '/') root_.pop_back();
  if (root_.empty()) throw std::invalid_argument("feature cache root is empty");
  const char* shared = std::getenv("PIPE_CACHE_SHARED");
  shared_ = shared && *shared && std::string(shared) != "0";
}

// Whoever can write the root can replace an entry (a manifest and its checksum are easy to
// forge): features computed from someone else's images would then train this user's model.
void FeatureCache::check_root() const {
  struct stat st {};
  if (::stat(root_.c_str(), &st) != 0) {
    if (errno == ENOENT) return;
    sys_fail("cannot inspect cache directory", root_);
  }
  const unsigned mode = st.st_mode & 07777;
  if (st.st_mode & S_IWOTH)
    throw std::runtime_error(fmt::format(
        "cache directory {} is writable by every user (mode {:04o}): anyone could replace cached features; "
        "run 'chmod o-w {}' or set PIPE_CACHE_DIR to a private directory (docs/security.md)", root_, mode, root_));
  if (shared_) return;
  if (st.st_uid != ::geteuid())
    throw std::runtime_error(fmt::format(
        "cache directory {} belongs to another user (uid {}), who could replace cached features; set "
        "PIPE_CACHE_DIR to a directory of your own, or PIPE_CACHE_SHARED=1 to trust a shared cache "
        "(docs/security.md)", root_, st.st_uid));
  if (st.st_mode & S_IWGRP)
    throw std::runtime_error(fmt::format(
        "cache directory {} is writable by its group (mode {:04o}), who could replace cached features; run "
        "'chmod g-w {}', or set PIPE_CACHE_SHARED=1 to share the cache with the group on purpose "
        "(docs/security.md)", root_, mode, root_));
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
  Modes modes = kOwnerOnly;
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
    const std::optional<RowSizes> sizes = row_sizes(count, views, shape);
    if (!sizes)
      throw std::invalid_argument(fmt::format("cache {}/{}: {} samples x {} views of features ({}) are too large",
                                              fingerprint, split, count, views, fmt::join(shape, ", ")));
    feature_shape = std::move(shape);
    row_floats = sizes->row_floats;
    shape_fixed = true;
    std::vector<int64_t> full{count, views};
    full.insert(full.end(), feature_shape.begin(), feature_shape.end());
    const std::string header = npy_header(full);
    header_size = header.size();
    tmp = fmt::format("{}.tmp.{}.{}", npy, ::getpid(), g_temp_seq.fetch_add(1));
    fd = ::open(tmp.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, modes.file);
    if (fd < 0) {
      const std::string t = tmp;
      tmp.clear();
      sys_fail("cannot create", t);
    }
    if (::fchmod(fd, modes.file) != 0) sys_fail("cannot set the mode of", tmp);
    const off_t total = static_cast<off_t>(header_size) +
                        static_cast<off_t>(count) * views * row_floats *
                            static_cast<off_t>(sizeof(float));
    if (::ftruncate(fd, total) != 0) sys_fail("cannot size", tmp);
    pwrite_all(fd, header.data(), header.size(), 0, tmp);
  }

  // A file with rows never written would read back as zeros: commit refuses it, naming the
  // first hole. Caller holds mu.
  void check_complete() const {
    int64_t missing = 0, first_id = -1;
    int first_view = -1;
    for (int64_t id = 0; id < count; ++id) {
      if (skips.count(id)) continue;
      for (int v = 0; v < views; ++v)
        if (!present[static_cast<std::size_t>(id * views + v)]) {
          if (missing++ == 0) first_id = id, first_view = v;
        }
    }
    if (missing)
      throw std::logic_error(fmt::format(
          "cache {}/{}: cannot commit: {} of {} rows missing (first: sample {} view {})",
          fingerprint, split, missing, count * views, first_id, first_view));
  }

  // Syncs and closes the temp file. Returns its size and checksum, of the whole file as
  // written (header + rows), read back from the page cache. Caller holds mu.
  std::pair<uint64_t, std::string> sync_hash_close() {
    if (::fsync(fd) != 0) sys_fail("cannot sync", tmp);
    Hasher h;
    std::vector<unsigned char> buf(1 << 20);
    uint64_t size = 0;
    for (;;) {
      const ssize_t n = ::pread(fd, buf.data(), buf.size(), static_cast<off_t>(size));
      if (n < 0) {
        if (errno == EINTR) continue;
        sys_fail("cannot read back", tmp);
      }
      if (n == 0) break;
      h.update(buf.data(), static_cast<std::size_t>(n));
      size += static_cast<uint64_t>(n);
    }
    if (::close(fd) != 0) {
      fd = -1;
      sys_fail("cannot close", tmp);
    }
    fd = -1;
    return {size, h.hex()};
  }

  nlohmann::ordered_json manifest_json(uint64_t bytes, const std::string& checksum) const {
    auto skipped = nlohmann::ordered_json::array();
    for (const auto& [id, reason] : skips) skipped.push_back({{"id", id}, {"reason", reason}});
    nlohmann::ordered_json m;
    m["format"] = kFormatName;
    m["format_version"] = kFormatVersion;
    m["fingerprint"] = fingerprint;
    m["description"] = description;
    m["split"] = split;
    m["count"] = count;
    m["views"] = views;
    m["feature_shape"] = feature_shape;
    m["dtype"] = "float32";
    m["file"] = split + ".npy";
    m["header_bytes"] = header_size;
    m["bytes"] = bytes;
    m["checksum"] = checksum;
    m["checksum_algorithm"] = "XXH3-128 (xxHash XXH3_128bits, seed 0, high64 then low64) of the whole .npy file";
    m["labels"] = labels;
    m["skipped"] = std::move(skipped);
    m["created"] = utc_now();
    m["pipe_version"] = PIPE_VERSION_STRING;
    return m;
  }

  // Moves the synced temp file into place and writes its manifest `m`. Caller holds mu.
  void publish(const nlohmann::ordered_json& m) {
    // Hide any older entry first, so that a reader never pairs an old manifest with the new
    // data; then data, then the manifest that makes the entry visible.
    if (::unlink(manifest.c_str()) != 0 && errno != ENOENT) sys_fail("cannot replace", manifest);
    if (std::rename(tmp.c_str(), npy.c_str()) != 0) sys_fail("cannot rename into place", tmp);
    tmp.clear();
    try {
      // Bytes that are not UTF-8 (a reason quoting a file name) are written as U+FFFD.
      write_file_atomic(manifest, m.dump(1, ' ', false, nlohmann::ordered_json::error_handler_t::replace) + "\n",
                        modes.file);
    } catch (...) {
      // No manifest (a full disk): the data without it is no entry, only space that a full
      // disk needs back. Any older entry was already hidden above.
      ::unlink(npy.c_str());
      throw;
    }
    fsync_dir(dir);
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
  w.check_complete();
  if (!w.shape_fixed) w.create_file({0});  // nothing added: every sample skipped, or N = 0
  const auto [bytes, checksum] = w.sync_hash_close();
  w.publish(w.manifest_json(bytes, checksum));
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
  w->modes = shared_ ? kOwnerAndGroup : kOwnerOnly;
  make_dirs(root_, w->modes.dir);
  check_root();
  make_dirs(w->dir, w->modes.dir);
  w->lock_fd = acquire_lock(w->dir + "/" + split + ".lock", wait, w->modes.file);
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
  // Maps the whole data file at `path`, which must be a regular file of `bytes` bytes.
  static std::shared_ptr<Mapping> map_data_file(const std::string& path, uint64_t bytes);
  // Throws Corrupt unless the mapping starts with `header` and hashes to `checksum`.
  void verify(const std::string& header, const std::string& checksum, const std::string& path) const;
};

namespace {

struct Corrupt : std::runtime_error {
  std::string file;
  bool other_format = false;  // a manifest of another format_version, not damage
  Corrupt(std::string f, const std::string& why, bool other = false)
      : std::runtime_error(why), file(std::move(f)), other_format(other) {}
};

// Bytes from a hostile file can reach a warning (a parser message, a manifest value):
// anything but printable ASCII is escaped, so that a warning stays one harmless line.
std::string printable(const std::string& s) {
  std::string out;
  for (const char c : s) {
    const auto u = static_cast<unsigned char>(c);
    if (u >= 0x20 && u < 0x7f) out += c;
    else out += fmt::format("\\x{:02x}", u);
  }
  return out;
}

// A manifest parsed as JSON (a regular file: open() checks before reading it).
nlohmann::json read_manifest(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(std::strerror(errno));
  return nlohmann::json::parse(in);
}

// Manifest fields, read strictly: a missing field, another type, or an integer out of the
// range of T is an error naming the field (nlohmann's own get<int>() would truncate a large
// integer, and converting 1e300 to int is undefined behaviour).
const nlohmann::json& member(const nlohmann::json& m, const char* key) {
  const auto it = m.find(key);  // end() on a non-object too
  if (it == m.end()) throw std::runtime_error(fmt::format("no \"{}\"", key));
  return *it;
}

template <class T>
T as(const nlohmann::json& v, const char* key) {
  if constexpr (std::is_same_v<T, std::string>) {
    if (!v.is_string()) throw std::runtime_error(fmt::format("\"{}\" is not a string", key));
    return v.get<std::string>();
  } else if constexpr (std::is_integral_v<T>) {
    if (v.is_number_unsigned()) {  // the parser's type for every integer >= 0
      if (v.get<uint64_t>() <= static_cast<uint64_t>(std::numeric_limits<T>::max())) return static_cast<T>(v.get<uint64_t>());
    } else if (v.is_number_integer()) {
      if constexpr (std::is_signed_v<T>)
        if (v.get<int64_t>() >= std::numeric_limits<T>::min()) return static_cast<T>(v.get<int64_t>());
    } else {
      throw std::runtime_error(fmt::format("\"{}\" is not an integer", key));
    }
    throw std::runtime_error(fmt::format("\"{}\" is out of range", key));
  } else {  // std::vector of integers
    if (!v.is_array()) throw std::runtime_error(fmt::format("\"{}\" is not an array", key));
    T out;
    out.reserve(v.size());
    for (const nlohmann::json& x : v) out.push_back(as<typename T::value_type>(x, key));
    return out;
  }
}

template <class T>
T field(const nlohmann::json& m, const char* key) {
  return as<T>(member(m, key), key);
}

// A shape for a warning: a manifest may claim thousands of dimensions.
std::string brief_shape(const std::vector<int64_t>& shape) {
  if (shape.size() <= 8) return fmt::format("({})", fmt::join(shape, ", "));
  return fmt::format("({}, ... {} dimensions)", fmt::join(shape.begin(), shape.begin() + 4, ", "), shape.size());
}

bool lower_hex(const std::string& s, std::size_t digits) {
  return s.size() == digits && s.find_first_not_of("0123456789abcdef") == std::string::npos;
}

// A manifest parsed as JSON. Not a regular file is damage: a FIFO would block the read, a
// directory cannot be parsed.
nlohmann::json load_manifest(const std::string& path, const struct stat& st) {
  if (!S_ISREG(st.st_mode)) throw Corrupt(path, "not a regular file");
  try {
    return read_manifest(path);
  } catch (const std::exception& e) {
    throw Corrupt(path, fmt::format("unreadable manifest: {}", e.what()));
  }
}

// What a manifest says of its entry. Nothing in it is trusted until checked: by
// check_claims, then against the data file.
struct ManifestClaims {
  int64_t count = 0;
  int views = 0;
  std::vector<int64_t> feature_shape;
  std::string description;
  uint64_t bytes = 0;
  std::string checksum;
  std::vector<int> labels;
  std::vector<CacheSkip> skips;
};

ManifestClaims read_claims(const nlohmann::json& m, const std::string& path, const std::string& fingerprint,
                           const std::string& split) {
  ManifestClaims c;
  try {
    if (!m.is_object()) throw std::runtime_error("not a JSON object");
    // The format first: a manifest of another version may differ in any other field.
    if (!m.contains("format") || m["format"] != kFormatName)
      throw std::runtime_error(fmt::format("format is not \"{}\"", kFormatName));
    const int version = field<int>(m, "format_version");
    if (version != kFormatVersion)
      throw Corrupt(path,
                    fmt::format("format_version {}, this pipe reads {}{}", version, kFormatVersion,
                                version < kFormatVersion ? ": written by an older pipe" : ""),
                    true);
    if (field<std::string>(m, "fingerprint") != fingerprint)
      throw std::runtime_error("fingerprint does not match its directory");
    if (field<std::string>(m, "split") != split)
      throw std::runtime_error("split does not match its file name");
    if (field<std::string>(m, "dtype") != "float32") throw std::runtime_error("dtype is not float32");
    c.count = field<int64_t>(m, "count");
    c.views = field<int>(m, "views");
    c.feature_shape = field<std::vector<int64_t>>(m, "feature_shape");
    c.description = field<std::string>(m, "description");
    c.bytes = field<uint64_t>(m, "bytes");
    c.checksum = field<std::string>(m, "checksum");
    c.labels = field<std::vector<int>>(m, "labels");
    const nlohmann::json& skipped = member(m, "skipped");
    if (!skipped.is_array()) throw std::runtime_error("\"skipped\" is not an array");
    for (const nlohmann::json& s : skipped)
      c.skips.push_back({field<int64_t>(s, "id"), field<std::string>(s, "reason")});
  } catch (const Corrupt&) {
    throw;
  } catch (const std::exception& ex) {
    throw Corrupt(path, fmt::format("bad manifest: {}", ex.what()));
  }
  return c;
}

void check_claims(const ManifestClaims& c, const std::string& path) {
  if (c.count < 0 || c.views < 1 || static_cast<int64_t>(c.labels.size()) != c.count)
    throw Corrupt(path, "bad manifest: count, views and labels disagree");
  for (int64_t d : c.feature_shape)
    if (d < 0) throw Corrupt(path, "bad manifest: negative feature dimension");
  if (!lower_hex(c.checksum, 32)) throw Corrupt(path, "bad manifest: checksum is not 32 hex digits");
}

// Sorts `skips` by id and returns, per sample id, its index in them or -1.
std::vector<int32_t> index_skips(std::vector<CacheSkip>& skips, int64_t count, const std::string& path) {
  std::vector<int32_t> index(static_cast<std::size_t>(count), -1);
  std::sort(skips.begin(), skips.end(), [](const CacheSkip& a, const CacheSkip& b) { return a.id < b.id; });
  for (std::size_t i = 0; i < skips.size(); ++i) {
    const int64_t id = skips[i].id;
    if (id < 0 || id >= count) throw Corrupt(path, "bad manifest: skipped id out of range");
    if (index[static_cast<std::size_t>(id)] >= 0) throw Corrupt(path, "bad manifest: skipped id listed twice");
    index[static_cast<std::size_t>(id)] = static_cast<int32_t>(i);
  }
  return index;
}

// The data file that the manifest's shape implies: its npy header, then the rows.
struct DataLayout {
  std::string header;
  int64_t row_floats = 0;
};

DataLayout data_layout(const ManifestClaims& c, const std::string& path) {
  // Sizes first, overflow-checked: the shape is the manifest's claim, and the file must
  // hold every row it implies.
  const std::optional<RowSizes> sizes = row_sizes(c.count, c.views, c.feature_shape);
  if (!sizes)
    throw Corrupt(path, fmt::format("bad manifest: {} samples x {} views of features {} overflow", c.count,
                                    c.views, brief_shape(c.feature_shape)));
  DataLayout layout;
  layout.row_floats = sizes->row_floats;
  std::vector<int64_t> full{c.count, c.views};
  full.insert(full.end(), c.feature_shape.begin(), c.feature_shape.end());
  try {
    layout.header = npy_header(full);
  } catch (const std::exception& ex) {
    throw Corrupt(path, fmt::format("bad manifest: {}", ex.what()));  // too many dimensions
  }
  const uint64_t expected = layout.header.size() + sizes->data_bytes;
  if (expected != c.bytes)
    throw Corrupt(path, fmt::format("bad manifest: shape needs {} bytes, manifest says {}", expected, c.bytes));
  return layout;
}

// Warns that an entry is unusable and removes it, so that the caller recomputes it.
void discard_entry(const Corrupt& c, const std::string& manifest, const std::string& npy,
                   const std::string& lock_path, mode_t lock_mode) {
  std::fprintf(stderr, "pipe: warning: cache file %s %s (%s); removing the entry, "
               "it will be recomputed\n", c.file.c_str(),
               c.other_format ? "is in another cache format" : "is corrupt", printable(c.what()).c_str());
  std::fflush(stderr);
  // Remove only when no writer holds the lock (a writer is about to replace the files).
  // A lock file that cannot be opened (a read-only cache) leaves the files alone too.
  int lock = -1;
  try {
    lock = acquire_lock(lock_path, false, lock_mode);
  } catch (const std::exception&) {
  }
  if (lock >= 0) {
    ::unlink(manifest.c_str());
    ::unlink(npy.c_str());
    ::close(lock);
  }
}

}  // namespace

std::shared_ptr<FeatureCache::Entry::Mapping> FeatureCache::Entry::Mapping::map_data_file(const std::string& path,
                                                                                          uint64_t bytes) {
  // O_NONBLOCK: a FIFO in place of the data file must not block the open.
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) throw Corrupt(path, fmt::format("cannot open: {}", std::strerror(errno)));
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    throw Corrupt(path, "not a regular file");
  }
  if (static_cast<uint64_t>(st.st_size) != bytes) {
    const uint64_t actual = static_cast<uint64_t>(st.st_size);
    ::close(fd);
    throw Corrupt(path, fmt::format("{} bytes, manifest says {}", actual, bytes));
  }
  void* addr = ::mmap(nullptr, bytes, PROT_READ, MAP_SHARED, fd, 0);
  const int map_errno = errno;
  ::close(fd);
  if (addr == MAP_FAILED)
    throw Corrupt(path, fmt::format("cannot map: {}", std::strerror(map_errno)));
  return std::make_shared<Mapping>(addr, bytes);
}

void FeatureCache::Entry::Mapping::verify(const std::string& header, const std::string& checksum,
                                          const std::string& path) const {
  const auto* base = static_cast<const unsigned char*>(addr);
  if (std::memcmp(base, header.data(), header.size()) != 0)
    throw Corrupt(path, "npy header does not match the manifest");
  // Verified chunk by chunk, each dropped once hashed: checking a file must not leave all
  // of it resident.
  ::madvise(addr, size, MADV_SEQUENTIAL);
  Hasher hasher;
  for (uint64_t off = 0; off < size; off += kDropWindow) {
    const auto len = static_cast<std::size_t>(std::min<uint64_t>(kDropWindow, size - off));
    hasher.update(base + off, len);
    drop(static_cast<std::size_t>(off), len);
  }
  ::madvise(addr, size, MADV_NORMAL);
  const std::string sum = hasher.hex();
  if (sum != checksum)
    throw Corrupt(path, fmt::format("checksum {} but manifest says {}", sum, checksum));
}

std::shared_ptr<const FeatureCache::Entry> FeatureCache::open(const std::string& fingerprint,
                                                              const std::string& split) const {
  check_names(fingerprint, split);
  check_root();
  const std::string manifest = manifest_path(fingerprint, split);
  const std::string npy = npy_path(fingerprint, split);
  struct stat st {};
  if (::stat(manifest.c_str(), &st) != 0) return nullptr;  // missing (or being replaced)

  // Cheapest checks first: the manifest alone, then the data file's size, and only then the
  // checksum, which reads the whole file.
  try {
    ManifestClaims claims = read_claims(load_manifest(manifest, st), manifest, fingerprint, split);
    check_claims(claims, manifest);
    auto e = std::shared_ptr<Entry>(new Entry());
    e->skip_index_ = index_skips(claims.skips, claims.count, manifest);
    const DataLayout layout = data_layout(claims, manifest);
    std::shared_ptr<Entry::Mapping> mapping = Entry::Mapping::map_data_file(npy, claims.bytes);
    mapping->verify(layout.header, claims.checksum, npy);

    e->fingerprint_ = fingerprint;
    e->split_ = split;
    e->path_ = npy;
    e->description_ = std::move(claims.description);
    e->count_ = claims.count;
    e->views_ = claims.views;
    e->feature_shape_ = std::move(claims.feature_shape);
    e->labels_ = std::move(claims.labels);
    e->skips_ = std::move(claims.skips);
    e->row_floats_ = layout.row_floats;
    e->rows_ = reinterpret_cast<const float*>(static_cast<const unsigned char*>(mapping->addr) + layout.header.size());
    e->mapping_ = std::move(mapping);
    // Last use, for `pipe cache gc` and `rm --older-than`; a read-only cache stays as it is.
    ::utimensat(AT_FDCWD, manifest.c_str(), nullptr, 0);
    return e;
  } catch (const Corrupt& c) {
    discard_entry(c, manifest, npy, entry_dir(fingerprint) + "/" + split + ".lock",
                  (shared_ ? kOwnerAndGroup : kOwnerOnly).file);
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
        const nlohmann::json m = read_manifest(manifest_path(fp, split));
        CacheEntryInfo info;
        info.fingerprint = fp;
        info.split = split;
        info.count = field<int64_t>(m, "count");
        info.views = field<int>(m, "views");
        info.feature_shape = field<std::vector<int64_t>>(m, "feature_shape");
        info.skipped = static_cast<int64_t>(member(m, "skipped").size());
        info.description = field<std::string>(m, "description");
        info.created = field<std::string>(m, "created");
        struct stat st {};
        if (::stat(manifest_path(fp, split).c_str(), &st) == 0) info.last_used = st.st_mtime;
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

std::optional<uint64_t> FeatureCache::evict(const std::string& fingerprint, const std::string& split) {
  check_names(fingerprint, split);
  const int lock = acquire_lock(entry_dir(fingerprint) + "/" + split + ".lock", false,
                                (shared_ ? kOwnerAndGroup : kOwnerOnly).file);
  if (lock < 0) return std::nullopt;  // being written: its writer would recreate it anyway
  uint64_t bytes = 0;
  for (const std::string& path : {manifest_path(fingerprint, split), npy_path(fingerprint, split)}) {
    const uint64_t size = file_size(path);
    if (::unlink(path.c_str()) == 0) bytes += size;
  }
  ::close(lock);
  return bytes;
}

}  // namespace pipeline
