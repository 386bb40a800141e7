// Private to envd_node_fs: a layer's compressed bytes on their way to the tar reader. Sources of
// compressed chunks (a file, or a bounded queue fed by a download), and the decoder that turns
// them into the uncompressed tar stream while hashing it for the diff_id.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "envd/node/layer_unpacker.hpp"
#include "envd/oci/digest.hpp"
#include "envd/util/error.hpp"

namespace envd::node::detail {

// Where compressed bytes come from. Used by one thread at a time.
class ChunkSource {
 public:
  virtual ~ChunkSource() = default;
  // The next compressed bytes, valid until the next call; empty at the end of the stream.
  virtual Result<std::string_view> next() = 0;
};

// Reads an open file descriptor (not owned, not closed) in 1 MiB chunks.
// Errors: io naming `what`. Not thread-safe.
class FileSource final : public ChunkSource {
 public:
  FileSource(int fd, std::string what);
  Result<std::string_view> next() override;

 private:
  int m_fd;
  std::string m_what;
  std::vector<char> m_buffer;
};

// Compressed chunks handed from a producer (LayerUnpacker::write, on the download's thread) to
// the consumer (the unpack thread, through next()), at most `max_bytes` queued at a time: a fast
// download waits for a slow disk instead of filling memory. Thread-safe for one producer thread
// and one consumer thread; the queue must outlive both.
class ChunkQueue final : public ChunkSource {
 public:
  // `what` names the stream in messages ("layer sha256:ab.. of team/env:v3").
  ChunkQueue(std::size_t max_bytes, std::string what);

  // Producer: queues a copy of `data` (appended to the last queued chunk while that stays small),
  // first waiting while it does not fit (a chunk larger than max_bytes waits for an empty queue).
  // Errors: the consumer's failure, as it was given to consumer_stopped(); failed_precondition
  // after close() or once the consumer stopped.
  Result<void> push(std::string_view data);
  // Producer: the end of the stream; next() returns empty once the queue is drained.
  void close();
  // Producer: abandons the stream; a waiting or later next() fails with cancelled.
  void abort();

  // Consumer: the next chunk (valid until the next call), waiting for one; empty after close()
  // and the last chunk. Errors: cancelled after abort().
  Result<std::string_view> next() override;
  // Consumer: it reads no more, having failed with `failure` or not; wakes a waiting push().
  void consumer_stopped(std::optional<Error> failure);

 private:
  const std::size_t m_max;
  const std::string m_what;
  std::mutex m_mutex;
  std::condition_variable m_changed;
  std::deque<std::string> m_chunks;
  std::size_t m_queued = 0;        // bytes in m_chunks
  bool m_eof = false;              // close() called
  bool m_aborted = false;          // abort() called
  bool m_stopped = false;          // consumer_stopped() called
  std::optional<Error> m_failure;  // the consumer failed: push() stops accepting
  std::string m_current;           // consumer only: the chunk next() returned last
  std::string m_spare;             // a buffer next() is done with, for push() to reuse
};

// Turns a source's compressed chunks into the uncompressed tar stream, hashing and counting every
// byte. gzip may hold several members (RFC 1952 §2.2) and zstd several frames; a stream that ends
// inside a member or frame is truncated, and one without any is empty (both invalid_argument).
// Not thread-safe; `source` must outlive the decoder.
class StreamDecoder {
 public:
  // A decoder for `compression` that fails once the uncompressed stream exceeds `max_bytes`.
  // Errors: internal when the decompressor cannot be set up.
  static Result<StreamDecoder> create(LayerCompression compression, ChunkSource& source,
                                      std::uint64_t max_bytes);
  ~StreamDecoder();
  StreamDecoder(StreamDecoder&&) noexcept;
  StreamDecoder& operator=(StreamDecoder&&) = delete;
  StreamDecoder(const StreamDecoder&) = delete;
  StreamDecoder& operator=(const StreamDecoder&) = delete;

  // The next uncompressed bytes (valid until the next call); empty at the end of the stream.
  // Errors: the source's; invalid_argument for a corrupt, truncated or empty compressed stream
  // and past max_bytes; internal.
  Result<std::string_view> read();
  // Reads (and hashes) the rest of the stream, e.g. what follows the tar's end: the diff_id
  // covers the whole stream. Errors: as read().
  Result<void> drain();
  // SHA-256 of the uncompressed bytes read; call once, after the stream ended.
  oci::Digest finish();

 private:
  struct Codec;  // zlib or libzstd state and the output buffer

  StreamDecoder(LayerCompression compression, ChunkSource& source, std::uint64_t max_bytes,
                std::unique_ptr<Codec> codec);
  Result<std::string_view> produce();
  Result<std::string_view> inflate_some();
  Result<std::string_view> zstd_some();

  LayerCompression m_compression;
  ChunkSource& m_source;
  std::uint64_t m_max;
  std::uint64_t m_total = 0;
  std::string_view m_pending;
  bool m_eof = false;
  bool m_flush = false;     // the last call filled the output buffer
  bool m_started = false;   // some compressed input was consumed
  bool m_in_frame = false;  // inside a gzip member or zstd frame
  std::unique_ptr<Codec> m_codec;
  oci::Sha256 m_hash;
};

}  // namespace envd::node::detail
