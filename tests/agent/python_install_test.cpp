// Tests for agent/python_install and agent/elf_needed against real data: the pyvenv.cfg fixtures,
// venvs created here by Debian's and pyenv's Python, Debian's /usr, the read-only pyenv prefix
// /root/.pyenv/versions/3.11.7, and a small prefix whose ELF files gcc builds at test time.
#include "agent/python_install.hpp"

#include <doctest/doctest.h>
#include <sys/stat.h>

#include <algorithm>
#include <chrono>
#include <set>
#include <sstream>

#include "agent/elf_needed.hpp"
#include "support/run_command.hpp"
#include "support/scratch_dir.hpp"

namespace fs = std::filesystem;
using envd::ErrorCode;
using envd::agent::Diagnostics;
using envd::snapshot::EnvironmentKind;
using envd::test::run_command;
using envd::test::ScratchDir;
using envd::test::tree_listing;
using envd::test::write_file;

namespace {

const fs::path k_pyenv = "/root/.pyenv/versions/3.11.7";  // read-only: never written to

bool contains(const std::vector<std::string>& v, const std::string& s) {
  return std::find(v.begin(), v.end(), s) != v.end();
}

std::size_t count_with_prefix(const std::vector<std::string>& v, std::string_view prefix) {
  return static_cast<std::size_t>(std::count_if(
      v.begin(), v.end(), [&](const std::string& s) { return s.starts_with(prefix); }));
}

// Copies a pyvenv.cfg fixture into dir/pyvenv.cfg.
fs::path venv_with_fixture(const ScratchDir& scratch, const std::string& fixture) {
  fs::path dir = scratch / fixture;
  write_file(dir / "pyvenv.cfg",
             envd::test::read_file(envd::test::fixtures_dir() / "pip/pyvenv" / fixture));
  return dir;
}

// Creates a venv with a real interpreter; pip is left out to keep the test fast (it is not part
// of what these functions read).
fs::path make_venv(const ScratchDir& scratch, const std::string& python, const std::string& name,
                   std::vector<std::string> extra = {}) {
  fs::path dir = scratch / name;
  std::vector<std::string> argv{python, "-m", "venv", "--without-pip"};
  argv.insert(argv.end(), extra.begin(), extra.end());
  argv.push_back(dir.string());
  auto r = run_command(argv);
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  return dir;
}

std::string python_reports_version(const std::string& python) {
  auto r = run_command({python, "-c", "import platform; print(platform.python_version())"});
  REQUIRE(r.exit_code == 0);
  return r.out.substr(0, r.out.find('\n'));
}

// Invariants of every base_interpreter_paths result: sorted, unique, safe relative paths of
// existing files or symlinks (no directories), and no in-prefix symlink whose target is missing.
void check_listing(const fs::path& prefix, const std::vector<std::string>& paths) {
  CHECK(std::is_sorted(paths.begin(), paths.end()));
  CHECK(std::adjacent_find(paths.begin(), paths.end()) == paths.end());
  const fs::path real_prefix = fs::canonical(prefix);
  const std::set<std::string> listed(paths.begin(), paths.end());
  for (const auto& p : paths) {
    INFO(p);
    REQUIRE(envd::snapshot::is_safe_relative_path(p));
    struct stat st {};
    REQUIRE(::lstat((prefix / p).c_str(), &st) == 0);
    CHECK((S_ISREG(st.st_mode) || S_ISLNK(st.st_mode)));
    if (!S_ISLNK(st.st_mode)) continue;
    std::error_code ec;
    fs::path target = fs::read_symlink(prefix / p);
    if (target.is_relative()) target = (prefix / p).parent_path() / target;
    fs::path where = fs::canonical(target.parent_path(), ec) / target.filename();
    auto rel = where.lexically_relative(real_prefix).string();
    if (ec || rel.starts_with("..") || !fs::exists(where) || fs::is_directory(where)) continue;
    CHECK_MESSAGE(listed.contains(rel), "symlink target not listed: " << rel);
  }
}

// The shared libraries `ldd` says `files` load, as /usr-relative paths, minus glibc's own.
std::set<std::string> ldd_usr_libraries(const std::vector<std::string>& files) {
  static const std::set<std::string> glibc{"libc.so.6",      "libm.so.6",   "libpthread.so.0",
                                           "libdl.so.2",     "librt.so.1",  "libutil.so.1",
                                           "libresolv.so.2", "libanl.so.1", "libnsl.so.1"};
  std::vector<std::string> argv{"ldd"};
  argv.insert(argv.end(), files.begin(), files.end());
  auto r = run_command(argv);
  REQUIRE(r.exit_code == 0);
  std::set<std::string> out;
  std::istringstream lines(r.out);
  for (std::string line; std::getline(lines, line);) {
    // "\tlibz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x...)"
    if (line.find(" => /") == std::string::npos) continue;
    std::istringstream words(line);
    std::string soname, arrow, path;
    words >> soname >> arrow >> path;
    if (glibc.contains(soname)) continue;
    fs::path loc = fs::canonical(fs::path(path).parent_path()) / fs::path(path).filename();
    out.insert(loc.lexically_relative("/usr").string());
  }
  return out;
}

}  // namespace

