// Test support: small Python prefixes laid out as pip does, and reading a command's --json line.
#pragma once

#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>

#include "support/scratch_dir.hpp"

namespace envd::test {

// Writes `count` pip packages STEM0..STEM<count-1>, version 1.0, into
// prefix/lib/python3.11/site-packages: the module's __init__.py ("X = i"), METADATA and a RECORD
// naming the three files.
inline void write_pip_packages(const std::filesystem::path& prefix, const std::string& stem,
                               int count) {
  const std::string site = "lib/python3.11/site-packages/";
  for (int i = 0; i < count; ++i) {
    const std::string name = stem + std::to_string(i);
    write_file(prefix / (site + name + "/__init__.py"), "X = " + std::to_string(i) + "\n");
    write_file(prefix / (site + name + "-1.0.dist-info/METADATA"),
               "Name: " + name + "\nVersion: 1.0\n\n");
    write_file(prefix / (site + name + "-1.0.dist-info/RECORD"),
               name + "/__init__.py,,\n" + name + "-1.0.dist-info/METADATA,,\n" + name +
                   "-1.0.dist-info/RECORD,,\n");
  }
}

// The JSON object on the last non-empty line of `out` (what --json prints).
inline nlohmann::json last_json_line(const std::string& out) {
  auto body = out.substr(0, out.find_last_not_of('\n') + 1);
  return nlohmann::json::parse(body.substr(body.rfind('\n') + 1));
}

}  // namespace envd::test
