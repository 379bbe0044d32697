// The content-addressed feature cache: memoized conv-base features on disk.
//
// Layout: <root>/<fingerprint>/<split>.npy   float32, C order, shape (N, V, ...feature shape)
//         <root>/<fingerprint>/<split>.json  manifest (what went into the key, shapes, labels,
//                                            skipped ids, byte size, checksum, time, version)
//         <root>/<fingerprint>/<split>.lock  advisory flock(2) serializing writers
// The .npy is a plain numpy file (format v1.0, header padded to 64 bytes): np.load() reads
// it, np.load(mmap_mode='r') maps it. Row (id, view) sits at header + (id*V + view) * row
// bytes; rows of skipped ids are zeros and never handed out.
//
// Completeness: a writer fills a temp file in the entry's directory (ftruncate + pwrite,
// rows in any order), fsyncs it, renames it to <split>.npy, then writes the manifest by
// temp + fsync + rename. The manifest goes last, so its presence means the entry is
// complete; a crash leaves at most a temp file and never a readable half entry.
//
// Concurrency between processes sharing a cache dir: begin() blocks on the entry's lock
// until no other process is writing it, and the Writer holds the lock until commit() or
// destruction. try_begin() returns nullopt instead of waiting. Because another process may
// have completed the entry while we waited, callers re-check after acquiring:
//
//   auto entry = cache.open(fp, split);
//   if (!entry) {
//     FeatureCache::Writer w = cache.begin(fp, split, n, views, description);
//     entry = cache.open(fp, split);          // finished by another process meanwhile?
//     if (!entry) { /* add()/skip() every row */ w.commit(); entry = cache.open(fp, split); }
//   }
//
// Even without the lock, commit is safe against a concurrent writer: both renames are
// atomic, and two writers of one fingerprint write identical content (last one wins).
// Readers never take the lock: a mapping stays valid when the file is replaced or removed.
// flock belongs to an open file, so within one process a second begin() for an entry whose
// Writer is still alive waits forever: hold one Writer per entry (try_begin says nullopt).
// `pipe cache rm` while a run writes the same entry is not guarded against (the run's
// commit then recreates it); evict() (`pipe cache rm --older-than`, `pipe cache gc`) is: it
// takes the entry's lock without waiting and leaves an entry being written alone.
//
// Last use: the manifest's mtime. commit() sets it, and open() touches it on every hit.
//
// Hash: XXH3-128 (Yann Collet's xxHash, 128-bit XXH3 variant, default secret, seed 0;
// Debian's libxxhash, xxhash.h 0.8.1), streamed through an XXH3_state_t and printed as 32
// lowercase hex digits, high 64 bits first (xxHash's canonical form). Fast (GB/s), stable
// across platforms and runs; not cryptographic: it guards against accidental change and
// collision between honest keys, not against an adversary. The .npy checksum uses it too.
// Entries written by the previous hash (XXH64 under two seeds, manifest format_version 1)
// are rejected by open() as another format and recomputed.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <ctime>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "pipe/tensor.h"

namespace pipeline {

// The cache root for a cache node: `stage_dir` when non-empty, else $PIPE_CACHE_DIR, else
// $XDG_CACHE_HOME/pipe, else ~/.cache/pipe ($HOME, or the password database). Empty
// environment variables count as unset. A leading "~/" in stage_dir expands to $HOME.
std::string resolve_cache_dir(const std::string& stage_dir);

// Streaming 128-bit content hash (see above). update() may be called any number of times;
// the digest depends only on the concatenated bytes, never on how they were split.
class Hasher {
 public:
  Hasher();
  Hasher& update(const void* data, std::size_t size);
  Hasher& update(std::string_view s) { return update(s.data(), s.size()); }
  // Length-prefixed update: field("ab").field("c") != field("a").field("bc"). Use this when
  // building fingerprints from several strings.
  Hasher& field(std::string_view s);
  std::array<uint64_t, 2> digest() const;  // does not reset; more updates may follow
  std::string hex() const;                 // 32 lowercase hex digits

