// Tests for the pip site-packages reader: real dist-info/egg-info fixtures, editable installs of
// every kind, broken metadata, URL redaction, and parity with `pip list` on a real prefix.
#include "agent/pip_metadata.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <filesystem>
#include <map>
#include <string>

#include "envd/util/json_detail.hpp"
#include "support/run_command.hpp"
#include "support/scratch_dir.hpp"

namespace fs = std::filesystem;
using envd::agent::Diagnostics;
using envd::agent::PackageRecord;
using envd::agent::read_site_packages;
using envd::agent::redact_url_credentials;
using envd::test::read_file;
using envd::test::ScratchDir;
using envd::test::tree_listing;
using envd::test::write_file;

namespace {

const std::string k_site = "lib/python3.11/site-packages";

fs::path pip_fixtures() {
  return envd::test::fixtures_dir() / "pip";
}

void copy_tree(const fs::path& from, const fs::path& to) {
  fs::create_directories(to);
  fs::copy(from, to, fs::copy_options::recursive | fs::copy_options::overwrite_existing);
}

// Scans prefix/site and checks the scan left the tree exactly as it was.
std::vector<PackageRecord> scan(const fs::path& prefix, Diagnostics& diag,
                                const std::string& site = k_site) {
  auto before = tree_listing(prefix);
  auto result = read_site_packages(prefix, site, diag);
  REQUIRE(result.has_value());
  CHECK(tree_listing(prefix) == before);
  return *result;
}

const PackageRecord& find(const std::vector<PackageRecord>& records, const std::string& name) {
  auto it = std::find_if(records.begin(), records.end(),
                         [&](const PackageRecord& r) { return r.meta.name == name; });
  REQUIRE_MESSAGE(it != records.end(), "no package " << name);
  return *it;
}

bool has_path(const PackageRecord& r, const std::string& path) {
  return std::binary_search(r.paths.begin(), r.paths.end(), path);
}

bool warned_about(const Diagnostics& diag, const std::string& path) {
  for (const auto& d : diag.list())
    if (d.path == path) return true;
  return false;
}

template <std::size_t N>
std::string bytes(const char (&literal)[N]) {
  return std::string(literal, N - 1);
}

std::string pep503(std::string name) {
  std::string out;
  for (char c : name) {
    c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    if (c == '-' || c == '_' || c == '.') {
      if (out.empty() || out.back() != '-') out += '-';
    } else {
      out += c;
    }
  }
  return out;
}

}  // namespace

TEST_CASE("redact_url_credentials masks userinfo and leaves other text alone") {
  CHECK(redact_url_credentials("https://user:token@host/x") == "https://***@host/x");
  CHECK(redact_url_credentials("git+https://ghp_abc@github.com/o/r.git@v1") ==
        "git+https://***@github.com/o/r.git@v1");
  CHECK(redact_url_credentials("https://host:8443/a@b?c=d@e") == "https://host:8443/a@b?c=d@e");
  CHECK(redact_url_credentials("file:///home/user/project") == "file:///home/user/project");
  CHECK(redact_url_credentials("see https://a:b@x/ and http://c@y") ==
        "see https://***@x/ and http://***@y");
  CHECK(redact_url_credentials("no url here") == "no url here");
  CHECK(redact_url_credentials("https://***@host/") == "https://***@host/");
}