TEST_CASE("read_pyvenv_cfg parses what venv, virtualenv and uv write") {
  ScratchDir scratch;
  SUBCASE("python -m venv") {
    auto cfg = envd::agent::read_pyvenv_cfg(venv_with_fixture(scratch, "cpython-venv.pyvenv.cfg"));
    REQUIRE(cfg);
    CHECK(cfg->home == "/usr/bin");
    CHECK_FALSE(cfg->include_system_site_packages);
    CHECK(cfg->version == "3.12.3");
    CHECK_FALSE(cfg->base_executable.has_value());
    CHECK(cfg->uv.empty());
  }
  SUBCASE("virtualenv: version wins over version_info") {
    auto cfg = envd::agent::read_pyvenv_cfg(venv_with_fixture(scratch, "virtualenv.pyvenv.cfg"));
    REQUIRE(cfg);
    CHECK(cfg->home == "/opt/python/3.11.9/bin");
    CHECK(cfg->version == "3.11.9");
    REQUIRE(cfg->base_executable.has_value());
    CHECK(*cfg->base_executable == "/opt/python/3.11.9/bin/python3.11");
    CHECK(cfg->virtualenv == "20.29.1");
    CHECK(cfg->implementation == "CPython");
  }
  SUBCASE("uv: version_info, prompt") {
    auto cfg = envd::agent::read_pyvenv_cfg(venv_with_fixture(scratch, "uv.pyvenv.cfg"));
    REQUIRE(cfg);
    CHECK(cfg->home == "/home/user/.local/share/uv/python/cpython-3.12.8-linux-x86_64-gnu/bin");
    CHECK(cfg->version == "3.12.8");
    CHECK(cfg->prompt == "analysis");
    CHECK(cfg->uv == "0.5.21");
    CHECK_FALSE(cfg->include_system_site_packages);
  }
  SUBCASE("uv on a conda python, with system site-packages") {
    auto cfg =
        envd::agent::read_pyvenv_cfg(venv_with_fixture(scratch, "uv-on-conda-python.pyvenv.cfg"));
    REQUIRE(cfg);
    CHECK(cfg->home == "/home/user/miniforge3/envs/base-py312/bin");
    CHECK(cfg->include_system_site_packages);
  }
  SUBCASE("uv relocatable: unknown keys are ignored") {
    auto cfg =
        envd::agent::read_pyvenv_cfg(venv_with_fixture(scratch, "uv-relocatable-seed.pyvenv.cfg"));
    REQUIRE(cfg);
    CHECK(cfg->version == "3.12.8");
    CHECK(cfg->prompt == "analysis");
  }
}

TEST_CASE("read_pyvenv_cfg tolerates whitespace, key case, CRLF, comments; cuts version_info") {
  ScratchDir scratch;
  write_file(scratch / "pyvenv.cfg",
             "\xEF\xBB\xBF  HOME=/usr/bin  \r\n\n# comment\n; comment\n"
             "Include-System-Site-Packages =TRUE\r\n  version_info   =  3.11.9.final.0\n"
             "some-new-key = value = with equals\n");
  auto cfg = envd::agent::read_pyvenv_cfg(scratch.path());
  REQUIRE(cfg);
  CHECK(cfg->home == "/usr/bin");
  CHECK(cfg->include_system_site_packages);
  CHECK(cfg->version == "3.11.9");
}

