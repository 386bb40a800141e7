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

// `site_packages` is prefix-relative ("lib/python3.11/site-packages"). RECORD paths (relative to
// site-packages, possibly "../../../bin/x") are mapped to prefix-relative, normalised paths;
// paths leaving the prefix are dropped with a warning. An editable install sets
// meta.editable_root to the project's absolute source directory (never a build-farm path such as
// file:///home/conda/feedstock_root/...). Credentials in URLs are redacted. Broken metadata is a
// warning naming the file, not a failure. Errors: io when site-packages cannot be listed.
Result<std::vector<PackageRecord>> read_site_packages(const std::filesystem::path& prefix,
                                                      const std::string& site_packages,
                                                      Diagnostics& diagnostics);

// "https://user:token@host/x" -> "https://***@host/x"; other text unchanged.
std::string redact_url_credentials(const std::string& text);

}  // namespace envd::agent