 private:
  // An XXH3_state_t (xxhash.h with XXH_STATIC_LINKING_ONLY), kept inline so that this header
  // does not need xxhash.h and a Hasher stays a copyable value (a copy of the state is what
  // XXH3_copyState makes). cache_store.cpp checks the size and alignment.
  alignas(64) unsigned char state_[576] = {};
};

std::string hash_hex(std::string_view bytes);
// Hashes a file's contents. Throws std::runtime_error naming the file when unreadable.
std::string hash_file(const std::string& path);

struct CacheSkip {
  int64_t id = 0;
  std::string reason;
};

// One complete entry as `pipe cache ls` shows it (read from the manifest; not verified).
struct CacheEntryInfo {
  std::string fingerprint;
  std::string split;
  int64_t count = 0;
  int views = 0;
  std::vector<int64_t> feature_shape;
  int64_t skipped = 0;
  uint64_t bytes = 0;  // .npy + manifest on disk
  std::string description;
  std::string created;  // UTC, ISO 8601
  std::time_t last_used = 0;  // the manifest's mtime (see "Last use" above)
  std::string path;     // the .npy file
};

struct CacheRemoved {
  int entries = 0;           // complete (fingerprint, split) entries removed
  int fingerprints = 0;      // fingerprint directories removed
  uint64_t bytes = 0;        // bytes of every file removed (entries, temp and lock files)
};

class FeatureCache {
 public:
  class Entry;
  class Writer;

  // Reads PIPE_CACHE_SHARED (docs/security.md). A private cache (the default) creates its
  // directories 0700 and files 0600, and refuses a root that its group or other users can
  // write, or that another user owns: they could replace entries. PIPE_CACHE_SHARED=1 trusts
  // the root's group instead: directories 0770, files 0660, any owner; a root every user
  // can write is refused even then.
  explicit FeatureCache(std::string root);
  const std::string& root() const { return root_; }
  bool shared() const { return shared_; }
  // The refusal above (std::runtime_error naming the root); nothing when the root does not
  // exist yet. begin() and open() call it before they touch an entry.
  void check_root() const;

  // Starts writing entry (fingerprint, split) for `count` samples x `views` views. Creates
  // the directories; blocks while another process holds the entry's lock. Fingerprint and
  // split must be non-empty [A-Za-z0-9_-] (std::invalid_argument otherwise).
  Writer begin(const std::string& fingerprint, const std::string& split, int64_t count,
               int views, const std::string& description);
  // As begin(), but nullopt at once when another process holds the lock.
  std::optional<Writer> try_begin(const std::string& fingerprint, const std::string& split,
                                  int64_t count, int views, const std::string& description);

  // The complete entry, or nullptr when there is none. Verifies the manifest (its format and
  // format_version first: an entry of another version is not read), that the sizes it claims
  // fit in 64 bits, the file size, the npy header and the checksum; on any mismatch (or a
  // file that is not a regular file) prints one warning line naming the file to stderr,
  // removes the entry's files (unless a writer holds the lock: it is about to replace them,
  // or the lock file cannot be opened) and returns nullptr, so that the caller recomputes.
  std::shared_ptr<const Entry> open(const std::string& fingerprint,
                                    const std::string& split) const;

  // Complete entries (those with a readable manifest), sorted by fingerprint then split.
  // Prints nothing; files are not verified.
  std::vector<CacheEntryInfo> list() const;
  // Removes every fingerprint directory whose name starts with `fingerprint_prefix`
  // (non-empty: std::invalid_argument otherwise). Prints nothing.
  CacheRemoved remove(const std::string& fingerprint_prefix);
  // Removes every fingerprint directory under the root. Only directories that look like
  // the cache's own (valid name; nothing but .npy/.json/.lock/temp files, at least one
  // .lock) are listed or removed: a cache dir pointed at a home directory loses nothing else.
  CacheRemoved remove_all();
  // Removes the complete entry (fingerprint, split), manifest first, while holding its lock;
  // returns the bytes freed, or nullopt (and removes nothing) when a writer holds the lock.
  // Its lock file stays: a process may be waiting on it. Prints nothing.
  std::optional<uint64_t> evict(const std::string& fingerprint, const std::string& split);