TEST_CASE("read_pyvenv_cfg rejects bad input naming the file and line, writing nothing") {
  ScratchDir scratch;
  std::string content, where;
  SUBCASE("line without =") {
    content = "home = /usr/bin\n\nthis is not a pair\n";
    where = ":3:";
  }
  SUBCASE("empty key") {
    content = "home = /usr/bin\n = 3\n";
    where = ":2:";
  }
  SUBCASE("include-system-site-packages not a boolean") {
    content = "include-system-site-packages = yes\nhome = /usr/bin\n";
    where = ":1:";
  }
  SUBCASE("empty home") {
    content = "home =\n";
    where = ":1:";
  }
  write_file(scratch / "pyvenv.cfg", content);
  const auto before = tree_listing(scratch.path());
  auto cfg = envd::agent::read_pyvenv_cfg(scratch.path());
  REQUIRE_FALSE(cfg);
  CHECK(cfg.error().code() == ErrorCode::invalid_argument);
  CHECK(cfg.error().message().find((scratch / "pyvenv.cfg").string() + where) != std::string::npos);
  CHECK(tree_listing(scratch.path()) == before);
}

TEST_CASE("read_pyvenv_cfg: no file is not_found, no home key is invalid_argument") {
  ScratchDir scratch;
  auto missing = envd::agent::read_pyvenv_cfg(scratch.path());
  REQUIRE_FALSE(missing);
  CHECK(missing.error().code() == ErrorCode::not_found);
  write_file(scratch / "pyvenv.cfg", "version = 3.11.2\n");
  auto no_home = envd::agent::read_pyvenv_cfg(scratch.path());
  REQUIRE_FALSE(no_home);
  CHECK(no_home.error().code() == ErrorCode::invalid_argument);
  CHECK(no_home.error().message().find("home") != std::string::npos);
}

TEST_CASE("detect_environment_kind") {
  using envd::agent::detect_environment_kind;
  ScratchDir scratch;
  SUBCASE("the pyenv interpreter and Debian's /usr are plain prefixes") {
    auto pyenv = detect_environment_kind(k_pyenv);
    REQUIRE(pyenv);
    CHECK(*pyenv == EnvironmentKind::prefix);
    auto usr = detect_environment_kind("/usr");
    REQUIRE(usr);
    CHECK(*usr == EnvironmentKind::prefix);
  }
  SUBCASE("missing directory is not_found") {
    auto r = detect_environment_kind(scratch / "nope");
    REQUIRE_FALSE(r);
    CHECK(r.error().code() == ErrorCode::not_found);
  }
  SUBCASE("empty directory is not a Python environment") {
    auto r = detect_environment_kind(scratch.path());
    REQUIRE_FALSE(r);
    CHECK(r.error().code() == ErrorCode::invalid_argument);
    CHECK(r.error().message() == scratch.path().string() +
                                     " is not a Python environment (no conda-meta/history, "
                                     "pyvenv.cfg or bin/python3)");
  }
  SUBCASE("bin/python3 without lib/pythonX.Y is not one either") {
    write_file(scratch / "bin/python3", "#!/bin/sh\n");
    auto r = detect_environment_kind(scratch.path());
    REQUIRE_FALSE(r);
    CHECK(r.error().code() == ErrorCode::invalid_argument);
  }
  SUBCASE("a file is not a prefix") {
    write_file(scratch / "file", "x");
    auto r = detect_environment_kind(scratch / "file");
    REQUIRE_FALSE(r);
    CHECK(r.error().code() == ErrorCode::invalid_argument);
  }
  SUBCASE("conda-meta/history makes a conda environment, even next to pyvenv.cfg") {
    write_file(scratch / "conda-meta/history", "==> 2024-01-01 00:00:00 <==\n");
    write_file(scratch / "pyvenv.cfg", "home = /usr/bin\n");
    auto r = detect_environment_kind(scratch.path());
    REQUIRE(r);
    CHECK(*r == EnvironmentKind::conda);
  }
  SUBCASE("pyvenv.cfg makes a venv") {
    write_file(scratch / "pyvenv.cfg", "home = /usr/bin\n");
    auto r = detect_environment_kind(scratch.path());
    REQUIRE(r);
    CHECK(*r == EnvironmentKind::venv);
  }
}

