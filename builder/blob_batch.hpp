// The envd API's streamed blob batch: a body of records "sha256:<hex> <size>\n" each followed by
// exactly <size> bytes, every blob verified against its digest as it arrives and committed in
// groups (store::BlobCommitGroup), so that durability is paid once per group, not per blob.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "envd/oci/digest.hpp"
#include "envd/store/blob_store.hpp"
#include "envd/util/error.hpp"

namespace envd::builder {

// Why a batch stopped: the record's digest when its header was read, and the error
// (invalid_argument: bad header, truncated record or a limit exceeded, then with over_limit set;
// digest_mismatch; io from the store).
struct BatchFailure {
  std::optional<oci::Digest> digest;
  Error error;
  bool over_limit = false;
};

// How many verified blobs a BlobBatchReader holds before it commits them: each pending blob holds
// an open file in an FsBlobStore, and bytes not yet durable.
struct BatchGrouping {
  std::size_t blobs = 256;
  std::uint64_t bytes = 32ULL << 20;
};

// Reads one batch body, fed in chunks of any size. The first bad record stops the batch; every
// blob verified before it is still committed (by feed() when it fails, else by finish() or
// interrupted()), and only committed blobs, durable and visible, are listed by stored(). Not
// thread-safe (one per request). Destroying the reader before finish() or interrupted()
// discards the verified blobs not yet committed.
class BlobBatchReader {
 public:
  // `blob_limit`: bytes of one blob; `batch_limit`: bytes of the whole body, headers included.
  BlobBatchReader(store::BlobStore& blobs, std::uint64_t blob_limit, std::uint64_t batch_limit,
                  BatchGrouping grouping = {})
      : m_blobs(blobs),
        m_blob_limit(blob_limit),
        m_batch_limit(batch_limit),
        m_grouping(grouping) {}

  // Consumes the next chunk. Returns false once the batch failed (feed no more).
  bool feed(std::string_view data);
  // The body ended: a record cut short fails the batch. Commits what is pending.
  void finish();
  // The body could not be read to its end (the connection failed): fails the batch unless a
  // record already did. Commits what is pending.
  void interrupted();

  // Digests committed, in body order (a digest sent twice appears twice); complete after
  // finish() or interrupted().
  const std::vector<oci::Digest>& stored() const { return m_stored; }
  const std::optional<BatchFailure>& failure() const { return m_failure; }

 private:
  bool fail(ErrorCode code, std::string message);
  bool fail_over_limit(std::string message);
  // Commits what is pending, then records `failure` (or the commit's error). Returns false.
  bool stop(BatchFailure failure);
  bool start_record();
  bool finish_record();
  // Commits the pending group; on failure records its error as the batch's failure.
  bool commit_pending();

  store::BlobStore& m_blobs;
  std::uint64_t m_blob_limit;
  std::uint64_t m_batch_limit;
  BatchGrouping m_grouping;
  std::uint64_t m_received = 0;  // body bytes so far
  std::size_t m_record = 0;      // records started so far (1-based index of the current one)
  std::string m_header;          // the current header line, while it is read
  std::optional<oci::Digest> m_digest;
  std::uint64_t m_size = 0;
  std::uint64_t m_remaining = 0;
  std::unique_ptr<store::BlobWriter> m_writer;      // set while a blob's bytes are read
  std::unique_ptr<store::BlobCommitGroup> m_group;  // made on the first record
  std::vector<oci::Digest> m_pending;               // verified, in m_group, not yet committed
  std::uint64_t m_pending_bytes = 0;
  std::vector<oci::Digest> m_stored;
  std::optional<BatchFailure> m_failure;
};

}  // namespace envd::builder
