// StatVouch: the stat cache's entries for the snapshot's roots, looked up by absolute path.
#include "agent/stat_vouch.hpp"

#include <algorithm>

namespace envd::agent {

Result<std::unique_ptr<StatVouch>> StatVouch::load(const std::filesystem::path& state_dir,
                                                   const std::vector<std::string>& roots) {
  auto vouch = std::unique_ptr<StatVouch>(new StatVouch());
  ENVD_TRY(vouch->m_cache, StatCache::open(stat_cache_path(state_dir)));
  for (const auto& root : roots) {
    ENVD_TRY(const StatCacheRoot* entries, vouch->m_cache->root(root));
    vouch->m_roots.emplace_back(root, entries);
  }
  // Nested roots (a source tree inside a prefix): the innermost one names the file.
  std::stable_sort(vouch->m_roots.begin(), vouch->m_roots.end(),
                   [](const auto& a, const auto& b) { return a.first.size() > b.first.size(); });
  return vouch;
}

bool StatVouch::vouches(std::string_view path, const StatKey& key,
                        const oci::Digest& digest) const {
  for (const auto& [root, entries] : m_roots) {
    std::string_view base = root == "/" ? std::string_view() : std::string_view(root);
    if (path.size() <= base.size() + 1 || !path.starts_with(base) || path[base.size()] != '/')
      continue;
    auto found = entries->find(path.substr(base.size() + 1));
    return found && found->key == key && found->digest == digest;
  }
  return false;
}

}  // namespace envd::agent