TEST_CASE("python_version_of reads pyvenv.cfg, conda-meta, patchlevel.h, lib/pythonX.Y") {
  using envd::agent::python_version_of;
  ScratchDir scratch;
  SUBCASE("pyvenv.cfg version / version_info") {
    CHECK(python_version_of(venv_with_fixture(scratch, "virtualenv.pyvenv.cfg")) == "3.11.9");
    CHECK(python_version_of(venv_with_fixture(scratch, "uv.pyvenv.cfg")) == "3.12.8");
  }
  SUBCASE("the conda record of python, not python-dateutil or python_abi") {
    write_file(scratch / "conda-meta/python-dateutil-2.8.2-pyhd8ed1ab_0.json", "{}");
    write_file(scratch / "conda-meta/python_abi-3.12-4_cp312.json", "{}");
    write_file(scratch / "conda-meta/python-3.12.1-hab00c5b_1_cpython.json", "{}");
    write_file(scratch / "lib/python3.12/os.py", "");
    CHECK(python_version_of(scratch.path()) == "3.12.1");
  }
  SUBCASE("without the python record, the lib directory") {
    write_file(scratch / "conda-meta/python-dateutil-2.8.2-pyhd8ed1ab_0.json", "{}");
    write_file(scratch / "lib/python3.12/os.py", "");
    write_file(scratch / "lib/python3.9/site-packages/x.py", "");
    CHECK(python_version_of(scratch.path()) == "3.12");
  }
  SUBCASE("patchlevel.h of a synthetic prefix") {
    write_file(scratch / "lib/python3.13t/os.py", "");
    write_file(scratch / "include/python3.13t/patchlevel.h",
               "#define PY_MINOR_VERSION 13\n#define PY_VERSION              \"3.13.1\"\n");
    CHECK(python_version_of(scratch.path()) == "3.13.1");
  }
  SUBCASE("real prefixes agree with their interpreters") {
    CHECK(python_version_of(k_pyenv) == python_reports_version((k_pyenv / "bin/python3").string()));
    // Debian's headers come with python3.11-dev; without them only X.Y is known.
    const std::string debian = python_reports_version("/usr/bin/python3");
    if (fs::exists("/usr/include/python3.11/patchlevel.h"))
      CHECK(python_version_of("/usr") == debian);
    else
      CHECK(debian.starts_with(python_version_of("/usr") + "."));
  }
  SUBCASE("nothing known") {
    CHECK(python_version_of(scratch.path()).empty());
  }
}

TEST_CASE("site_packages_dirs") {
  using envd::agent::site_packages_dirs;
  CHECK(site_packages_dirs(k_pyenv) == std::vector<std::string>{"lib/python3.11/site-packages"});
  CHECK(contains(site_packages_dirs("/usr"), "lib/python3/dist-packages"));
  ScratchDir scratch;
  fs::create_directories(scratch / "lib/python3.13t/site-packages");
  fs::create_directories(scratch / "lib64/python3.12/site-packages");
  fs::create_directories(scratch / "lib/python3.12/dist-packages");
  fs::create_directories(scratch / "lib/python3.12/lib-dynload");
  CHECK(site_packages_dirs(scratch.path()) ==
        std::vector<std::string>{"lib/python3.12/dist-packages", "lib/python3.13t/site-packages",
                                 "lib64/python3.12/site-packages"});
}

TEST_CASE("real venvs of Debian's and pyenv's Python") {
  using namespace envd::agent;
  ScratchDir scratch;
  std::string python, name;
  std::vector<std::string> extra;
  fs::path base;
  bool system_site = false;
  SUBCASE("Debian python3 -m venv") {
    python = "/usr/bin/python3", name = "debian", base = "/usr";
  }
  SUBCASE("Debian python3 -m venv --system-site-packages") {
    python = "/usr/bin/python3", name = "debian-site", base = "/usr", system_site = true;
    extra = {"--system-site-packages"};
  }
  SUBCASE("pyenv python -m venv") {
    python = (k_pyenv / "bin/python").string(), name = "pyenv", base = k_pyenv;
  }
  const fs::path venv = make_venv(scratch, python, name, extra);
  const auto before = tree_listing(venv);

  auto kind = detect_environment_kind(venv);
  REQUIRE(kind);
  CHECK(*kind == EnvironmentKind::venv);
  auto cfg = read_pyvenv_cfg(venv);
  REQUIRE(cfg);
  CHECK(cfg->home == base / "bin");
  CHECK(cfg->include_system_site_packages == system_site);
  const std::string version = python_reports_version(python);
  CHECK(cfg->version == version);
  CHECK(python_version_of(venv) == version);
  auto base_prefix = base_prefix_of(venv, *cfg);
  REQUIRE(base_prefix);
  CHECK(*base_prefix == base);
  CHECK(site_packages_dirs(venv) == std::vector<std::string>{"lib/python3.11/site-packages"});
  CHECK(tree_listing(venv) == before);
}

