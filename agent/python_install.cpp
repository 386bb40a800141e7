// Reads how a Python installation is laid out from its files alone (pyvenv.cfg, conda-meta,
// lib/pythonX.Y, the ELF dynamic sections of the interpreter and its extension modules).
// Python is never run: the prefix may belong to another machine's layout or be half-broken.
#include "agent/python_install.hpp"

#include <sys/stat.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <fstream>
#include <set>
#include <string_view>
#include <tuple>
#include <utility>

#include "agent/elf_needed.hpp"

namespace envd::agent {
namespace {

namespace fs = std::filesystem;

// ---------------------------------------------------------------------------------------------
// Small helpers shared by the layout readers.
// ---------------------------------------------------------------------------------------------

std::string_view trim(std::string_view s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
  return s;
}

std::string lower(std::string_view s) {
  std::string out(s);
  for (auto& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

// A Python ABI directory suffix: "3.11" from "python3.11", "3.13t" from "python3.13t" (the
// free-threaded build); nullopt when `name` is not of that shape ("python3.11-config").
struct Abi {
  int major = 0;
  int minor = 0;
  std::string text;  // "3.11" / "3.13t"
};

std::optional<Abi> abi_of(std::string_view name) {
  if (!name.starts_with("python")) return std::nullopt;
  std::string_view rest = name.substr(6);
  Abi abi;
  abi.text = rest;
  auto number = [&](int& value) {
    std::size_t n = 0;
    value = 0;
    while (n < rest.size() && n < 4 && std::isdigit(static_cast<unsigned char>(rest[n])))
      value = value * 10 + (rest[n++] - '0');
    rest.remove_prefix(n);
    return n > 0;
  };
  if (!number(abi.major) || !rest.starts_with('.')) return std::nullopt;
  rest.remove_prefix(1);
  if (!number(abi.minor)) return std::nullopt;
  if (rest == "t") rest.remove_prefix(1);
  if (!rest.empty()) return std::nullopt;
  return abi;
}

// Orders 3.12 before 3.11 before 3.9 (numerically, not as text).
bool newer_first(const Abi& a, const Abi& b) {
  return std::tie(b.major, b.minor, b.text) < std::tie(a.major, a.minor, a.text);
}

bool is_dir(const fs::path& p) {
  std::error_code ec;
  return fs::is_directory(p, ec);
}
bool path_exists(const fs::path& p) {
  std::error_code ec;
  return fs::exists(p, ec);
}
bool link_exists(const fs::path& p) {
  struct stat st {};
  return ::lstat(p.c_str(), &st) == 0;
}

// The lib/pythonX.Y[t] and lib64/pythonX.Y[t] directories of `prefix` (optionally only those
// holding the standard library, os.py), highest version first.
std::vector<Abi> python_lib_dirs(const fs::path& prefix, bool stdlib_only) {
  std::vector<Abi> out;
  for (const char* lib : {"lib", "lib64"}) {
    std::error_code ec;
    for (fs::directory_iterator it(prefix / lib, ec), end; !ec && it != end; it.increment(ec)) {
      auto abi = abi_of(it->path().filename().string());
      if (!abi || !is_dir(it->path())) continue;
      if (stdlib_only && !path_exists(it->path() / "os.py")) continue;
      bool seen =
          std::any_of(out.begin(), out.end(), [&](const Abi& a) { return a.text == abi->text; });
      if (!seen) out.push_back(std::move(*abi));
    }
  }
  std::sort(out.begin(), out.end(), newer_first);
  return out;
}

// ---------------------------------------------------------------------------------------------
// The set of prefix-relative paths a venv needs from its base prefix.
// ---------------------------------------------------------------------------------------------

class PathCollector {
 public:
  PathCollector(fs::path prefix, Diagnostics& diagnostics)
      : m_prefix(std::move(prefix)), m_prefix_str(m_prefix.string()), m_diagnostics(diagnostics) {}

  // `abs` relative to the prefix, when it lies inside it (abs must be normalised).
  std::optional<std::string> relative(const fs::path& abs) const {
    const std::string s = abs.string();
    if (m_prefix_str == "/") return s.size() > 1 ? std::optional(s.substr(1)) : std::nullopt;
    if (s.size() <= m_prefix_str.size() + 1 || !s.starts_with(m_prefix_str) ||
        s[m_prefix_str.size()] != '/')
      return std::nullopt;
    return s.substr(m_prefix_str.size() + 1);
  }

  // Lists `abs` (whose parent directory is already symlink-free) and, for a symlink, every
  // in-prefix link and file it resolves through, so that nothing shipped dangles inside the
  // prefix. Directories are never listed; links leaving the prefix are kept but not followed.
  void add(fs::path abs) {
    for (int hop = 0; hop < 40; ++hop) {  // 40: the kernel's own symlink limit (MAXSYMLINKS)
      auto rel = relative(abs);
      struct stat st {};
      if (!rel || ::lstat(abs.c_str(), &st) != 0) return;
      if (S_ISREG(st.st_mode)) {
        m_paths.insert(std::move(*rel));
        return;
      }
      if (!S_ISLNK(st.st_mode) || !m_paths.insert(std::move(*rel)).second) return;
      std::error_code ec;
      fs::path target = fs::read_symlink(abs, ec);
      if (ec) {
        m_diagnostics.warn(abs.string(), "cannot read symlink: " + ec.message());
        return;
      }
      auto next = real_location(target.is_absolute() ? target : abs.parent_path() / target);
      if (!next) return;
      abs = std::move(*next);
    }
  }

  // Where `path` really is: its parent directory with symlinks resolved (as the kernel would),
  // plus its own name, kept unresolved so that a final symlink is listed as one.
  static std::optional<fs::path> real_location(const fs::path& path) {
    const fs::path name = path.filename();
    if (name.empty() || name == "." || name == "..") return std::nullopt;
    std::error_code ec;
    fs::path parent = fs::canonical(path.parent_path(), ec);
    if (ec) return std::nullopt;
    return parent / name;
  }

  // Lists every file and symlink below the prefix-relative directory `rel_dir`, skipping the
  // directories in `skip`; collects regular "*.so" files (extension modules) into `extensions`.
  void walk(const std::string& rel_dir, const std::set<std::string>& skip,
            std::vector<fs::path>& extensions) {
    std::vector<std::string> pending{rel_dir};
    while (!pending.empty()) {
      const std::string rel = std::move(pending.back());
      pending.pop_back();
      const fs::path dir = m_prefix / rel;
      std::error_code ec;
      fs::directory_iterator it(dir, ec);
      for (fs::directory_iterator end; !ec && it != end; it.increment(ec)) {
        const std::string name = it->path().filename().string();
        std::string child = rel + "/" + name;
        if (skip.contains(child)) continue;
        std::error_code type_ec;
        if (it->is_symlink(type_ec)) {
          add(it->path());
        } else if (it->is_directory(type_ec)) {
          pending.push_back(std::move(child));
        } else if (it->is_regular_file(type_ec)) {
          if (name.ends_with(".so")) extensions.push_back(it->path());
          m_paths.insert(std::move(child));
        }
      }
      if (ec)
        m_diagnostics.warn(dir.string(), "cannot list directory (" + ec.message() +
                                             "); the files below it are not included");
    }
  }

  // Lists the shared libraries that `roots` need, transitively, wherever they resolve inside the
  // prefix: first the object's DT_RUNPATH/DT_RPATH ($ORIGIN expanded), then the prefix's own
  // lib/<multiarch>, lib64 and lib. Libraries found nowhere in the prefix come from the platform
  // (or another prefix) and are not listed. The search mirrors ld.so(8) without ld.so.cache.
  void add_shared_libraries(std::vector<fs::path> roots) {
    std::set<fs::path> visited;
    while (!roots.empty()) {
      fs::path file = std::move(roots.back());
      roots.pop_back();
      std::error_code ec;
      fs::path real = fs::canonical(file, ec);
      if (ec || !visited.insert(real).second) continue;
      auto elf = read_elf_dynamic(real);
      if (!elf) {
        m_diagnostics.warn(file.string(), elf.error().message() +
                                              "; the shared libraries it needs are not included");
        continue;
      }
      std::vector<fs::path> dirs;
      const std::string origin = real.parent_path().string();
      for (const auto& entry : elf->search_path) {
        std::string d = entry;
        for (std::string_view token : {"${ORIGIN}", "$ORIGIN"}) {
          for (auto at = d.find(token); at != std::string::npos; at = d.find(token, at)) {
            d.replace(at, token.size(), origin);
            at += origin.size();
          }
        }
        // $LIB and $PLATFORM depend on the loader's build, and relative entries on the worker's
        // working directory: neither names a fixed directory, so they are not searched.
        if (d.find('$') == std::string::npos && d.starts_with('/')) dirs.push_back(d);
      }
      auto triplet = multiarch_triplet(elf->elf_class, elf->machine);
      if (!triplet.empty()) dirs.push_back(m_prefix / "lib" / triplet);
      if (elf->elf_class == ElfClass::elf64) dirs.push_back(m_prefix / "lib64");
      dirs.push_back(m_prefix / "lib");
      for (const auto& soname : elf->needed) {
        if (is_platform_library(soname)) continue;
        auto found = find_library(soname, dirs, *elf);
        if (!found) continue;
        auto loc = real_location(*found);
        if (!loc || !relative(*loc)) continue;
        add(*loc);
        roots.push_back(*loc);
      }
    }
  }

  std::vector<std::string> take() { return {m_paths.begin(), m_paths.end()}; }

 private:
  // The first `dir/soname` that is an ELF object of the same class and machine as `from` (ld.so
  // skips incompatible ones, e.g. i386 libraries on a multiarch system).
  static std::optional<fs::path> find_library(const std::string& soname,
                                              const std::vector<fs::path>& dirs,
                                              const ElfDynamic& from) {
    if (soname.find('/') != std::string::npos) {
      return soname.front() == '/' ? std::optional<fs::path>(soname) : std::nullopt;
    }
    for (const auto& dir : dirs) {
      fs::path candidate = dir / soname;
      if (!path_exists(candidate)) continue;
      auto header = read_elf_dynamic(candidate, ElfRead::header_only);
      if (header && header->elf_class == from.elf_class && header->machine == from.machine)
        return candidate;
    }
    return std::nullopt;
  }

  fs::path m_prefix;
  std::string m_prefix_str;
  Diagnostics& m_diagnostics;
  std::set<std::string> m_paths;
};

}  // namespace

Result<PyvenvConfig> read_pyvenv_cfg(const std::filesystem::path& prefix) {
  const fs::path file = prefix / "pyvenv.cfg";
  std::error_code ec;
  auto status = fs::status(file, ec);
  if (ec) return Error::from_errno("read " + file.string(), ec.value());
  if (!fs::is_regular_file(status))
    return unexpected(ErrorCode::invalid_argument, file.string() + ": not a regular file");
  std::ifstream in(file, std::ios::binary);
  if (!in) return Error::from_errno("open " + file.string(), errno);

  PyvenvConfig cfg;
  bool have_home = false;
  std::string version, version_info;
  std::string line;
  for (int number = 1; std::getline(in, line); ++number) {
    std::string_view text = line;
    if (number == 1 && text.starts_with("\xEF\xBB\xBF")) text.remove_prefix(3);  // UTF-8 BOM
    text = trim(text);
    if (text.empty() || text.front() == '#' || text.front() == ';') continue;
    auto where = [&] { return file.string() + ":" + std::to_string(number) + ": "; };
    auto eq = text.find('=');
    if (eq == std::string_view::npos)
      return unexpected(ErrorCode::invalid_argument, where() + "expected `key = value`");
    // Keys are case-insensitive, as in CPython's site.venv().
    const std::string key = lower(trim(text.substr(0, eq)));
    const std::string value(trim(text.substr(eq + 1)));
    if (key.empty()) return unexpected(ErrorCode::invalid_argument, where() + "empty key");
    if (key == "home") {
      if (value.empty()) return unexpected(ErrorCode::invalid_argument, where() + "empty home");
      cfg.home = value;
      have_home = true;
    } else if (key == "include-system-site-packages") {
      const std::string v = lower(value);
      if (v != "true" && v != "false")
        return unexpected(
            ErrorCode::invalid_argument,
            where() + "include-system-site-packages must be true or false, not `" + value + "`");
      cfg.include_system_site_packages = v == "true";
    } else if (key == "version") {
      version = value;
    } else if (key == "version_info") {
      version_info = value;
    } else if (key == "base-executable") {
      if (!value.empty()) cfg.base_executable = fs::path(value);
    } else if (key == "prompt") {
      cfg.prompt = value;
    } else if (key == "implementation") {
      cfg.implementation = value;
    } else if (key == "virtualenv") {
      cfg.virtualenv = value;
    } else if (key == "uv") {
      cfg.uv = value;
    }
  }
  if (in.bad()) return unexpected(ErrorCode::io, "read " + file.string() + ": I/O error");
  if (!have_home) return unexpected(ErrorCode::invalid_argument, file.string() + ": no home key");
  if (!version.empty()) {
    cfg.version = version;
  } else {
    // virtualenv writes "3.11.9.final.0": keep the release part.
    std::size_t dots = 0, end = 0;
    while (end < version_info.size() && !(version_info[end] == '.' && ++dots == 3)) ++end;
    cfg.version = version_info.substr(0, end);
  }
  return cfg;
}

Result<snapshot::EnvironmentKind> detect_environment_kind(const std::filesystem::path& prefix) {
  std::error_code ec;
  auto status = fs::status(prefix, ec);
  if (ec) return Error::from_errno(prefix.string(), ec.value());
  if (!fs::is_directory(status))
    return unexpected(ErrorCode::invalid_argument, prefix.string() + " is not a directory");
  if (path_exists(prefix / "conda-meta" / "history")) return snapshot::EnvironmentKind::conda;
  if (path_exists(prefix / "pyvenv.cfg")) return snapshot::EnvironmentKind::venv;
  if ((path_exists(prefix / "bin" / "python3") || path_exists(prefix / "bin" / "python")) &&
      !python_lib_dirs(prefix, /*stdlib_only=*/false).empty())
    return snapshot::EnvironmentKind::prefix;
  return unexpected(ErrorCode::invalid_argument,
                    prefix.string() +
                        " is not a Python environment (no conda-meta/history, pyvenv.cfg or "
                        "bin/python3)");
}

std::string python_version_of(const std::filesystem::path& prefix) {
  if (auto cfg = read_pyvenv_cfg(prefix); cfg && !cfg->version.empty()) return cfg->version;

  // conda-meta/NAME-VERSION-BUILD.json: the name is everything before the last two dashes, so
  // "python-dateutil-2.8.2-pyhd8ed1ab_0.json" is not the interpreter.
  std::error_code ec;
  for (fs::directory_iterator it(prefix / "conda-meta", ec), end; !ec && it != end;
       it.increment(ec)) {
    std::string stem = it->path().filename().string();
    if (!stem.ends_with(".json")) continue;
    stem.resize(stem.size() - 5);
    auto build_dash = stem.rfind('-');
    if (build_dash == std::string::npos || build_dash == 0) continue;
    auto version_dash = stem.rfind('-', build_dash - 1);
    if (version_dash == std::string::npos || stem.compare(0, version_dash, "python") != 0) continue;
    return stem.substr(version_dash + 1, build_dash - version_dash - 1);
  }

  auto libs = python_lib_dirs(prefix, /*stdlib_only=*/false);
  for (const auto& abi : libs) {
    // `#define PY_VERSION "3.11.7"`, from the development headers when they are installed.
    std::ifstream header(prefix / "include" / ("python" + abi.text) / "patchlevel.h");
    std::string line;
    while (header && std::getline(header, line)) {
      std::string_view text = trim(line);
      if (!text.starts_with("#define") || trim(text.substr(7)).substr(0, 11) != "PY_VERSION ")
        continue;
      auto open = text.find('"');
      auto close = open == std::string_view::npos ? open : text.find('"', open + 1);
      if (close != std::string_view::npos)
        return std::string(text.substr(open + 1, close - open - 1));
    }
  }
  if (!libs.empty())
    return std::to_string(libs.front().major) + "." + std::to_string(libs.front().minor);
  return {};
}

std::vector<std::string> site_packages_dirs(const std::filesystem::path& prefix) {
  std::set<std::string> out;
  std::set<fs::path> seen;  // venv makes lib64 a symlink to lib: report each directory once
  for (const auto& abi : python_lib_dirs(prefix, /*stdlib_only=*/false)) {
    for (const char* lib : {"lib", "lib64"}) {
      for (const char* leaf : {"site-packages", "dist-packages"}) {
        std::string rel = std::string(lib) + "/python" + abi.text + "/" + leaf;
        std::error_code ec;
        fs::path real = fs::canonical(prefix / rel, ec);
        if (!ec && is_dir(real) && seen.insert(real).second) out.insert(rel);
      }
    }
  }
  // Debian's version-independent directory for its python3-* packages.
  if (is_dir(prefix / "lib/python3/dist-packages")) out.insert("lib/python3/dist-packages");
  return {out.begin(), out.end()};
}

Result<std::filesystem::path> base_prefix_of(const std::filesystem::path& venv_prefix,
                                             const PyvenvConfig& config) {
  // A relative home is taken relative to the venv (no tool writes one; this keeps it inside).
  const fs::path home = config.home.is_absolute() ? config.home : venv_prefix / config.home;
  const std::string cfg_file = (venv_prefix / "pyvenv.cfg").string();
  std::error_code ec;
  fs::path real = fs::canonical(home, ec);
  if (ec) {
    const Error e = Error::from_errno(cfg_file + ": home " + home.string(), ec.value());
    return Error(e.code(), e.message());
  }
  if (!fs::is_directory(real, ec))
    return unexpected(ErrorCode::invalid_argument,
                      cfg_file + ": home " + home.string() + " is not a directory");
  if (real.filename() == "bin") return real.parent_path();
  return real;
}

Result<std::vector<std::string>> base_interpreter_paths(const std::filesystem::path& base_prefix,
                                                        bool with_site_packages,
                                                        Diagnostics& diagnostics) {
  std::error_code ec;
  const fs::path prefix = fs::canonical(base_prefix, ec);
  if (ec) return Error::from_errno("base prefix " + base_prefix.string(), ec.value());

  // The interpreter: python3, python, or (after `make altinstall`) the highest python3.X.
  std::vector<Abi> versioned;
  for (fs::directory_iterator it(prefix / "bin", ec), end; !ec && it != end; it.increment(ec)) {
    if (auto a = abi_of(it->path().filename().string())) versioned.push_back(std::move(*a));
  }
  std::sort(versioned.begin(), versioned.end(), newer_first);
  std::vector<std::string> names{"python3", "python"};
  for (const auto& a : versioned) names.push_back("python" + a.text);
  fs::path interpreter;
  for (const auto& name : names) {
    std::error_code ec2;
    if (fs::is_regular_file(prefix / "bin" / name, ec2)) {
      interpreter = fs::canonical(prefix / "bin" / name, ec2);
      if (!ec2) break;
      interpreter.clear();
    }
  }
  if (interpreter.empty())
    return unexpected(ErrorCode::not_found, "no Python interpreter in " +
                                                (prefix / "bin").string() +
                                                " (python3, python or python3.X)");

  // Its ABI from its real name ("python3.11"), else from the standard library on disk.
  std::string abi;
  if (auto a = abi_of(interpreter.filename().string())) abi = a->text;
  if (abi.empty()) {
    auto libs = python_lib_dirs(prefix, /*stdlib_only=*/true);
    if (!libs.empty()) abi = libs.front().text;
  }
  const std::string python = "python" + abi;
  if (abi.empty() || (!is_dir(prefix / "lib" / python) && !is_dir(prefix / "lib64" / python)))
    return unexpected(ErrorCode::not_found, "no standard library lib/python" +
                                                (abi.empty() ? std::string("X.Y") : abi) + " in " +
                                                prefix.string());

  PathCollector paths(prefix, diagnostics);
  // Each name a venv may link to (venv links bin/python* to the executable that created it), when
  // it is this interpreter: a bin/python that is Python 2 is not needed.
  for (const std::string& name : {std::string("python3"), python, std::string("python")}) {
    std::error_code ec2;
    const fs::path link = prefix / "bin" / name;
    if (link_exists(link) && fs::canonical(link, ec2) == interpreter && !ec2) paths.add(link);
  }

  std::vector<fs::path> extensions;
  std::set<fs::path> walked;
  auto walk = [&](const std::string& rel, bool skip_site_packages) {
    std::error_code ec2;
    fs::path real = fs::canonical(prefix / rel, ec2);  // lib64 may be a link to lib: walk once
    auto real_rel = ec2 ? std::nullopt : paths.relative(real);
    if (!real_rel || !is_dir(real) || !walked.insert(real).second) return;
    std::set<std::string> skip;
    if (skip_site_packages) skip = {*real_rel + "/site-packages", *real_rel + "/dist-packages"};
    paths.walk(*real_rel, skip, extensions);
  };
  walk("lib/" + python, !with_site_packages);
  walk("lib64/" + python, !with_site_packages);
  if (with_site_packages) walk("lib/python3/dist-packages", false);

  std::vector<fs::path> roots{interpreter};
  roots.insert(roots.end(), extensions.begin(), extensions.end());
  paths.add_shared_libraries(std::move(roots));
  return paths.take();
}

}  // namespace envd::agent
