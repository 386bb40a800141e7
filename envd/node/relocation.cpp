// Relocation for isolation none (see relocation.hpp): copy an image's roots under a relocation
// dir, rewriting old paths in text files, symlinks and (conda's rule) binaries, then publish the
// copy by renaming a staging directory that already holds the completion marker.
// conda's rule:
// https://docs.conda.io/projects/conda-build/en/stable/resources/make-relocatable.html
#include "envd/node/relocation.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <nlohmann/json.hpp>

#include "envd/node/sandbox_mounts.hpp"
#include "envd/util/atomic_file.hpp"
#include "envd/util/log.hpp"
#include "envd/util/unique_fd.hpp"

namespace envd::node::detail {
namespace {

constexpr std::string_view k_marker = ".envd-relocation.json";

// Characters that can continue a file name: an old root followed by one of them is another path.
bool continues_name(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
         std::strchr("._-+@~%", c) != nullptr;
}

// The next occurrence at or after `from` of any old root ending at a boundary: (position, index
// into moves), the longest root first at equal positions; npos when none.
std::pair<std::size_t, std::size_t> next_match(std::string_view text, std::size_t from,
                                               const PathMoves& moves) {
  std::pair<std::size_t, std::size_t> best{std::string_view::npos, 0};
  for (std::size_t m = 0; m < moves.size(); ++m) {
    const std::string& old = moves[m].first;
    std::size_t pos = from;
    while (pos < text.size()) {
      const void* hit = ::memmem(text.data() + pos, text.size() - pos, old.data(), old.size());
      if (hit == nullptr) break;
      std::size_t at = static_cast<const char*>(hit) - text.data();
      std::size_t end = at + old.size();
      if (end == text.size() || !continues_name(text[end])) {
        if (at < best.first || (at == best.first && old.size() > moves[best.second].first.size()))
          best = {at, m};
        break;
      }
      pos = at + 1;
    }
  }
  return best;
}

struct Copier {
  std::string rootfs;
  const PathMoves& moves;
  std::vector<std::string> skip;  // image paths of other roots below the one being copied
  bool rewrite = true;            // false for source trees

  // Copies image directory `image_path` (absolute in the image) into `dest` (created).
  Result<void> copy_dir(const std::string& image_path, const std::string& dest) {
    const std::string from = rootfs + image_path;
    struct stat st {};
    if (::lstat(from.c_str(), &st) != 0)
      return unexpected(Error::from_errno("stat " + from, errno));
    if (::mkdir(dest.c_str(), 0700) != 0)
      return unexpected(Error::from_errno("create directory " + dest, errno));
    DIR* dir = ::opendir(from.c_str());
    if (dir == nullptr) return unexpected(Error::from_errno("open directory " + from, errno));
    std::vector<std::string> names;
    while (const struct dirent* d = ::readdir(dir)) {
      std::string_view name = d->d_name;
      if (name != "." && name != "..") names.emplace_back(name);
    }
    ::closedir(dir);
    for (const auto& name : names) {
      const std::string child = image_path + "/" + name;
      if (std::find(skip.begin(), skip.end(), child) != skip.end()) continue;
      ENVD_TRY_VOID(copy_entry(child, dest + "/" + name));
    }
    // Mode and mtime last: adding entries changes the mtime; a read-only mode would stop them.
    struct timespec times[2] = {st.st_mtim, st.st_mtim};
    if (::chmod(dest.c_str(), st.st_mode & 07777) != 0 ||
        ::utimensat(AT_FDCWD, dest.c_str(), times, 0) != 0)
      return unexpected(Error::from_errno("set mode of " + dest, errno));
    return {};
  }