TEST_CASE("base_prefix_of resolves symlinks and names pyvenv.cfg when home is missing") {
  using envd::agent::base_prefix_of;
  ScratchDir scratch;
  envd::agent::PyvenvConfig cfg;
  SUBCASE("a symlinked bin directory") {
    fs::create_directory_symlink("/usr/bin", scratch / "linked-bin");
    cfg.home = scratch / "linked-bin";
    auto r = base_prefix_of(scratch.path(), cfg);
    REQUIRE(r);
    CHECK(*r == "/usr");
  }
  SUBCASE("home not ending in bin is the base prefix itself") {
    fs::create_directories(scratch / "python-base");
    cfg.home = scratch / "python-base";
    auto r = base_prefix_of(scratch.path(), cfg);
    REQUIRE(r);
    CHECK(*r == fs::canonical(scratch / "python-base"));
  }
  SUBCASE("missing home") {
    cfg.home = scratch / "gone/bin";
    auto r = base_prefix_of(scratch / "venv", cfg);
    REQUIRE_FALSE(r);
    CHECK(r.error().code() == ErrorCode::not_found);
    CHECK(r.error().message().find((scratch / "venv/pyvenv.cfg").string()) != std::string::npos);
    CHECK(r.error().message().find((scratch / "gone/bin").string()) != std::string::npos);
  }
}

TEST_CASE("base_interpreter_paths of the pyenv prefix") {
  Diagnostics diagnostics;
  const auto before = tree_listing(k_pyenv);
  auto r = envd::agent::base_interpreter_paths(k_pyenv, false, diagnostics);
  REQUIRE(r);
  const auto& paths = *r;
  check_listing(k_pyenv, paths);
  CHECK(contains(paths, "bin/python3.11"));
  CHECK(contains(paths, "bin/python3"));
  CHECK(contains(paths, "bin/python"));
  CHECK(contains(paths, "lib/python3.11/os.py"));
  CHECK(count_with_prefix(paths, "lib/python3.11/lib-dynload/_ssl.") == 1);
  CHECK(count_with_prefix(paths, "lib/python3.11/__pycache__/os.") >= 1);
  // This interpreter is linked against libpython (readelf says so), which must come along.
  auto readelf = run_command({"readelf", "-d", (k_pyenv / "bin/python3.11").string()});
  REQUIRE(readelf.exit_code == 0);
  CHECK(readelf.out.find("[libpython3.11.so.1.0]") != std::string::npos);
  CHECK(contains(paths, "lib/libpython3.11.so.1.0"));
  CHECK_FALSE(contains(paths, "lib/libpython3.11.so"));  // the link for building, not running
  CHECK(count_with_prefix(paths, "lib/python3.11/site-packages/") == 0);
  CHECK(count_with_prefix(paths, "include/") == 0);
  CHECK_FALSE(contains(paths, "bin/pip"));
  CHECK(diagnostics.size() == 0);

  auto with_site = envd::agent::base_interpreter_paths(k_pyenv, true, diagnostics);
  REQUIRE(with_site);
  CHECK(contains(*with_site, "lib/python3.11/site-packages/README.txt"));
  CHECK(std::includes(with_site->begin(), with_site->end(), paths.begin(), paths.end()));
  CHECK(tree_listing(k_pyenv) == before);
}

