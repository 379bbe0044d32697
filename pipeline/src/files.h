// Checked file writes for run outputs, cache entries and checkpoints.
#pragma once

#include <string>

namespace pipeline {

// Writes `content` to `path` atomically: a temp file in the same directory, fsync, rename.
void write_file_atomic(const std::string& path, const std::string& content);
// Writes `content` to `path` (no fsync, no rename). Every write and the close are checked: on
// failure (a full disk) the partial file is removed and std::runtime_error names the file and
// the OS reason.
void write_file(const std::string& path, const std::string& content);

}  // namespace pipeline
