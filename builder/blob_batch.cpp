// Streamed blob batch parsing (see blob_batch.hpp). Bytes go straight from the request into a
// BlobWriter; nothing is buffered beyond one header line. Verified blobs wait in a commit group
// until it is full or the body ends.
#include "builder/blob_batch.hpp"

#include <algorithm>
#include <charconv>
#include <utility>

namespace envd::builder {
namespace {

// "sha256:" + 64 hex + " " + at most 20 digits: anything longer is not a header.
constexpr std::size_t k_max_header = 7 + 64 + 1 + 20;

}  // namespace

bool BlobBatchReader::fail(ErrorCode code, std::string message) {
  return stop(BatchFailure{
      m_digest, Error(code, "record " + std::to_string(m_record) + ": " + std::move(message))});
}

bool BlobBatchReader::fail_over_limit(std::string message) {
  return stop(BatchFailure{m_digest,
                           Error(ErrorCode::invalid_argument,
                                 "record " + std::to_string(m_record) + ": " + std::move(message)),
                           /*over_limit=*/true});
}

bool BlobBatchReader::stop(BatchFailure failure) {
  m_writer.reset();  // discards the partial blob
  // Every blob verified before the bad record stays (schemas/envd-api/batch-response.schema.json).
  // If committing them fails, that error is the one reported.
  if (commit_pending()) m_failure = std::move(failure);
  return false;
}

bool BlobBatchReader::commit_pending() {
  if (!m_group) return true;
  auto r = m_group->commit();
  auto committed = std::exchange(m_pending, {});
  m_pending_bytes = 0;
  if (!r) {
    m_failure = BatchFailure{std::nullopt, r.error()};
    return false;
  }
  m_stored.insert(m_stored.end(), committed.begin(), committed.end());
  return true;
}

// Parses m_header ("sha256:<hex> <size>", without the newline) and opens the blob writer.
bool BlobBatchReader::start_record() {
  std::string_view h = m_header;
  auto space = h.find(' ');
  if (space == std::string_view::npos)
    return fail(ErrorCode::invalid_argument, "header \"" + m_header + "\" is not \"DIGEST SIZE\"");
  auto digest = oci::Digest::parse(h.substr(0, space));
  if (!digest) return fail(ErrorCode::invalid_argument, digest.error().message());
  m_digest = *digest;
  std::string_view size_text = h.substr(space + 1);
  std::uint64_t size = 0;
  auto [end, ec] = std::from_chars(size_text.data(), size_text.data() + size_text.size(), size);
  if (size_text.empty() || ec != std::errc() || end != size_text.data() + size_text.size())
    return fail(ErrorCode::invalid_argument,
                "size \"" + std::string(size_text) + "\" is not a non-negative integer");
  if (size > m_blob_limit)
    return fail_over_limit("blob of " + std::to_string(size) + " bytes exceeds the limit of " +
                           std::to_string(m_blob_limit) + " bytes");
  auto writer = m_blobs.begin_write();
  if (!writer) return fail(writer.error().code(), writer.error().message());
  m_writer = std::move(*writer);
  m_size = size;
  m_remaining = size;
  m_header.clear();
  return m_remaining > 0 || finish_record();
}

bool BlobBatchReader::finish_record() {
  if (!m_group) m_group = m_blobs.begin_group();
  auto r = m_group->add(std::move(m_writer), *m_digest, m_size);
  if (!r) return fail(r.error().code(), r.error().message());
  m_pending.push_back(*m_digest);
  m_pending_bytes += m_size;
  m_digest.reset();
  if (m_pending.size() >= m_grouping.blobs || m_pending_bytes >= m_grouping.bytes)
    return commit_pending();
  return true;
}

bool BlobBatchReader::feed(std::string_view data) {
  if (m_failure) return false;
  m_received += data.size();
  if (m_received > m_batch_limit)
    return fail_over_limit("batch exceeds the limit of " + std::to_string(m_batch_limit) +
                           " bytes");
  while (!data.empty()) {
    if (m_writer) {
      auto n = static_cast<std::size_t>(std::min<std::uint64_t>(m_remaining, data.size()));
      if (auto r = m_writer->write(data.substr(0, n)); !r)
        return fail(r.error().code(), r.error().message());
      data.remove_prefix(n);
      m_remaining -= n;
      if (m_remaining == 0 && !finish_record()) return false;
      continue;
    }
    if (m_header.empty()) ++m_record, m_digest.reset();
    auto newline = data.find('\n');
    auto take = std::min(newline, data.size());
    if (m_header.size() + take > k_max_header)
      return fail(ErrorCode::invalid_argument, "header longer than " +
                                                   std::to_string(k_max_header) +
                                                   " bytes (expected \"sha256:<hex> <size>\\n\")");
    m_header.append(data.substr(0, take));
    if (newline == std::string_view::npos) return true;
    data.remove_prefix(take + 1);
    if (!start_record()) return false;
  }
  return true;
}

void BlobBatchReader::finish() {
  if (m_failure) return;
  if (m_writer) {
    fail(ErrorCode::invalid_argument, "body ended after " + std::to_string(m_size - m_remaining) +
                                          " of " + std::to_string(m_size) + " bytes");
  } else if (!m_header.empty()) {
    fail(ErrorCode::invalid_argument, "body ended inside the header \"" + m_header + "\"");
  } else {
    commit_pending();
  }
}

void BlobBatchReader::interrupted() {
  if (m_failure) return;
  fail(ErrorCode::invalid_argument, "request body ended early (connection failed)");
}

}  // namespace envd::builder
