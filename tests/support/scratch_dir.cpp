// Scratch directories and tree listings for tests.
#include "support/scratch_dir.hpp"

#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <stdexcept>

namespace envd::test {

ScratchDir::ScratchDir() {
  const char* tmp = std::getenv("TMPDIR");
  std::string templ = std::string(tmp != nullptr ? tmp : "/tmp") + "/envd-test-XXXXXX";
  if (::mkdtemp(templ.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
  m_path = templ;
}

ScratchDir::~ScratchDir() {
  std::error_code ec;
  // Make everything writable again first: tests create unreadable files and directories.
  for (auto it = std::filesystem::recursive_directory_iterator(
           m_path, std::filesystem::directory_options::skip_permission_denied, ec);
       !ec && it != std::filesystem::recursive_directory_iterator(); it.increment(ec)) {
    if (it->is_directory(ec) && !it->is_symlink(ec)) ::chmod(it->path().c_str(), 0755);
  }
  ::chmod(m_path.c_str(), 0755);
  std::filesystem::remove_all(m_path, ec);
}

void write_file(const std::filesystem::path& path, std::string_view content) {
  std::filesystem::create_directories(path.parent_path());
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(content.data(), static_cast<std::streamsize>(content.size()));
  if (!out) throw std::runtime_error("write_file failed: " + path.string());
}

std::string read_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("read_file failed: " + path.string());
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::map<std::string, std::string> tree_listing(const std::filesystem::path& root) {
  std::map<std::string, std::string> out;
  std::error_code ec;
  for (auto it = std::filesystem::recursive_directory_iterator(
           root, std::filesystem::directory_options::skip_permission_denied, ec);
       !ec && it != std::filesystem::recursive_directory_iterator(); it.increment(ec)) {
    struct stat st {};
    if (::lstat(it->path().c_str(), &st) != 0) continue;
    std::ostringstream line;
    line << (st.st_mode & S_IFMT) << ' ' << st.st_size << ' ' << st.st_mtim.tv_sec << '.'
         << st.st_mtim.tv_nsec << ' ' << (st.st_mode & 07777);
    if (S_ISLNK(st.st_mode)) {
      std::error_code ec2;
      line << ' ' << std::filesystem::read_symlink(it->path(), ec2).string();
    }
    out[it->path().lexically_relative(root).string()] = line.str();
  }
  return out;
}

std::filesystem::path fixtures_dir() {
  return ENVD_FIXTURES_DIR;
}

}  // namespace envd::test
