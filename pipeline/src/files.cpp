#include "files.h"

#include <algorithm>
#include <fstream>
#include <cerrno>
#include <cctype>
#include <filesystem>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <stdexcept>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fmt/format.h>

#include "pipe/sample.h"

namespace pipeline {

namespace {

// Writes all of `content` to `path` (created or truncated), fsync'd when `sync`, with
// exactly `mode` when given. On any failure the file is removed and std::runtime_error names
// it and the OS reason.
void write_checked(const std::string& path, const std::string& content, bool sync, std::optional<mode_t> mode) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode.value_or(0644));
  if (fd < 0) throw std::runtime_error(fmt::format("cannot write {}: {}", path, std::strerror(errno)));
  const auto fail = [&](int e) {
    ::unlink(path.c_str());
    throw std::runtime_error(fmt::format("cannot write {}: {}", path, std::strerror(e)));
  };
  if (mode && ::fchmod(fd, *mode) != 0) {
    const int e = errno;
    ::close(fd);
    fail(e);
  }
  size_t done = 0;
  while (done < content.size()) {
    const ssize_t n = ::write(fd, content.data() + done, content.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      const int e = errno;
      ::close(fd);
      fail(e);
    }
    done += static_cast<size_t>(n);
  }
  if (sync && ::fsync(fd) != 0) {
    const int e = errno;
    ::close(fd);
    fail(e);
  }
  if (::close(fd) != 0) fail(errno);
}

// FNV-1a, 64 bits: a stable hash (the same in every build and run), enough to keep two
// repaired names apart.
uint64_t fnv1a(std::string_view s) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : s) h = (h ^ c) * 0x100000001b3ull;
  return h;
}

bool is_control(unsigned char c) { return c < 0x20 || c == 0x7f; }

}  // namespace

void make_dirs(const std::string& path, mode_t dir_mode) {
  std::size_t pos = 0;
  while (pos != std::string::npos) {
    pos = path.find('/', pos + 1);
    const std::string cur = path.substr(0, pos);
    if (cur.empty()) continue;
    if (::mkdir(cur.c_str(), dir_mode) != 0) {
      if (errno == EEXIST) continue;  // ours or not, an existing directory keeps its mode
      throw std::runtime_error(fmt::format("cannot create {}: {}", cur, std::strerror(errno)));
    }
    struct stat st {};
    if (::stat(cur.c_str(), &st) != 0 || ::chmod(cur.c_str(), dir_mode | (st.st_mode & S_ISGID)) != 0)
      throw std::runtime_error(fmt::format("cannot set the mode of {}: {}", cur, std::strerror(errno)));
  }
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0 || !S_ISDIR(st.st_mode))
    throw std::runtime_error(fmt::format("{} is not a directory", path));
}

std::string make_new_dir(const std::string& base, mode_t dir_mode) {
  const std::string parent = std::filesystem::path(base).parent_path().string();
  if (!parent.empty()) make_dirs(parent, dir_mode);
  for (int n = 1; n <= 10000; ++n) {
    const std::string path = n == 1 ? base : fmt::format("{}-{}", base, n);
    if (::mkdir(path.c_str(), dir_mode) != 0) {
      if (errno == EEXIST) continue;  // taken (by a run started in the same second): next suffix
      throw std::runtime_error(fmt::format("cannot create {}: {}", path, std::strerror(errno)));
    }
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0 || ::chmod(path.c_str(), dir_mode | (st.st_mode & S_ISGID)) != 0)
      throw std::runtime_error(fmt::format("cannot set the mode of {}: {}", path, std::strerror(errno)));
    return path;
  }
  throw std::runtime_error(fmt::format("cannot create {}: it and 9999 numbered variants exist", base));
}

std::string file_name_problem(std::string_view name, std::size_t max_bytes) {
  if (name.empty()) return "is empty";
  if (name == "." || name == "..") return fmt::format("is '{}'", name);
  if (name.find('/') != std::string_view::npos) return "contains '/'";
  for (unsigned char c : name)
    if (is_control(c)) return c == 0 ? "contains a NUL byte" : "contains a control character";
  if (name.size() > max_bytes) return fmt::format("is longer than {} bytes", max_bytes);
  return "";
}

std::string safe_file_name(std::string_view name, std::size_t max_bytes) {
  if (file_name_problem(name, max_bytes).empty()) return std::string(name);
  std::string out;
  for (unsigned char c : name) out += c == '/' || is_control(c) ? '_' : static_cast<char>(c);
  const std::string tag = fmt::format("-{:08x}", static_cast<uint32_t>(fnv1a(name)));
  // The tag also keeps "." and ".." from standing alone.
  out = out.substr(0, max_bytes > tag.size() + 1 ? max_bytes - tag.size() : 1);
  return (out.empty() ? "_" : out) + tag;
}

void write_file_atomic(const std::string& path, const std::string& content, std::optional<mode_t> mode) {
  const std::string tmp = fmt::format("{}.tmp.{}", path, ::getpid());
  write_checked(tmp, content, /*sync=*/true, mode);
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    const int e = errno;
    ::unlink(tmp.c_str());
    throw std::runtime_error(fmt::format("cannot rename {} to {}: {}", tmp, path, std::strerror(e)));
  }
}

void write_file(const std::string& path, const std::string& content) {
  write_checked(path, content, /*sync=*/false, std::nullopt);
}

bool is_image_file(const std::string& path) {
  std::string ext = std::filesystem::path(path).extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return ext == ".jpg" || ext == ".jpeg" || ext == ".png" || ext == ".bmp" || ext == ".webp";
}

std::shared_ptr<const std::vector<uint8_t>> read_image_bytes(const std::string& path) {
  const auto fail = [&](const char* what) {
    return SampleError(fmt::format("cannot {} {}: {}", what, path, std::strerror(errno)));
  };
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw fail("open");
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    errno = err;
    throw fail("stat");
  }
  auto bytes = std::make_shared<std::vector<uint8_t>>(static_cast<size_t>(st.st_size));
  size_t got = 0;
  int err = 0;
  while (got < bytes->size()) {
    const ssize_t n = ::read(fd, bytes->data() + got, bytes->size() - got);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      err = n < 0 ? errno : EIO;  // EIO: the file shrank while being read
      break;
    }
    got += static_cast<size_t>(n);
  }
  ::close(fd);
  if (err != 0) {
    errno = err;
    throw fail("read");
  }
  return bytes;
}

std::string utc_now() { return utc_time(std::time(nullptr)); }

long proc_status_kib(const std::string& field) {
  std::ifstream in("/proc/self/status");
  const std::string key = field + ":";
  for (std::string line; std::getline(in, line);)
    if (line.rfind(key, 0) == 0) return std::stol(line.substr(key.size()));
  return -1;
}

long peak_rss_kib() { return proc_status_kib("VmHWM"); }

std::string utc_time(std::time_t t) {
  std::tm tm{};
  ::gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

}  // namespace pipeline