TEST_CASE("base_interpreter_paths of Debian's /usr") {
  Diagnostics diagnostics;
  const auto before = tree_listing("/usr/lib/python3.11");
  const auto start = std::chrono::steady_clock::now();
  auto r = envd::agent::base_interpreter_paths("/usr", false, diagnostics);
  const auto elapsed = std::chrono::steady_clock::now() - start;
  REQUIRE(r);
  const auto& paths = *r;
  CHECK(elapsed < std::chrono::milliseconds(200));
  check_listing("/usr", paths);
  CHECK(contains(paths, "bin/python3.11"));
  CHECK(contains(paths, "bin/python3"));
  CHECK(contains(paths, "lib/python3.11/os.py"));
  CHECK(count_with_prefix(paths, "lib/python3.11/lib-dynload/_ssl.") == 1);
  CHECK(contains(paths, "lib/x86_64-linux-gnu/libexpat.so.1"));
  CHECK(contains(paths, "lib/x86_64-linux-gnu/libffi.so.8"));
  CHECK(count_with_prefix(paths, "lib/x86_64-linux-gnu/libssl.so") >= 1);
  CHECK_FALSE(contains(paths, "lib/x86_64-linux-gnu/libc.so.6"));
  CHECK_FALSE(contains(paths, "lib/x86_64-linux-gnu/libm.so.6"));
  CHECK(count_with_prefix(paths, "lib/x86_64-linux-gnu/ld-linux") == 0);
  CHECK(count_with_prefix(paths, "lib/python3/dist-packages/") == 0);
  CHECK(count_with_prefix(paths, "lib/python3.11/dist-packages/") == 0);
  CHECK(diagnostics.size() == 0);

  // ldd is the oracle: every non-glibc library it loads for the interpreter and lib-dynload.
  std::vector<std::string> elf_files{"/usr/bin/python3.11"};
  for (const auto& e : fs::directory_iterator("/usr/lib/python3.11/lib-dynload")) {
    if (e.path().extension() == ".so") elf_files.push_back(e.path().string());
  }
  const std::set<std::string> expected = ldd_usr_libraries(elf_files);
  CHECK(expected.size() > 5);
  for (const auto& lib : expected) CHECK_MESSAGE(contains(paths, lib), lib);

  auto with_site = envd::agent::base_interpreter_paths("/usr", true, diagnostics);
  REQUIRE(with_site);
  CHECK(count_with_prefix(*with_site, "lib/python3/dist-packages/") > 0);
  CHECK(std::includes(with_site->begin(), with_site->end(), paths.begin(), paths.end()));
  CHECK(tree_listing("/usr/lib/python3.11") == before);
}

