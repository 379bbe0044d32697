// fuzz_cache's entry point (targets.h): a hostile cache directory through the cache reader.
// Its own file, so that fuzz_cache links only the cache store (cache_store, files, tensor).
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cache_store.h"
#include "targets.h"

namespace pipeline::fuzz {

namespace {

// The fuzz target's private cache root, removed at exit.
struct CacheDir {
  std::string root;
  CacheDir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "pipe-fuzz-cache-XXXXXX").string();
    if (!::mkdtemp(tmpl.data())) throw std::runtime_error("fuzz_cache: cannot create a temp dir");
    root = tmpl;
  }
  ~CacheDir() {
    std::error_code ec;
    std::filesystem::remove_all(root, ec);
  }
};

void write_bytes(const std::string& path, std::string_view bytes) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) throw std::runtime_error("fuzz_cache: cannot write " + path);
  size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (n <= 0) {
      ::close(fd);
      throw std::runtime_error("fuzz_cache: cannot write " + path);
    }
    done += static_cast<size_t>(n);
  }
  ::close(fd);
}

bool exists(const std::string& path) {
  struct stat st {};
  return ::lstat(path.c_str(), &st) == 0;
}

// Runs fn with the C stream `stderr` pointed at a memory buffer (file descriptor 2 stays
// as it is, so sanitizer and libFuzzer reports still get out); returns what was printed.
template <typename F>
std::string capture_stderr_stream(F fn) {
  char* buf = nullptr;
  size_t len = 0;
  FILE* mem = ::open_memstream(&buf, &len);
  if (!mem) throw std::runtime_error("fuzz_cache: open_memstream failed");
  FILE* const saved = stderr;
  struct Restore {
    FILE* saved;
    FILE* mem;
    char** buf;
    ~Restore() {
      stderr = saved;
      std::fclose(mem);
      std::free(*buf);
    }
  } restore{saved, mem, &buf};
  stderr = mem;
  fn();
  std::fflush(mem);
  return std::string(buf, len);
}

[[noreturn]] void finding(const std::string& what) { throw std::logic_error("fuzz_cache: " + what); }

}  // namespace

bool cache_one(const uint8_t* data, size_t size) {
  static CacheDir dir;
  const FeatureCache cache(dir.root);
  const std::string fp = kCacheFingerprint, split = kCacheSplit;
  const std::string json = cache.manifest_path(fp, split), npy = cache.npy_path(fp, split);
  std::filesystem::create_directories(cache.entry_dir(fp));
  ::unlink(json.c_str());
  ::unlink(npy.c_str());

  const std::string_view input(reinterpret_cast<const char*>(data), size);
  const size_t cut = input.find("\x93NUMPY");
  std::string manifest(input.substr(0, cut));
  const std::string_view file = cut == std::string_view::npos ? std::string_view() : input.substr(cut);
  const auto fill = [&manifest](const std::string& slot, const std::string& value) {
    for (size_t at = manifest.find(slot); at != std::string::npos; at = manifest.find(slot, at + value.size()))
      manifest.replace(at, slot.size(), value);
  };
  if (manifest.find(kCacheChecksumSlot) != std::string::npos) fill(kCacheChecksumSlot, hash_hex(file));
  fill(kCacheBytesSlot, std::to_string(file.size()));
  write_bytes(json, manifest);
  if (cut != std::string_view::npos) write_bytes(npy, file);

  std::shared_ptr<const FeatureCache::Entry> entry;
  const std::string printed = capture_stderr_stream([&] { entry = cache.open(fp, split); });
  if (!entry) {
    // One warning line naming the manifest or the data file; the entry's files removed.
    const std::string head = "pipe: warning: cache file ";
    const std::string tail = "; removing the entry, it will be recomputed\n";
    if (printed.rfind(head + json + " ", 0) != 0 && printed.rfind(head + npy + " ", 0) != 0)
      finding("open() returned nullptr without a warning naming the entry's file: '" + printed + "'");
    if (printed.size() < tail.size() || printed.compare(printed.size() - tail.size(), tail.size(), tail) != 0 ||
        std::count(printed.begin(), printed.end(), '\n') != 1)
      finding("the warning is not one line: '" + printed + "'");
    if (exists(json) || exists(npy)) finding("a rejected entry's files were not removed");
    return false;
  }
  if (!printed.empty()) finding("open() returned an entry but printed '" + printed + "'");

  // Everything the entry claims must lie inside the file: rows of row_bytes each after the
  // npy header, whose length the file itself gives (bytes 8-9, little endian).
  const int64_t count = entry->count();
  const int views = entry->views();
  if (count < 0 || views < 1) finding("an entry with a negative count or no views");
  if (file.size() < 10) finding("an entry without an npy header");
  const uint64_t header = 10 + (uint64_t(uint8_t(file[8])) | uint64_t(uint8_t(file[9])) << 8);
  uint64_t row_floats = 1, rows = 0, row_bytes = 0, total = 0;
  for (int64_t d : entry->feature_shape())
    if (d < 0 || __builtin_mul_overflow(row_floats, uint64_t(d), &row_floats))
      finding("an entry whose feature shape overflows");
  if (__builtin_mul_overflow(uint64_t(count), uint64_t(views), &rows) ||
      __builtin_mul_overflow(row_floats, uint64_t{sizeof(float)}, &row_bytes) ||
      __builtin_mul_overflow(rows, row_bytes, &total) || header > file.size() || total != file.size() - header)
    finding("an entry whose rows do not fill its file exactly");

  // Zero-size rows can be numerous (views up to 2^31 - 1): for those, the first and last view.
  const bool every_view = row_bytes > 0 || rows <= (uint64_t{1} << 16);
  for (int64_t id = 0; id < count; ++id) {
    const int label = entry->label(id);
    (void)label;
    if (entry->skipped(id)) {
      const std::string& reason = entry->skip_reason(id);
      (void)reason;
      try {
        entry->features(id, 0);
        finding("features() of a skipped sample did not throw");
      } catch (const std::logic_error& e) {
        if (std::string(e.what()).rfind("fuzz_cache: ", 0) == 0) throw;
      }
      continue;
    }
    if (!entry->skip_reason(id).empty()) finding("a sample that is not skipped has a skip reason");
    for (int v = 0; v < views; v = (every_view || v == views - 1) ? v + 1 : views - 1) {
      const Tensor t = entry->features(id, v);
      if (t.shape != entry->feature_shape()) finding("a row with another shape than the entry's");
      const uint64_t offset = header + (uint64_t(id) * uint64_t(views) + uint64_t(v)) * row_bytes;
      if (row_bytes > 0 && std::memcmp(t.ptr(), file.data() + offset, row_bytes) != 0)
        finding("a row is not the bytes at its place in the file");
    }
  }
  for (const CacheSkip& s : entry->skips())
    if (s.id < 0 || s.id >= count || !entry->skipped(s.id)) finding("skips() lists a sample that is not skipped");
  // The documented refusals for ids and views out of range.
  const auto out_of_range = [](auto fn) {
    try {
      fn();
    } catch (const std::out_of_range&) {
      return;
    }
    finding("an id or view out of range was not refused with std::out_of_range");
  };
  out_of_range([&] { entry->label(count); });
  out_of_range([&] { entry->label(-1); });
  out_of_range([&] { entry->skipped(count); });
  out_of_range([&] { entry->features(count, 0); });
  out_of_range([&] { entry->features(0, views); });
  out_of_range([&] { entry->features(0, -1); });
  return true;
}

}  // namespace pipeline::fuzz
