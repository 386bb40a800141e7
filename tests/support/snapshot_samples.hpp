// Test support: snapshot model entries made from content, for tests of the snapshot library.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "envd/oci/digest.hpp"
#include "envd/snapshot/snapshot.hpp"

namespace envd::test {

// A regular file holding `content`.
inline snapshot::FileEntry regular(std::string path, std::string_view content,
                                   std::uint32_t mode = 0644) {
  snapshot::FileEntry f;
  f.path = std::move(path);
  f.digest = oci::sha256_of(content);
  f.size = content.size();
  f.mode = mode;
  return f;
}

// A symlink to `target`, mode 0777 as Linux reports it.
inline snapshot::FileEntry symlink(std::string path, std::string target) {
  snapshot::FileEntry f;
  f.path = std::move(path);
  f.type = snapshot::FileType::symlink;
  f.mode = 0777;
  f.target = std::move(target);
  return f;
}

// A pip package (installer "pip") owning `files`.
inline snapshot::Package pip(std::string name, std::string version,
                             std::vector<snapshot::FileEntry> files = {}) {
  snapshot::Package p;
  p.name = std::move(name);
  p.version = std::move(version);
  p.installer = "pip";
  p.files = std::move(files);
  return p;
}

}  // namespace envd::test