  std::string entry_dir(const std::string& fingerprint) const;
  std::string npy_path(const std::string& fingerprint, const std::string& split) const;
  std::string manifest_path(const std::string& fingerprint, const std::string& split) const;

 private:
  std::optional<Writer> start(const std::string& fingerprint, const std::string& split,
                              int64_t count, int views, const std::string& description,
                              bool wait);
  std::string root_;
  bool shared_ = false;
};

// A complete, verified entry, memory-mapped read-only. Thread-safe. Tensors
// returned by features() alias the mapping and keep it alive after the Entry is gone.
class FeatureCache::Entry {
 public:
  const std::string& fingerprint() const { return fingerprint_; }
  const std::string& split() const { return split_; }
  const std::string& description() const { return description_; }
  const std::string& path() const { return path_; }
  int64_t count() const { return count_; }
  int views() const { return views_; }
  const std::vector<int64_t>& feature_shape() const { return feature_shape_; }

  // Class index recorded for `id` (-1 for an id skipped before any view was added).
  // std::out_of_range when id is not in [0, count).
  int label(int64_t id) const;
  bool skipped(int64_t id) const;
  // The reason given to Writer::skip; "" when not skipped.
  const std::string& skip_reason(int64_t id) const;
  const std::vector<CacheSkip>& skips() const { return skips_; }  // sorted by id
  // Zero-copy view of row (id, view), shape feature_shape(). std::out_of_range for a bad id
  // or view, std::logic_error for a skipped id (skipped samples are absent from reads).
  Tensor features(int64_t id, int view) const;

 private:
  friend class FeatureCache;
  Entry() = default;
  std::string fingerprint_, split_, description_, path_;
  int64_t count_ = 0;
  int views_ = 0;
  std::vector<int64_t> feature_shape_;
  int64_t row_floats_ = 0;
  std::vector<int> labels_;
  std::vector<CacheSkip> skips_;
  std::vector<int32_t> skip_index_;  // per id: index into skips_, or -1
  // At most about this many bytes of the mapping stay resident (see Mapping in the .cpp).
  static constexpr std::size_t kDropWindow = std::size_t{8} << 20;
  struct Mapping;
  std::shared_ptr<Mapping> mapping_;  // owns the mmap
  const float* rows_ = nullptr;
};

// Fills one entry. Move-only. add() and skip() are thread-safe. Destroyed without a
// successful commit(), it removes its temp file and leaves no entry.
class FeatureCache::Writer {
 public:
  Writer(Writer&&) noexcept;
  Writer& operator=(Writer&&) noexcept;
  ~Writer();

  // Row (id, view). The first add fixes the feature shape; later ones must match
  // (std::invalid_argument). All views of one id must carry the same label. Adding a row
  // twice, or after commit, is std::logic_error; a bad id or view is std::out_of_range.
  void add(int64_t id, int view, int label, const Tensor& features);
  // Marks sample `id` (all its views) as failed; the first reason is kept.
  void skip(int64_t id, const std::string& reason);
  // Checks that every (id, view) was added or skipped (std::logic_error naming the first
  // missing row otherwise; the writer stays usable), then makes the entry durable and
  // visible. I/O failures throw std::runtime_error.
  void commit();
  bool committed() const;

  const std::string& fingerprint() const;
  const std::string& split() const;

 private:
  friend class FeatureCache;
  struct Impl;
  explicit Writer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace pipeline