TEST_CASE("a real pip 18 dist-info: RECORD hashes, ../../../bin paths, INSTALLER, own files") {
  ScratchDir scratch;
  auto prefix = scratch / "prefix";
  copy_tree(pip_fixtures() / "dist-info/chardet-3.0.4.dist-info",
            prefix / k_site / "chardet-3.0.4.dist-info");
  Diagnostics diag;
  auto records = scan(prefix, diag);
  REQUIRE(records.size() == 1);
  const auto& r = records[0];
  CHECK(r.meta.name == "chardet");
  CHECK(r.meta.version == "3.0.4");
  CHECK(r.meta.manager == envd::snapshot::PackageManager::pip);
  CHECK(r.meta.installer == "pip");
  CHECK_FALSE(r.meta.requested);
  CHECK_FALSE(r.meta.editable_root.has_value());
  CHECK(r.record_path == k_site + "/chardet-3.0.4.dist-info");
  CHECK(has_path(r, "bin/chardetect"));
  CHECK(has_path(r, k_site + "/chardet/cli/__pycache__/chardetect.cpython-36.pyc"));
  // Every file of the dist-info directory, whether RECORD lists it (RECORD) or not (none here).
  for (const char* f : {"INSTALLER", "METADATA", "RECORD", "WHEEL", "entry_points.txt"})
    CHECK(has_path(r, k_site + "/chardet-3.0.4.dist-info/" + f));
  CHECK(std::is_sorted(r.paths.begin(), r.paths.end()));
  CHECK(r.paths.size() == 19);  // RECORD's 19 rows; it names every file of the dist-info
  // The RECORD hash of METADATA is the real sha256 of the verbatim fixture file.
  CHECK(r.expected.at(k_site + "/chardet-3.0.4.dist-info/METADATA") ==
        envd::oci::sha256_file(prefix / k_site / "chardet-3.0.4.dist-info/METADATA")->digest);
  CHECK(r.expected.at(k_site + "/chardet/__init__.py").str() ==
        "sha256:62c3f9c1096c1c9d9ab85d516497f2a624ab080eff6d08919b7112fcd23bebe6");
  CHECK(r.expected.count(k_site + "/chardet-3.0.4.dist-info/RECORD") == 0);
  CHECK(diag.size() == 0);
}

TEST_CASE("RECORD: quoted paths with commas, absolute paths, paths leaving the prefix") {
  ScratchDir scratch;
  auto prefix = scratch / "prefix";
  auto info = prefix / k_site / "odd-1.0.dist-info";
  write_file(info / "METADATA",
             "Metadata-Version: 2.1\r\nName: Odd.Name\r\nVersion: 1.0\r\n\r\n"
             "Name: not-this\n");
  const std::string hash = "sha256=YsP5wQlsHJ2auF1RZJfypiSrCA7_bQiRm3ES_NI76-Y";
  write_file(info / "RECORD", "\"odd/a,b.py\"," + hash +
                                  ",1\n"
                                  "\"odd/say \"\"hi\"\".txt\",,\n"
                                  "../../../bin/odd-cli,,\n"
                                  "./odd/../odd/./c.py,,\n" +
                                  (prefix / "share/odd/data.txt").string() + ",,\n" +
                                  "/etc/passwd,,\n"
                                  "../../../../outside.txt,,\n"
                                  "\n"
                                  "odd-1.0.dist-info/RECORD,,\n");
  Diagnostics diag;
  auto records = scan(prefix, diag);
  REQUIRE(records.size() == 1);
  const auto& r = records[0];
  CHECK(r.meta.name == "Odd.Name");
  CHECK(r.meta.version == "1.0");
  CHECK(r.meta.installer == "");
  std::vector<std::string> want = {
      "bin/odd-cli",
      k_site + "/odd-1.0.dist-info/METADATA",
      k_site + "/odd-1.0.dist-info/RECORD",
      k_site + "/odd/a,b.py",
      k_site + "/odd/c.py",
      k_site + "/odd/say \"hi\".txt",
      "share/odd/data.txt",
  };
  std::sort(want.begin(), want.end());
  CHECK(r.paths == want);
  REQUIRE(r.expected.size() == 1);
  CHECK(r.expected.count(k_site + "/odd/a,b.py") == 1);
  // The two entries outside the prefix, each warned about, naming RECORD.
  CHECK(diag.size() == 2);
  for (const auto& d : diag.list()) CHECK(d.path == (info / "RECORD").string());
}