TEST_CASE("base_interpreter_paths: $ORIGIN runpath, multiarch dir, symlink chains, bad ELF") {
  ScratchDir scratch;
  const fs::path base = scratch / "base";
  const fs::path src = scratch / "src";
  write_file(src / "leaf.c", "int leaf(void) { return 1; }\n");
  write_file(src / "core.c", "int leaf(void);\nint core(void) { return leaf(); }\n");
  write_file(src / "dep.c", "int dep(void) { return 2; }\n");
  write_file(src / "ext.c", "int dep(void);\nint ext(void) { return dep(); }\n");
  write_file(src / "main.c", "int core(void);\nint main(void) { return core(); }\n");
  fs::create_directories(base / "lib/deps");
  fs::create_directories(base / "lib/x86_64-linux-gnu");
  fs::create_directories(base / "lib/python3.11/lib-dynload");
  fs::create_directories(base / "bin");
  auto gcc = [&](std::vector<std::string> args) {
    args.insert(args.begin(), "gcc");
    auto r = run_command(args);
    INFO(r.err);
    REQUIRE(r.exit_code == 0);
  };
  const std::string lib = (base / "lib").string();
  gcc({"-shared", "-fPIC", "-Wl,-soname,libleaf.so.0", "-o", lib + "/libleaf.so.0.1",
       (src / "leaf.c").string()});
  fs::create_symlink("libleaf.so.0.1", base / "lib/libleaf.so.0");
  gcc({"-shared", "-fPIC", "-Wl,-soname,libcore.so.2", "-o", lib + "/x86_64-linux-gnu/libcore.so.2",
       (src / "core.c").string(), "-L" + lib, "-l:libleaf.so.0"});
  gcc({"-shared", "-fPIC", "-Wl,-soname,libdep.so.1", "-o", lib + "/deps/libdep.so.1.0",
       (src / "dep.c").string()});
  fs::create_symlink("libdep.so.1.0", base / "lib/deps/libdep.so.1");
  gcc({"-shared", "-fPIC", "-Wl,--enable-new-dtags,-rpath,$ORIGIN/../../deps", "-o",
       lib + "/python3.11/lib-dynload/_ext.cpython-311-x86_64-linux-gnu.so",
       (src / "ext.c").string(), "-L" + lib + "/deps", "-l:libdep.so.1"});
  gcc({"-o", (base / "bin/python3.11").string(), (src / "main.c").string(),
       "-L" + lib + "/x86_64-linux-gnu", "-l:libcore.so.2", "-Wl,-rpath-link," + lib});
  gcc({"-shared", "-fPIC", "-o", lib + "/libunused.so.1", (src / "leaf.c").string()});
  fs::create_symlink("python3.11", base / "bin/python3");
  fs::create_symlink("/usr/bin/python3", base / "bin/python");  // another interpreter: not needed
  write_file(base / "lib/python3.11/os.py", "");
  write_file(base / "lib/python3.11/__pycache__/os.cpython-311.pyc", "");
  write_file(base / "lib/python3.11/site-packages/foo.py", "");
  write_file(base / "lib/python3.11/lib-dynload/_bad.cpython-311-x86_64-linux-gnu.so", "not ELF");
  write_file(base / "share/data.txt", "data");
  fs::create_symlink("../../share/data.txt", base / "lib/python3.11/link_in.py");
  fs::create_symlink("/etc/hostname", base / "lib/python3.11/link_out.py");

  const auto before = tree_listing(base);
  Diagnostics diagnostics;
  auto r = envd::agent::base_interpreter_paths(base, false, diagnostics);
  REQUIRE(r);
  CHECK(*r == std::vector<std::string>{
                  "bin/python3",
                  "bin/python3.11",
                  "lib/deps/libdep.so.1",
                  "lib/deps/libdep.so.1.0",
                  "lib/libleaf.so.0",
                  "lib/libleaf.so.0.1",
                  "lib/python3.11/__pycache__/os.cpython-311.pyc",
                  "lib/python3.11/lib-dynload/_bad.cpython-311-x86_64-linux-gnu.so",
                  "lib/python3.11/lib-dynload/_ext.cpython-311-x86_64-linux-gnu.so",
                  "lib/python3.11/link_in.py",
                  "lib/python3.11/link_out.py",
                  "lib/python3.11/os.py",
                  "lib/x86_64-linux-gnu/libcore.so.2",
                  "share/data.txt",
              });
  auto warnings = diagnostics.list();
  REQUIRE(warnings.size() == 1);
  CHECK(warnings[0].path ==
        (base / "lib/python3.11/lib-dynload/_bad.cpython-311-x86_64-linux-gnu.so").string());
  CHECK(warnings[0].message.find("not an ELF file") != std::string::npos);
  CHECK(tree_listing(base) == before);
}

TEST_CASE("base_interpreter_paths: missing prefix, interpreter or standard library") {
  ScratchDir scratch;
  Diagnostics diagnostics;
  SUBCASE("missing prefix") {
    auto r = envd::agent::base_interpreter_paths(scratch / "nope", false, diagnostics);
    REQUIRE_FALSE(r);
    CHECK(r.error().code() == ErrorCode::not_found);
  }
  SUBCASE("no interpreter") {
    write_file(scratch / "lib/python3.11/os.py", "");
    auto r = envd::agent::base_interpreter_paths(scratch.path(), false, diagnostics);
    REQUIRE_FALSE(r);
    CHECK(r.error().code() == ErrorCode::not_found);
    CHECK(r.error().message().find((scratch / "bin").string()) != std::string::npos);
  }
  SUBCASE("no standard library") {
    write_file(scratch / "bin/python3.11", "");
    auto r = envd::agent::base_interpreter_paths(scratch.path(), false, diagnostics);
    REQUIRE_FALSE(r);
    CHECK(r.error().code() == ErrorCode::not_found);
    CHECK(r.error().message().find("lib/python3.11") != std::string::npos);
  }
}