  Result<void> copy_entry(const std::string& image_path, const std::string& dest) {
    const std::string from = rootfs + image_path;
    struct stat st {};
    if (::lstat(from.c_str(), &st) != 0)
      return unexpected(Error::from_errno("stat " + from, errno));
    if (S_ISDIR(st.st_mode)) return copy_dir(image_path, dest);
    struct timespec times[2] = {st.st_mtim, st.st_mtim};
    if (S_ISLNK(st.st_mode)) {
      std::vector<char> buf(static_cast<std::size_t>(st.st_size) + 1);
      ssize_t len = ::readlink(from.c_str(), buf.data(), buf.size());
      if (len < 0) return unexpected(Error::from_errno("read link " + from, errno));
      std::string target(buf.data(), static_cast<std::size_t>(len));
      if (rewrite) target = rewrite_paths(target, moves);
      if (::symlink(target.c_str(), dest.c_str()) != 0)
        return unexpected(Error::from_errno("create symlink " + dest, errno));
      ::utimensat(AT_FDCWD, dest.c_str(), times, AT_SYMLINK_NOFOLLOW);
      return {};
    }
    if (!S_ISREG(st.st_mode)) return {};  // the unpacker keeps no devices; fifos are not content
    ENVD_TRY(std::string content, read_file(from));
    if (rewrite) {
      if (std::memchr(content.data(), '\0', content.size()) == nullptr) {
        content = rewrite_paths(content, moves);
      } else {
        ENVD_TRY(content, rewrite_binary(content, moves, image_path));
      }
    }
    UniqueFd fd(::open(dest.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600));
    if (!fd.valid()) return unexpected(Error::from_errno("create " + dest, errno));
    std::size_t done = 0;
    while (done < content.size()) {
      ssize_t n = ::write(fd.get(), content.data() + done, content.size() - done);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return unexpected(Error::from_errno("write " + dest, errno));
      done += static_cast<std::size_t>(n);
    }
    if (::fchmod(fd.get(), st.st_mode & 0777) != 0 || ::futimens(fd.get(), times) != 0)
      return unexpected(Error::from_errno("set mode of " + dest, errno));
    return {};
  }
};

std::string marker_document(const PathMoves& moves) {
  nlohmann::json doc = {{"version", 1}, {"moves", nlohmann::json::array()}};
  for (const auto& [from, to] : moves) doc["moves"].push_back({from, to});
  return doc.dump();
}

// Whether `dir` holds a complete relocation of exactly `moves`; an error if it holds another.
Result<bool> existing_relocation(const std::filesystem::path& dir, const PathMoves& moves) {
  struct stat st {};
  if (::lstat(dir.c_str(), &st) != 0) return false;
  auto marker = read_file(dir / k_marker);
  if (marker && *marker == marker_document(moves)) return true;
  if (S_ISDIR(st.st_mode) && ::rmdir(dir.c_str()) == 0) return false;  // an empty directory
  return unexpected(ErrorCode::failed_precondition,
                    "relocation dir " + dir.string() +
                        " holds something other than this image's relocation; remove it");
}

std::atomic<unsigned> g_staging_counter{0};

}  // namespace

std::string rewrite_paths(std::string_view text, const PathMoves& moves) {
  std::string out;
  std::size_t pos = 0;
  for (;;) {
    auto [at, m] = next_match(text, pos, moves);
    if (at == std::string_view::npos) break;
    out.append(text.substr(pos, at - pos));
    out.append(moves[m].second);
    pos = at + moves[m].first.size();
  }
  if (pos == 0) return std::string(text);
  out.append(text.substr(pos));
  return out;
}

Result<std::string> rewrite_binary(std::string_view content, const PathMoves& moves,
                                   std::string_view what) {
  std::string out;
  std::size_t pos = 0;
  for (;;) {
    auto [at, m] = next_match(content, pos, moves);
    if (at == std::string_view::npos) break;
    std::size_t end = content.find('\0', at);
    if (end == std::string_view::npos) end = content.size();
    std::string_view old_string = content.substr(at, end - at);
    std::string new_string = rewrite_paths(old_string, moves);
    if (new_string.size() > old_string.size()) {
      const auto& [from, to] = moves[m];
      return unexpected(
          ErrorCode::failed_precondition,
          "cannot relocate binary file " + std::string(what) + ": it holds the path \"" +
              std::string(old_string) + "\" and a binary only takes a replacement of the same " +
              "length or shorter (NUL-padded, conda's rule), but the new root " + to + " is " +
              std::to_string(to.size() - from.size()) + " bytes longer than " + from +
              "; use a shorter relocation dir or isolation bwrap");
    }
    out.append(content.substr(pos, at - pos));
    out.append(new_string);
    out.append(old_string.size() - new_string.size(), '\0');
    pos = end;
  }
  if (pos == 0) return std::string(content);
  out.append(content.substr(pos));
  return out;
}

Result<Relocation> relocate_image(const std::filesystem::path& rootfs, const ImageRoots& roots,
                                  const std::filesystem::path& relocation_dir_in) {
  if (relocation_dir_in.empty())
    return unexpected(ErrorCode::invalid_argument,
                      "isolation none needs a relocation dir for the image's environments");
  const std::filesystem::path relocation_dir =
      std::filesystem::absolute(relocation_dir_in).lexically_normal();
  const std::string base = relocation_dir.string();

  Relocation out;
  std::vector<std::pair<std::string, bool>> copies;  // old root, rewrite its files
  for (std::size_t i = 0; i < roots.environments.size(); ++i) {
    const auto& env = roots.environments[i];
    struct stat st {};
    if (env.partial && ::stat(env.prefix.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) {
      ENVD_TRY(auto diffs, partial_differences(rootfs, env.prefix, {}));
      out.notes.push_back("isolation none: partial environment " + env.prefix +
                          " taken from the host (" + std::to_string(diffs.size()) +
                          " entries differ from the image's)");
      continue;
    }
    out.moves.emplace_back(env.prefix, base + "/e" + std::to_string(i));
    copies.emplace_back(env.prefix, true);
  }
  for (std::size_t j = 0; j < roots.sources.size(); ++j) {
    out.moves.emplace_back(roots.sources[j], base + "/s" + std::to_string(j));
    copies.emplace_back(roots.sources[j], false);
  }
  std::stable_sort(out.moves.begin(), out.moves.end(),
                   [](const auto& a, const auto& b) { return a.first.size() > b.first.size(); });
  for (const auto& [from, to] : out.moves)
    out.notes.push_back("isolation none: relocated " + from + " to " + to);

  ENVD_TRY(bool reuse, existing_relocation(relocation_dir, out.moves));
  if (reuse) return out;

  std::error_code ec;
  std::filesystem::create_directories(relocation_dir.parent_path(), ec);
  if (ec)
    return unexpected(ErrorCode::io,
                      "create " + relocation_dir.parent_path().string() + ": " + ec.message());
  const std::filesystem::path staging =
      relocation_dir.parent_path() /
      ("." + relocation_dir.filename().string() + ".staging-" + std::to_string(::getpid()) + "-" +
       std::to_string(g_staging_counter.fetch_add(1)));
  auto build = [&]() -> Result<void> {
    if (::mkdir(staging.c_str(), 0755) != 0)
      return unexpected(Error::from_errno("create " + staging.string(), errno));
    for (const auto& [old_root, rewrite] : copies) {
      const auto& to = std::find_if(out.moves.begin(), out.moves.end(), [&](const auto& m) {
                         return m.first == old_root;
                       })->second;
      Copier copier{rootfs.string(), out.moves, {}, rewrite};
      for (const auto& [other, unused] : copies)
        if (other.size() > old_root.size() && other.compare(0, old_root.size(), old_root) == 0 &&
            other[old_root.size()] == '/')
          copier.skip.push_back(other);
      const std::string dest = (staging / std::filesystem::path(to).filename()).string();
      if (auto r = copier.copy_dir(old_root, dest); !r)
        return unexpected(r.error().with_context("relocate " + old_root + " to " + to));
    }
    ENVD_TRY_VOID(write_file_atomic(staging / k_marker, marker_document(out.moves)));
    UniqueFd fd(::open(staging.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (!fd.valid() || ::syncfs(fd.get()) != 0)
      return unexpected(Error::from_errno("sync " + staging.string(), errno));
    return {};
  };
  if (auto r = build(); !r) {
    std::filesystem::remove_all(staging, ec);
    return unexpected(r.error());
  }
  if (::rename(staging.c_str(), relocation_dir.c_str()) != 0) {
    int err = errno;
    std::filesystem::remove_all(staging, ec);
    // Another process may have published the same relocation first.
    ENVD_TRY(bool now, existing_relocation(relocation_dir, out.moves));
    if (!now) return unexpected(Error::from_errno("rename " + staging.string(), err));
    return out;
  }
  ENVD_TRY_VOID(fsync_directory(relocation_dir.parent_path()));
  log::info("sandbox", "relocated image",
            {{"dir", base}, {"roots", std::to_string(copies.size())}});
  return out;
}

}  // namespace envd::node::detail