TEST_CASE("pip 25 dist-info without INSTALLER/REQUESTED files, and legacy egg-info") {
  ScratchDir scratch;
  auto prefix = scratch / "prefix";
  const std::string site27 = "lib/python2.7/site-packages";
  copy_tree(pip_fixtures() / "dist-info/imagesize-1.4.1.dist-info",
            prefix / site27 / "imagesize-1.4.1.dist-info");
  copy_tree(pip_fixtures() / "dist-info/legacy-egg-info", prefix / site27);
  Diagnostics diag;
  auto records = scan(prefix, diag, site27);
  REQUIRE(records.size() == 3);
  CHECK(records[0].meta.name == "Babel");  // sorted by lowercase name
  CHECK(records[1].meta.name == "certifi");
  CHECK(records[2].meta.name == "imagesize");

  const auto& img = records[2];
  CHECK(img.meta.version == "1.4.1");
  CHECK(img.meta.installer == "");  // RECORD lists INSTALLER, but the file is not there
  CHECK_FALSE(img.meta.requested);
  CHECK(has_path(img, site27 + "/imagesize-1.4.1.dist-info/REQUESTED"));  // RECORD row kept
  CHECK(has_path(img, site27 + "/__pycache__/imagesize.cpython-313.pyc"));

  const auto& babel = records[0];
  CHECK(babel.meta.version == "2.6.0");
  CHECK(babel.record_path == site27 + "/Babel-2.6.0-py2.7.egg-info");
  CHECK(has_path(babel, site27 + "/babel/lists.py"));  // "../babel/lists.py" from the egg-info
  CHECK(has_path(babel, "bin/pybabel"));               // "../../../../bin/pybabel"
  CHECK(has_path(babel, site27 + "/Babel-2.6.0-py2.7.egg-info/PKG-INFO"));
  CHECK(has_path(babel, site27 + "/Babel-2.6.0-py2.7.egg-info/not-zip-safe"));
  CHECK(babel.expected.empty());

  const auto& certifi = records[1];
  CHECK(certifi.meta.version == "2018.08.24");
  CHECK(certifi.paths == std::vector<std::string>{site27 + "/certifi-2018.08.24-py2.7.egg-info"});
  CHECK(diag.size() == 0);
}

TEST_CASE("editable via direct_url.json: local dir, percent-decoded; missing dir is not local") {
  ScratchDir scratch;
  auto prefix = scratch / "prefix";
  auto site = prefix / k_site;
  copy_tree(pip_fixtures() / "site-packages-editable/pep660-hatchling-uv/site-packages", site);
  auto du = site / "mypkg-0.1.0.dist-info/direct_url.json";

  SUBCASE("fixture as shipped: /home/user/mypkg does not exist here") {
    Diagnostics diag;
    auto records = scan(prefix, diag);
    REQUIRE(records.size() == 1);
    CHECK(records[0].meta.direct_url == "file:///home/user/mypkg");
    CHECK(records[0].meta.installer == "uv");
    CHECK(records[0].meta.requested);
    CHECK_FALSE(records[0].meta.editable_root.has_value());
    CHECK(warned_about(diag, du.string()));
  }
  SUBCASE("url names an existing project directory") {
    auto project = scratch / "work/my proj";
    write_file(project / "pyproject.toml", "[project]\nname = \"mypkg\"\n");
    write_file(du, "{\"url\":\"file://" + (scratch / "work/my%20proj").string() +
                       "\",\"dir_info\":{\"editable\":true}}");
    Diagnostics diag;
    auto records = scan(prefix, diag);
    REQUIRE(records.size() == 1);
    CHECK(records[0].meta.editable_root == project.string());
    CHECK(diag.size() == 0);
  }
}

TEST_CASE("build-farm direct_url.json is not local source") {
  ScratchDir scratch;
  auto prefix = scratch / "prefix";
  auto info = prefix / k_site / "tool-2.0.dist-info";
  write_file(info / "METADATA", "Name: tool\nVersion: 2.0\n");
  write_file(info / "RECORD", "tool-2.0.dist-info/METADATA,,\n");

  SUBCASE("conda-forge: pip install . inside the feedstock") {
    write_file(info / "direct_url.json",
               R"({"dir_info": {}, "url": "file:///home/conda/feedstock_root/build_artifacts/)"
               R"(tool_1700000000/work"})");
    Diagnostics diag;
    auto r = scan(prefix, diag).at(0);
    CHECK(r.meta.direct_url ==
          "file:///home/conda/feedstock_root/build_artifacts/tool_1700000000/work");
    CHECK_FALSE(r.meta.editable_root.has_value());
    CHECK(diag.size() == 0);
  }
  SUBCASE("editable flag set, but the directory is pip's temporary build dir") {
    write_file(info / "direct_url.json",
               R"({"dir_info": {"editable": true}, "url": "file:///tmp/pip-req-build-x1y2z3"})");
    Diagnostics diag;
    auto r = scan(prefix, diag).at(0);
    CHECK_FALSE(r.meta.editable_root.has_value());
    CHECK(warned_about(diag, (info / "direct_url.json").string()));
  }
  SUBCASE("credentials in a VCS url are redacted") {
    write_file(info / "direct_url.json",
               R"({"url": "https://user:s3cret@git.example.com/tool.git",)"
               R"( "vcs_info": {"vcs": "git", "commit_id": "abc"}})");
    Diagnostics diag;
    auto r = scan(prefix, diag).at(0);
    CHECK(r.meta.direct_url == "https://***@git.example.com/tool.git");
    CHECK_FALSE(r.meta.editable_root.has_value());
  }
}

