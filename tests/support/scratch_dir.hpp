// Test support: a fresh scratch directory per test, removed when the test ends; file helpers;
// a listing of a tree to prove nothing was written into it.
#pragma once

#include <filesystem>
#include <map>
#include <string>
#include <string_view>

namespace envd::test {

// mkdtemp under $TMPDIR (or /tmp); removed recursively on destruction.
class ScratchDir {
 public:
  ScratchDir();
  ~ScratchDir();
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;
  const std::filesystem::path& path() const { return m_path; }
  std::filesystem::path operator/(std::string_view rel) const { return m_path / rel; }

 private:
  std::filesystem::path m_path;
};

// Writes `content` to `path`, creating parent directories.
void write_file(const std::filesystem::path& path, std::string_view content);
std::string read_file(const std::filesystem::path& path);

// Every entry below `root` (relative path -> "type size mtime_ns mode [target]"), not following
// symlinks. Two equal listings mean nothing was created, removed or modified.
std::map<std::string, std::string> tree_listing(const std::filesystem::path& root);

// The real fixtures shipped in ../shared/fixtures.
std::filesystem::path fixtures_dir();

}  // namespace envd::test
