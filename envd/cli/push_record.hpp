// The record of each push, in $ENVD_HOME/pushed/<repository, '/' as '+'>/: push.json (builder,
// tag, digests), <snapshot hex>.json (the document, for `envd diff`), and for a remote builder
// <snapshot hex>.blobs (its file digests, sorted: what that builder held after the push, so that
// the next push asks only about new ones) and <snapshot hex>.items (its item index, so that the
// next push sends a patch against this snapshot instead of the whole document). A record is a
// cache: a lost or unreadable one costs time, never correctness.
#pragma once

#include <algorithm>
#include <filesystem>
#include <future>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "envd/cli/push_session.hpp"
#include "envd/snapshot/snapshot_patch.hpp"

namespace envd::cli {

std::filesystem::path record_dir(const std::filesystem::path& envd_home,
                                 const std::string& repository);

// The file digests the builder of the last push of a repository held after it: sorted lines
// "sha256:.." of the record's .blobs file. A wrong guess only costs a 409 at submission.
struct KnownBlobs {
  std::string text;
  std::vector<std::string_view> digests;

  bool contains(std::string_view digest) const {
    return std::binary_search(digests.begin(), digests.end(), digest);
  }
};

// What the last push of `repository` to `builder` left there; empty for another builder.
std::unique_ptr<KnownBlobs> known_blobs(const std::filesystem::path& envd_home,
                                        const std::string& repository, const std::string& builder);

// The item index of the last push of `repository` to `builder`: the base of the next patch.
std::optional<snapshot::ItemIndex> pushed_item_index(const std::filesystem::path& envd_home,
                                                     const std::string& repository,
                                                     const std::string& builder);

// Makes `out` the record's last push (push.json), then removes other snapshots' files.
Result<void> commit_record(const std::filesystem::path& dir, const PushOutcome& out);

// The record's snapshot files for `out`, written on a thread of their own while the image
// builds; the record points at them only after the build (commit_record). The destructor waits
// for the thread.
class RecordWriter {
 public:
  RecordWriter(std::filesystem::path dir, const PushOutcome& out, bool remote)
      : m_dir(std::move(dir)), m_out(out), m_remote(remote) {}

  // Starts writing: the document (serialised there when null), and for a remote builder the
  // blob list and the item index (made there when null). Once only: a second call does nothing.
  void start(std::shared_ptr<const std::string> document,
             std::shared_ptr<const snapshot::ItemIndex> index);
  // Waits for the files (writing them now if start() was not called).
  Result<void> finish();

 private:
  std::filesystem::path m_dir;
  const PushOutcome& m_out;  // its snapshot and digest do not change once pushing started
  bool m_remote;
  std::future<Result<void>> m_future;
};

}  // namespace envd::cli
