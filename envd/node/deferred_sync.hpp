// Committing pulled content without waiting for the disk.
//
// A pull renames its unpacked layers and its assembled environment into place without syncfs(2),
// which would wait until every byte is on the disk: on a slow or busy disk most of a cold pull.
// Crash safety comes instead from a record, written and fsynced before the first of those renames:
// DIR/unsynced/<boot id>-<random> lists the final directories the pull may create. While the
// machine stays up the page cache holds their data, so they are complete however the pull ended (a
// killed process loses nothing it had renamed). After a reboot, a record still present means no
// syncfs() ran after its renames: the data of the directories it lists may be lost, so
// recover_deferred_sync() removes them, and they are pulled again when wanted. A record becomes
// unnecessary once a syncfs() that started after its pull finished has returned:
// settle_deferred_sync() runs one and deletes the records it covered. The boot id is the kernel's
// (/proc/sys/kernel/random/boot_id); without one, callers commit durably instead (syncfs).
//
// Record format (text): "envd-unsynced 1\n", then one entry per line, "layers/<64 hex>" or
// "envs/<64 hex>", relative to DIR. The pull holds an exclusive flock() on its record while it
// runs, so another process never settles a record whose renames are still to come.
#pragma once

#include <chrono>
#include <filesystem>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "envd/util/error.hpp"
#include "envd/util/unique_fd.hpp"

namespace envd::node {

// This boot's id (a UUID), or "" when the kernel does not tell.
std::string current_boot_id();

// A pull's open record: flock()ed until destroyed or finish(); then settle may delete it. A
// default-constructed one stands for none (commits are durable).
class DeferredSyncRecord {
 public:
  DeferredSyncRecord() = default;
  explicit DeferredSyncRecord(UniqueFd fd) : m_fd(std::move(fd)) {}
  bool active() const { return m_fd.valid(); }
  // The pull's renames are done: the record waits for the next settle.
  void finish() { m_fd = UniqueFd(); }

 private:
  UniqueFd m_fd;
};

// Writes a record for `entries` (paths relative to `dir`, each "layers/<hex>" or "envs/<hex>") and
// makes it durable (fsync of the file and of DIR/unsynced) before returning. Errors:
// invalid_argument (an entry of another form), io naming the path.
Result<DeferredSyncRecord> begin_deferred_sync(const std::filesystem::path& dir,
                                               std::string_view boot_id,
                                               const std::vector<std::string>& entries);

// For every record of another boot: `remove` each entry it lists (absolute path; it may not exist),
// then delete the record. Records of this boot stay. Unreadable or malformed records are deleted
// after removing every valid entry they name. Returns the entries passed to `remove`. Errors: io,
// or the first error of `remove` (the record then stays, for the next open).
Result<std::vector<std::filesystem::path>> recover_deferred_sync(
    const std::filesystem::path& dir, std::string_view boot_id,
    const std::function<Result<void>(const std::filesystem::path&)>& remove);

// Settles this boot's records that no pull holds and that are at least `min_age` old: one syncfs()
// of the file system holding `dir`, then those records are deleted. Does nothing (no syncfs) when
// there is none. Returns how many were settled. Errors: io naming the path.
Result<std::size_t> settle_deferred_sync(const std::filesystem::path& dir, std::string_view boot_id,
                                         std::chrono::seconds min_age);

}  // namespace envd::node
