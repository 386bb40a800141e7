// Atomic file replacement: write to a temporary file in the target's directory, fsync it, rename
// it over the target, fsync the directory. Readers see the old content or the new, never a mix.
#pragma once

#include <filesystem>
#include <string>
#include <string_view>

#include "envd/util/error.hpp"

namespace envd {

// Writes `content` to `path` atomically with permission bits `mode` (before umask).
// Errors: io / permission_denied / not_found (missing parent directory). On failure the target is
// unchanged and no temporary file is left behind. Thread-safe for distinct or equal targets.
Result<void> write_file_atomic(const std::filesystem::path& path, std::string_view content,
                               unsigned mode = 0644);

// 16 random lowercase hex digits, for names of temporary and staging files that must not collide
// with another writer's. Thread-safe.
std::string random_name();

// fsyncs a directory so that a rename or create inside it is durable.
Result<void> fsync_directory(const std::filesystem::path& dir);

// Reads a whole file. Errors: not_found, permission_denied, io.
Result<std::string> read_file(const std::filesystem::path& path);

}  // namespace envd