TEST_CASE("editable via legacy .egg-link (setup.py develop)") {
  ScratchDir scratch;
  auto prefix = scratch / "prefix";
  auto fixture = pip_fixtures() / "site-packages-editable/legacy-setup-py-develop";
  copy_tree(fixture / "site-packages", prefix / k_site);
  auto project = scratch / "mypkg";
  copy_tree(fixture / "project-tree", project);
  write_file(project / "setup.py", "from setuptools import setup\nsetup()\n");
  write_file(prefix / k_site / "mypkg.egg-link", project.string() + "\n.");
  Diagnostics diag;
  auto records = scan(prefix, diag);
  REQUIRE(records.size() == 1);
  const auto& r = records[0];
  CHECK(r.meta.name == "mypkg");
  CHECK(r.meta.version == "0.1.0");  // from the project's mypkg.egg-info/PKG-INFO
  CHECK(r.meta.editable_root == project.string());
  CHECK(r.paths == std::vector<std::string>{k_site + "/mypkg.egg-link"});
  CHECK(diag.size() == 0);

  SUBCASE("egg-link naming a directory that does not exist here") {
    write_file(prefix / k_site / "mypkg.egg-link", "/home/user/mypkg\n.");
    Diagnostics diag2;
    auto again = scan(prefix, diag2);
    REQUIRE(again.size() == 1);
    CHECK(again[0].meta.name == "mypkg");
    CHECK_FALSE(again[0].meta.editable_root.has_value());
    CHECK(warned_about(diag2, (prefix / k_site / "mypkg.egg-link").string()));
  }
}

TEST_CASE("editable via PEP 660 .pth files when there is no direct_url.json") {
  ScratchDir scratch;
  auto prefix = scratch / "prefix";
  auto site = prefix / k_site;
  auto project = scratch / "proj";
  write_file(project / "pyproject.toml", "[project]\nname = \"mypkg\"\n");
  fs::create_directories(project / "mypkg");
  fs::create_directories(project / "src/mypkg");
  auto fixtures = pip_fixtures() / "site-packages-editable";

  SUBCASE("setuptools finder module (flat layout)") {
    copy_tree(fixtures / "pep660-setuptools-finder/site-packages", site);
    // The finder's shape as setuptools/command/editable_wheel.py _FINDER_TEMPLATE writes it.
    write_file(site / "__editable___mypkg_0_1_0_finder.py",
               "import sys\nfrom pathlib import Path\n\nMAPPING = {'mypkg': '" +
                   (project / "mypkg").string() +
                   "'}\nNAMESPACES = {}\nPATH_PLACEHOLDER = '__editable__.mypkg-0.1.0.finder' + "
                   "\".__path_hook__\"\n");
  }
  SUBCASE("setuptools finder module, annotated MAPPING of newer setuptools") {
    copy_tree(fixtures / "pep660-setuptools-finder/site-packages", site);
    write_file(site / "__editable___mypkg_0_1_0_finder.py",
               "import sys\nMAPPING: dict[str, str] = {'mypkg': '" + (project / "mypkg").string() +
                   "'}\nNAMESPACES: dict[str, list[str]] = {}\n");
  }
  SUBCASE("setuptools static .pth (src layout)") {
    copy_tree(fixtures / "pep660-setuptools-static-pth/site-packages", site);
    write_file(site / "__editable__.mypkg-0.1.0.pth", (project / "src").string() + "\n");
  }
  SUBCASE("hatchling _NAME.pth") {
    copy_tree(fixtures / "pep660-hatchling-uv/site-packages", site);
    write_file(site / "_mypkg.pth", (project / "src").string());
  }
  fs::remove(site / "mypkg-0.1.0.dist-info/direct_url.json");
  Diagnostics diag;
  auto records = scan(prefix, diag);
  REQUIRE(records.size() == 1);
  CHECK(records[0].meta.name == "mypkg");
  CHECK(records[0].meta.direct_url == "");
  CHECK(records[0].meta.editable_root == project.string());
}

