// Vouches for files on this machine by their stat: a file whose stat is the one the stat cache
// recorded with its digest still has that content, as far as stat can tell (the trust a warm
// snapshot already places in the cache). Lets the embedded builder skip hashing such files again.
#pragma once

#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "agent/stat_cache.hpp"
#include "envd/oci/digest.hpp"
#include "envd/util/error.hpp"

namespace envd::agent {

class StatVouch {
 public:
  // Loads what the stat cache under `state_dir` (SnapshotOptions::state_dir) holds for `roots`
  // (absolute, as the snapshot names its prefixes and source roots). Errors: io.
  static Result<std::unique_ptr<StatVouch>> load(const std::filesystem::path& state_dir,
                                                 const std::vector<std::string>& roots);

  // True when absolute `path` lies under one of the roots and the cache recorded exactly `key`
  // with `digest` for it. Thread-safe (the loaded entries are immutable).
  bool vouches(std::string_view path, const StatKey& key, const oci::Digest& digest) const;

 private:
  std::unique_ptr<StatCache> m_cache;
  std::vector<std::pair<std::string, const StatCacheRoot*>> m_roots;  // longest root first
};

}  // namespace envd::agent
