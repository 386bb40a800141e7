// Reads the pip-installed distributions of one site-packages directory: *.dist-info (METADATA,
// RECORD, INSTALLER, REQUESTED, direct_url.json), *.egg-info, and editable installs (legacy
// .egg-link, PEP 660 .pth and finder modules, direct_url.json dir_info.editable).
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include "agent/diagnostics.hpp"
#include "agent/package_record.hpp"
#include "envd/util/error.hpp"

namespace envd::agent {

// Reads every distribution in PREFIX/site_packages (`site_packages` is prefix-relative, e.g.
// "lib/python3.11/site-packages"), sorted by lowercase name. meta.name is the metadata's Name as
// written; meta.manager is pip; installer is INSTALLER's content ("" when absent).
// `paths` are prefix-relative and normalised: RECORD / installed-files.txt entries (relative, e.g.
// "../../../bin/x", or absolute inside the prefix) plus every file of the dist-info / egg-info
// itself; entries leaving the prefix are dropped with a warning. `expected` holds RECORD's sha256
// values. Files that RECORD names but that are missing are not checked here.
// meta.editable_root is the absolute project directory of an editable install (direct_url.json
// dir_info.editable, else the package's PEP 660 .pth / setuptools finder, else a legacy
// .egg-link), and is set only when that directory exists here and is no build-farm path such as
// file:///home/conda/feedstock_root/... . URL credentials are redacted.
// Broken metadata (unreadable, not UTF-8, bad RECORD rows) is a warning naming the file, never a
// failure. Reads only; writes nothing. Thread-safe (diagnostics is). Reads the metadata
// directories on up to 4 threads; records and warnings come in the same order as read one by one.
// Errors: invalid_argument when `site_packages` is not a relative path inside the prefix;
// not_found, permission_denied or io when site-packages cannot be listed.
Result<std::vector<PackageRecord>> read_site_packages(const std::filesystem::path& prefix,
                                                      const std::string& site_packages,
                                                      Diagnostics& diagnostics);

// Masks the userinfo of every URL in `text`: "https://user:token@host/x" -> "https://***@host/x",
// "git+https://tok@h/r" -> "git+https://***@h/r". Other text is unchanged. Pure.
std::string redact_url_credentials(const std::string& text);

}  // namespace envd::agent