TEST_CASE("a .pth adding directories inside the prefix is not an editable install") {
  ScratchDir scratch;
  auto prefix = scratch / "prefix";
  auto site = prefix / k_site;
  fs::create_directories(prefix / "lib/extra");
  write_file(site / "plain-1.0.dist-info/METADATA", "Name: plain\nVersion: 1.0\n");
  write_file(site / "plain-1.0.dist-info/RECORD", "plain.pth,,\nplain-1.0.dist-info/RECORD,,\n");
  write_file(site / "plain.pth",
             (prefix / "lib/extra").string() + "\nrelative/dir\nimport os; os.environ.get('X')\n");
  Diagnostics diag;
  auto records = scan(prefix, diag);
  REQUIRE(records.size() == 1);
  CHECK_FALSE(records[0].meta.editable_root.has_value());
  CHECK(has_path(records[0], k_site + "/plain.pth"));
  CHECK(diag.size() == 0);
}

TEST_CASE("broken metadata is a warning naming the file; other packages are still read") {
  ScratchDir scratch;
  auto prefix = scratch / "prefix";
  auto site = prefix / k_site;
  copy_tree(pip_fixtures() / "dist-info/chardet-3.0.4.dist-info", site / "chardet-3.0.4.dist-info");
  write_file(site / "garbage_meta-1.2.dist-info/METADATA", bytes("\xff\xfe\0\x01zz\n"));
  write_file(site / "garbage_meta-1.2.dist-info/RECORD", "garbage_meta/x.py,,\n");
  write_file(site / "garbage_record-3.4.dist-info/METADATA",
             "Name: garbage-record\nVersion: 3.4\n");
  write_file(site / "garbage_record-3.4.dist-info/RECORD",
             bytes("\x89PNG\r\n\x1a\n\0\0\0\rIHDR\xff\xd8,,\n"));
  write_file(site / "no_meta-5.dist-info/RECORD", "\"no_meta/unterminated.py,,\n");
  write_file(site / "bad_hash-1.dist-info/METADATA", "Name: bad-hash\nVersion: 1\n");
  write_file(site / "bad_hash-1.dist-info/RECORD", "bad_hash.py,sha256=notbase64!,3\n");
  Diagnostics diag;
  auto records = scan(prefix, diag);
  REQUIRE(records.size() == 5);

  CHECK(find(records, "chardet").meta.version == "3.0.4");
  CHECK(find(records, "chardet").paths.size() == 19);

  const auto& gm = find(records, "garbage_meta");  // name and version from the directory name
  CHECK(gm.meta.version == "1.2");
  CHECK(has_path(gm, k_site + "/garbage_meta/x.py"));
  CHECK(warned_about(diag, (site / "garbage_meta-1.2.dist-info/METADATA").string()));

  const auto& gr = find(records, "garbage-record");
  CHECK(gr.paths == std::vector<std::string>{k_site + "/garbage_record-3.4.dist-info/METADATA",
                                             k_site + "/garbage_record-3.4.dist-info/RECORD"});
  CHECK(warned_about(diag, (site / "garbage_record-3.4.dist-info/RECORD").string()));

  const auto& nm = find(records, "no_meta");
  CHECK(nm.meta.version == "5");
  CHECK(warned_about(diag, (site / "no_meta-5.dist-info/METADATA").string()));
  CHECK(warned_about(diag, (site / "no_meta-5.dist-info/RECORD").string()));

  const auto& bh = find(records, "bad-hash");
  CHECK(has_path(bh, k_site + "/bad_hash.py"));
  CHECK(bh.expected.empty());
  CHECK(warned_about(diag, (site / "bad_hash-1.dist-info/RECORD").string()));
  CHECK(diag.size() == 5);
}

