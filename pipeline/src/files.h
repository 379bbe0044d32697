// Checked file writes for run outputs, cache entries and checkpoints; the modes they are
// created with; and the one rule for names that a graph brings into paths.
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <ctime>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace pipeline {

// Modes of what pipe creates to hold features and run outputs (docs/security.md): owner
// only, or owner and group for a cache shared on purpose. Set with chmod/fchmod after
// creation, so that the umask neither widens nor narrows them.
struct Modes {
  mode_t dir, file;
};
inline constexpr Modes kOwnerOnly{0700, 0600};
inline constexpr Modes kOwnerAndGroup{0770, 0660};

// Creates `path` and its missing parents, each with exactly `dir_mode` (plus the setgid bit
// a parent passes on, which keeps a shared cache in its group). Existing directories keep
// their mode. Throws std::runtime_error naming the directory.
void make_dirs(const std::string& path, mode_t dir_mode);
// Creates a directory that did not exist: `base`, or `base-2`, `base-3`... when mkdir(2) finds
// one there (EEXIST), so that two processes naming a directory in the same second never share
// it. Missing parents are made as make_dirs makes them. Returns the path created; throws
// std::runtime_error naming the directory.
std::string make_new_dir(const std::string& base, mode_t dir_mode);

// Linux's NAME_MAX: the longest name of one directory entry, in bytes.
inline constexpr std::size_t kMaxFileName = 255;
// The longest node name a graph may use: room is left within kMaxFileName for what pipe
// appends ("-epoch100000.png").
inline constexpr std::size_t kMaxNodeName = 200;

// Why `name` cannot be used, unchanged, as one directory entry of at most `max_bytes`
// ("" when it can): empty, "." or "..", a '/', a NUL or other control character, too long.
// The one rule for names that graphs bring into paths (a graph file's stem, node names):
// the spec parser refuses node names it objects to, safe_file_name() repairs the rest.
std::string file_name_problem(std::string_view name, std::size_t max_bytes = kMaxFileName);
// `name` when file_name_problem() finds nothing; otherwise a name that cannot leave its
// directory: '/' and control characters become '_', cut to fit, plus '-' and 8 hex digits
// of a hash of the original, so that two different names stay two different files.
std::string safe_file_name(std::string_view name, std::size_t max_bytes = kMaxFileName);

// Writes `content` to `path` atomically: a temp file in the same directory, fsync, rename.
// With `mode`, the file gets exactly that mode (else 0644 less the umask).
void write_file_atomic(const std::string& path, const std::string& content,
                       std::optional<mode_t> mode = std::nullopt);
// Writes `content` to `path` (no fsync, no rename). Every write and the close are checked: on
// failure (a full disk) the partial file is removed and std::runtime_error names the file and
// the OS reason.
void write_file(const std::string& path, const std::string& content);

// An image file by its name: .jpg .jpeg .png .bmp .webp, any case (what decode reads).
bool is_image_file(const std::string& path);
// The whole file, for decode; throws SampleError "cannot open|stat|read PATH: REASON".
std::shared_ptr<const std::vector<uint8_t>> read_image_bytes(const std::string& path);

// The time now as ISO 8601 UTC, e.g. 2026-12-01T09:30:00Z (manifests, summaries).
std::string utc_now();

// A "kB" field of /proc/self/status (e.g. "VmHWM", "RssFile") in KiB, or -1 where /proc does
// not say.
long proc_status_kib(const std::string& field);

// This process's peak resident memory in KiB (VmHWM: the high-water mark of its own address
// space since its exec), or -1 where /proc does not say.
long peak_rss_kib();
// The time `t` in the same form (the start of a run that wrote no summary, from a file's mtime).
std::string utc_time(std::time_t t);

}  // namespace pipeline