TEST_CASE("base_interpreter_paths picks the newest python3.X of an altinstall prefix") {
  ScratchDir scratch;
  write_file(scratch / "bin/python3.9", "");
  write_file(scratch / "bin/python3.11", "");  // 3.11 > 3.9 although "3.11" < "3.9" as text
  write_file(scratch / "bin/python3.11-config", "");
  write_file(scratch / "lib/python3.9/os.py", "");
  write_file(scratch / "lib/python3.11/os.py", "");
  Diagnostics diagnostics;
  auto r = envd::agent::base_interpreter_paths(scratch.path(), false, diagnostics);
  REQUIRE(r);
  CHECK(*r == std::vector<std::string>{"bin/python3.11", "lib/python3.11/os.py"});
  // The empty "interpreter" is no ELF file: said once, naming it.
  auto warnings = diagnostics.list();
  REQUIRE(warnings.size() == 1);
  CHECK(warnings[0].path == fs::canonical(scratch / "bin/python3.11").string());
}

TEST_CASE("read_elf_dynamic agrees with readelf on 64- and 32-bit files") {
  using envd::agent::read_elf_dynamic;
  auto readelf_needed = [](const fs::path& file) {
    auto r = run_command({"readelf", "-d", file.string()});
    REQUIRE(r.exit_code == 0);
    std::vector<std::string> out;
    std::istringstream lines(r.out);
    for (std::string line; std::getline(lines, line);) {
      if (line.find("(NEEDED)") == std::string::npos) continue;
      auto open = line.find('['), close = line.find(']');
      out.push_back(line.substr(open + 1, close - open - 1));
    }
    return out;
  };
  std::vector<fs::path> files{"/usr/bin/python3.11", k_pyenv / "bin/python3.11"};
  if (fs::exists("/usr/lib32/libanl.so.1")) files.push_back("/usr/lib32/libanl.so.1");
  for (const auto& file : files) {
    INFO(file);
    auto elf = read_elf_dynamic(file);
    REQUIRE(elf);
    CHECK(elf->needed == readelf_needed(file));
    CHECK_FALSE(elf->needed.empty());
  }
  auto pyenv = read_elf_dynamic(k_pyenv / "bin/python3.11");
  REQUIRE(pyenv);
  CHECK(pyenv->search_path == std::vector<std::string>{(k_pyenv / "lib").string()});
  CHECK(pyenv->elf_class == envd::agent::ElfClass::elf64);
  if (fs::exists("/usr/lib32/libanl.so.1")) {
    auto lib32 = read_elf_dynamic("/usr/lib32/libanl.so.1");
    REQUIRE(lib32);
    CHECK(lib32->elf_class == envd::agent::ElfClass::elf32);
  }
}

TEST_CASE("read_elf_dynamic rejects non-ELF and truncated files, naming them") {
  ScratchDir scratch;
  const std::string real = envd::test::read_file("/usr/bin/python3.11");
  write_file(scratch / "script", "#!/bin/sh\necho hi\n");
  write_file(scratch / "truncated", real.substr(0, 100));
  write_file(scratch / "cut-dynamic", real.substr(0, 4096));
  for (const char* name : {"script", "truncated", "cut-dynamic"}) {
    INFO(name);
    auto r = envd::agent::read_elf_dynamic(scratch / name);
    REQUIRE_FALSE(r);
    CHECK(r.error().code() == ErrorCode::invalid_argument);
    CHECK(r.error().message().starts_with((scratch / name).string() + ": "));
  }
  auto missing = envd::agent::read_elf_dynamic(scratch / "missing");
  REQUIRE_FALSE(missing);
  CHECK(missing.error().code() == ErrorCode::not_found);
}

TEST_CASE("is_platform_library keeps glibc out and everything else in") {
  using envd::agent::is_platform_library;
  for (const char* name : {"libc.so.6", "libm.so.6", "libpthread.so.0", "libdl.so.2", "librt.so.1",
                           "ld-linux-x86-64.so.2", "libutil.so.1", "libresolv.so.2", "libanl.so.1",
                           "libnsl.so.1", "libnss_files.so.2", "libmvec.so.1"})
    CHECK_MESSAGE(is_platform_library(name), name);
  for (const char* name : {"libcrypt.so.1", "libnsl.so.2", "libcrypto.so.3", "libz.so.1",
                           "libmagic.so.1", "libpython3.11.so.1.0", "libreadline.so.8"})
    CHECK_MESSAGE(!is_platform_library(name), name);
}