TEST_CASE("non-UTF-8 file names do not crash the scan") {
  ScratchDir scratch;
  auto prefix = scratch / "prefix";
  auto site = prefix / k_site;
  const std::string latin1 = "caf\xe9";
  write_file(site / (latin1 + "-1.0.dist-info") / "METADATA", "Name: cafe\nVersion: 1.0\n");
  write_file(site / (latin1 + "-1.0.dist-info") / "RECORD", latin1 + "/\xff.py,,\n");
  write_file(site / (latin1 + "-1.0.dist-info") / "\xfe\xff", "x");
  write_file(site / "\xff\xfe.egg-link", "/nonexistent\xff\n.");
  Diagnostics diag;
  auto records = scan(prefix, diag);
  const auto& r = find(records, "cafe");
  CHECK(r.meta.version == "1.0");
  CHECK(has_path(r, k_site + "/" + latin1 + "-1.0.dist-info/\xfe\xff"));
  // PEP 376 RECORD is UTF-8; this one is not, so it is ignored with a warning naming it.
  CHECK_FALSE(has_path(r, k_site + "/" + latin1 + "/\xff.py"));
  CHECK(warned_about(diag, (site / (latin1 + "-1.0.dist-info") / "RECORD").string()));
}

TEST_CASE("bad arguments and a missing site-packages are errors, not crashes") {
  ScratchDir scratch;
  Diagnostics diag;
  auto missing = read_site_packages(scratch.path(), k_site, diag);
  REQUIRE_FALSE(missing.has_value());
  CHECK(missing.error().code() == envd::ErrorCode::not_found);
  for (const char* bad : {"../elsewhere", "/usr/lib/python3/dist-packages", "", "."}) {
    auto r = read_site_packages(scratch.path(), bad, diag);
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error().code() == envd::ErrorCode::invalid_argument);
  }
  CHECK(fs::is_empty(scratch.path()));
}

TEST_CASE("a real prefix: the same names and versions as pip list, nothing written") {
  auto root = envd::test::run_command({"pyenv", "root"});
  fs::path prefix = (root.exit_code == 0 ? fs::path(root.out.substr(0, root.out.find('\n')))
                                         : fs::path("/root/.pyenv")) /
                    "versions/3.11.7";
  REQUIRE_MESSAGE(fs::exists(prefix / "bin/python"), "needs pyenv's Python 3.11.7: " << prefix);
  auto pip = envd::test::run_command({(prefix / "bin/python").string(), "-m", "pip", "list",
                                      "--format=json", "--disable-pip-version-check"},
                                     {{"PIP_NO_INPUT", "1"}, {"PYTHONDONTWRITEBYTECODE", "1"}});
  REQUIRE_MESSAGE(pip.exit_code == 0, pip.err);
  auto listed = envd::json::parse(pip.out, "pip list output");
  REQUIRE(listed.has_value());
  std::map<std::string, std::string> want;
  for (const auto& item : *listed)
    want[pep503(item.at("name").get<std::string>())] = item.at("version").get<std::string>();
  REQUIRE(want.size() > 50);

  Diagnostics diag;
  auto records = scan(prefix, diag, k_site);  // also proves the scan wrote nothing
  std::map<std::string, std::string> got;
  for (const auto& r : records) {
    CHECK_MESSAGE(got.count(pep503(r.meta.name)) == 0, "duplicate " << r.meta.name);
    got[pep503(r.meta.name)] = r.meta.version;
    CHECK_FALSE(r.paths.empty());
    CHECK(r.meta.manager == envd::snapshot::PackageManager::pip);
    CHECK_FALSE(r.meta.editable_root.has_value());  // this prefix has no editable installs
  }
  CHECK(got == want);
  const auto& pip_rec = find(records, "pip");
  CHECK(pip_rec.meta.installer == "pip");
  CHECK(has_path(pip_rec, "bin/pip3.11"));
  CHECK(std::is_sorted(records.begin(), records.end(), [](const auto& a, const auto& b) {
    auto lower = [](std::string s) {
      for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
      return s;
    };
    return lower(a.meta.name) < lower(b.meta.name);
  }));
}
