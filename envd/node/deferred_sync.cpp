// Deferred durability of pulled content: records in DIR/unsynced (see deferred_sync.hpp).
#include "envd/node/deferred_sync.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <fstream>

#include "envd/util/atomic_file.hpp"
#include "envd/util/log.hpp"

namespace envd::node {
namespace fs = std::filesystem;
namespace {

constexpr std::string_view k_header = "envd-unsynced 1";
constexpr std::string_view k_temp_prefix = ".tmp-";

fs::path records_dir(const fs::path& dir) {
  return dir / "unsynced";
}

bool is_entry(std::string_view e) {
  std::string_view hex;
  if (e.starts_with("layers/")) {
    hex = e.substr(7);
  } else if (e.starts_with("envs/")) {
    hex = e.substr(5);
  } else {
    return false;
  }
  if (hex.size() != 64) return false;
  for (char c : hex)
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  return true;
}

// Record names in DIR/unsynced, without temporaries.
Result<std::vector<std::string>> list_records(const fs::path& rdir) {
  std::vector<std::string> out;
  DIR* d = ::opendir(rdir.c_str());
  if (d == nullptr) {
    if (errno == ENOENT) return out;
    return Error::from_errno("list " + rdir.string(), errno);
  }
  while (const dirent* e = ::readdir(d)) {
    std::string_view name = e->d_name;
    if (name == "." || name == "..") continue;
    out.emplace_back(name);
  }
  ::closedir(d);
  return out;
}

// An exclusive flock() on `path` if nobody holds one; an invalid fd otherwise (or when it
// vanished).
UniqueFd try_lock(const fs::path& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
  if (!fd.valid()) return fd;
  if (::flock(fd.get(), LOCK_EX | LOCK_NB) != 0) return UniqueFd();
  return fd;
}

}  // namespace

std::string current_boot_id() {
  std::ifstream in("/proc/sys/kernel/random/boot_id");
  std::string id;
  if (!std::getline(in, id)) return {};
  for (char c : id)
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || c == '-')) return {};
  return id;
}

Result<DeferredSyncRecord> begin_deferred_sync(const fs::path& dir, std::string_view boot_id,
                                               const std::vector<std::string>& entries) {
  std::string content(k_header);
  content += '\n';
  for (const auto& e : entries) {
    if (!is_entry(e))
      return Error(ErrorCode::invalid_argument,
                   "unsynced record entry \"" + e + "\": not layers/<hex> or envs/<hex>");
    content += e + '\n';
  }
  fs::path rdir = records_dir(dir);
  std::error_code ec;
  fs::create_directories(rdir, ec);
  if (ec) return Error::from_errno("create " + rdir.string(), ec.value());
  std::string suffix = random_name();
  fs::path temp = rdir / (std::string(k_temp_prefix) + suffix);
  fs::path final_path = rdir / (std::string(boot_id) + "-" + suffix);
  UniqueFd fd(::open(temp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0644));
  if (!fd.valid()) return Error::from_errno("create " + temp.string(), errno);
  // Locked before it has content: recovery and settle leave locked temporaries alone.
  if (::flock(fd.get(), LOCK_EX) != 0) return Error::from_errno("lock " + temp.string(), errno);
  auto fail = [&](const char* what, int err) {
    ::unlink(temp.c_str());
    return Error::from_errno(std::string(what) + " " + temp.string(), err);
  };
  for (std::size_t done = 0; done < content.size();) {
    ssize_t n = ::write(fd.get(), content.data() + done, content.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return fail("write", errno);
    done += static_cast<std::size_t>(n);
  }
  if (::fsync(fd.get()) != 0) return fail("fsync", errno);
  if (::rename(temp.c_str(), final_path.c_str()) != 0) return fail("rename", errno);
  ENVD_TRY_VOID(fsync_directory(rdir));
  return DeferredSyncRecord(std::move(fd));
}

Result<std::vector<fs::path>> recover_deferred_sync(
    const fs::path& dir, std::string_view boot_id,
    const std::function<Result<void>(const fs::path&)>& remove) {
  fs::path rdir = records_dir(dir);
  ENVD_TRY(auto names, list_records(rdir));
  std::vector<fs::path> removed;
  const std::string ours = std::string(boot_id) + "-";
  for (const auto& name : names) {
    fs::path path = rdir / name;
    if (name.starts_with(k_temp_prefix)) {
      // Never renamed: its pull stopped before any rename. Unless someone is writing it now.
      if (try_lock(path).valid()) ::unlink(path.c_str());
      continue;
    }
    if (name.starts_with(ours)) continue;
    std::ifstream in(path);
    std::string line;
    bool header = static_cast<bool>(std::getline(in, line)) && line == k_header;
    std::size_t entries = 0;
    while (header && std::getline(in, line)) {
      if (!is_entry(line)) continue;
      fs::path entry = dir / line;
      ENVD_TRY_VOID(remove(entry));
      removed.push_back(entry);
      ++entries;
    }
    log::warn("node", "removed content pulled before a restart that may not be on disk",
              {{"record", path.string()}, {"entries", std::to_string(entries)}});
    if (::unlink(path.c_str()) != 0 && errno != ENOENT)
      return Error::from_errno("remove " + path.string(), errno);
  }
  return removed;
}

Result<std::size_t> settle_deferred_sync(const fs::path& dir, std::string_view boot_id,
                                         std::chrono::seconds min_age) {
  fs::path rdir = records_dir(dir);
  ENVD_TRY(auto names, list_records(rdir));
  const std::string ours = std::string(boot_id) + "-";
  const auto now = std::chrono::system_clock::now();
  std::vector<std::pair<fs::path, UniqueFd>> settled;
  for (const auto& name : names) {
    if (!name.starts_with(ours)) continue;
    fs::path path = rdir / name;
    UniqueFd fd = try_lock(path);
    if (!fd.valid()) continue;  // its pull is still renaming
    struct stat st {};
    if (::fstat(fd.get(), &st) != 0) continue;
    auto written = std::chrono::system_clock::time_point(std::chrono::seconds(st.st_mtim.tv_sec));
    if (now - written < min_age) continue;
    settled.emplace_back(std::move(path), std::move(fd));
  }
  if (settled.empty()) return std::size_t{0};
  UniqueFd dfd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!dfd.valid()) return Error::from_errno("open " + dir.string(), errno);
  if (::syncfs(dfd.get()) != 0) return Error::from_errno("syncfs " + dir.string(), errno);
  // No directory fsync: a deletion lost in a crash only makes recovery remove complete content.
  for (const auto& [path, fd] : settled) ::unlink(path.c_str());
  return settled.size();
}

}  // namespace envd::node
