#include "json.h"

#include <cmath>
#include <cstdio>
#include <stdexcept>
#include <cerrno>
#include <cstring>

#include <fcntl.h>
#include <unistd.h>

#include <fmt/format.h>

namespace pipeline {

Json& Json::set(const std::string& key, Json value) {
  auto* o = std::get_if<Object>(&v_);
  if (!o) throw std::logic_error("Json::set on a non-object");
  for (auto& [k, v] : *o)
    if (k == key) {
      v = std::move(value);
      return v;
    }
  o->emplace_back(key, std::move(value));
  return o->back().second;
}

Json& Json::push(Json value) {
  auto* a = std::get_if<Array>(&v_);
  if (!a) throw std::logic_error("Json::push on a non-array");
  a->push_back(std::move(value));
  return a->back();
}

std::string json_escape(const std::string& s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (c < 0x20) out += fmt::format("\\u{:04x}", c);
        else out += static_cast<char>(c);
    }
  }
  return out + "\"";
}

std::string Json::dump(int indent) const {
  std::string out;
  dump_to(out, indent, 0);
  return out;
}

void Json::dump_to(std::string& out, int indent, int depth) const {
  const auto nl = [&](int d) {
    if (indent >= 0) {
      out += '\n';
      out.append(static_cast<size_t>(indent * d), ' ');
    }
  };
  if (std::holds_alternative<std::nullptr_t>(v_)) out += "null";
  else if (auto* b = std::get_if<bool>(&v_)) out += *b ? "true" : "false";
  else if (auto* i = std::get_if<int64_t>(&v_)) out += std::to_string(*i);
  else if (auto* d = std::get_if<double>(&v_)) {
    // Shortest round-trip form: equal doubles print equal, so equal runs diff clean.
    if (std::isfinite(*d)) out += fmt::format("{}", *d);
    else out += "null";
  } else if (auto* s = std::get_if<std::string>(&v_)) out += json_escape(*s);
  else if (auto* a = std::get_if<Array>(&v_)) {
    out += '[';
    for (size_t k = 0; k < a->size(); ++k) {
      if (k) out += indent >= 0 ? "," : ", ";
      nl(depth + 1);
      (*a)[k].dump_to(out, indent, depth + 1);
    }
    if (!a->empty()) nl(depth);
    out += ']';
  } else if (auto* o = std::get_if<Object>(&v_)) {
    out += '{';
    for (size_t k = 0; k < o->size(); ++k) {
      if (k) out += indent >= 0 ? "," : ", ";
      nl(depth + 1);
      out += json_escape((*o)[k].first);
      out += ": ";
      (*o)[k].second.dump_to(out, indent, depth + 1);
    }
    if (!o->empty()) nl(depth);
    out += '}';
  }
}

namespace {

// Writes all of `content` to `path` (created or truncated), fsync'd when `sync`. On any
// failure the file is removed and std::runtime_error names it and the OS reason.
void write_checked(const std::string& path, const std::string& content, bool sync) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) throw std::runtime_error(fmt::format("cannot write {}: {}", path, std::strerror(errno)));
  const auto fail = [&](int e) {
    ::unlink(path.c_str());
    throw std::runtime_error(fmt::format("cannot write {}: {}", path, std::strerror(e)));
  };
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

}  // namespace

void write_file_atomic(const std::string& path, const std::string& content) {
  const std::string tmp = fmt::format("{}.tmp.{}", path, ::getpid());
  write_checked(tmp, content, /*sync=*/true);
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    const int e = errno;
    ::unlink(tmp.c_str());
    throw std::runtime_error(fmt::format("cannot rename {} to {}: {}", tmp, path, std::strerror(e)));
  }
}

void write_file(const std::string& path, const std::string& content) {
  write_checked(path, content, /*sync=*/false);
}

}  // namespace pipeline
