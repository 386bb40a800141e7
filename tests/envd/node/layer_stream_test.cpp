// Tests for the layer byte stream: the bounded queue between the download and the unpacker, and
// the decoder (gzip, zstd) that reads from it.
#include "envd/node/layer_stream.hpp"

#include <doctest/doctest.h>
#include <zstd.h>

#include <random>
#include <string>
#include <thread>
#include <vector>

namespace envd::node {
namespace {

// Hands out fixed chunks, as a download or a local copy would.
class ChunksSource final : public detail::ChunkSource {
 public:
  explicit ChunksSource(std::vector<std::string> chunks) : m_chunks(std::move(chunks)) {}
  Result<std::string_view> next() override {
    if (m_next == m_chunks.size()) return std::string_view();
    return std::string_view(m_chunks[m_next++]);
  }

 private:
  std::vector<std::string> m_chunks;
  std::size_t m_next = 0;
};

Result<std::string> decode_all(LayerCompression compression, std::vector<std::string> chunks) {
  ChunksSource source(std::move(chunks));
  ENVD_TRY(auto decoder, detail::StreamDecoder::create(compression, source, 1ull << 32));
  std::string out;
  for (;;) {
    ENVD_TRY(std::string_view piece, decoder.read());
    if (piece.empty()) return out;
    out.append(piece);
  }
}

// The decoder's output buffer is 256 KiB: a frame whose last bytes fill it exactly is complete.
// (A local pull reads 256 KiB chunks, and the 3.11.7 image's first layer ended just so: "truncated
// zstd stream" every time, while 4 KiB network reads never lined up.)
TEST_CASE("a zstd frame that ends exactly at a full output buffer is complete, not truncated") {
  for (std::size_t size : {std::size_t{256} << 10, std::size_t{768} << 10}) {
    CAPTURE(size);
    std::string data(size, '\0');
    std::mt19937 rng(7);
    for (auto& c : data) c = static_cast<char>('a' + rng() % 4);
    std::string frame(::ZSTD_compressBound(size), '\0');
    std::size_t n = ::ZSTD_compress(frame.data(), frame.size(), data.data(), size, 3);
    REQUIRE_FALSE(::ZSTD_isError(n));
    frame.resize(n);

    auto whole = decode_all(LayerCompression::zstd, {frame});
    REQUIRE_MESSAGE(whole, (whole ? "" : whole.error().message()));
    CHECK(*whole == data);
    auto twice = decode_all(LayerCompression::zstd, {frame, frame});  // two frames
    REQUIRE_MESSAGE(twice, (twice ? "" : twice.error().message()));
    CHECK(*twice == data + data);
    // Cut short, it still is truncated.
    auto cut = decode_all(LayerCompression::zstd, {frame.substr(0, frame.size() - 1)});
    REQUIRE_FALSE(cut);
    CHECK(cut.error().message().find("truncated zstd stream") != std::string::npos);
  }
}

TEST_CASE("the chunk queue hands over every byte in order, small pushes in fewer chunks") {
  detail::ChunkQueue queue(1u << 20, "layer q");
  std::string sent(3u << 20, '\0');
  std::mt19937 rng(5);
  for (auto& c : sent) c = static_cast<char>(rng());
  // 200 pushes of 4 KiB and 200 of one byte while the consumer waits: 819,400 bytes that fit in
  // the queue, coalesced into 256 KiB chunks.
  std::size_t at = 0;
  for (std::size_t n : {std::size_t{4096}, std::size_t{1}})
    for (int i = 0; i < 200; ++i, at += n)
      REQUIRE(queue.push(std::string_view(sent).substr(at, n)));
  std::string got;
  std::size_t chunks = 0;
  while (got.size() < at) {
    auto chunk = queue.next();
    REQUIRE(chunk);
    REQUIRE(!chunk->empty());
    got.append(*chunk);
    ++chunks;
  }
  CHECK(chunks == 4);
  // The rest from another thread, in pieces bigger than a chunk, while buffers are reused.
  std::thread producer([&] {
    for (std::size_t n = 700000; at < sent.size(); at += n)
      REQUIRE(queue.push(std::string_view(sent).substr(at, n)));
    queue.close();
  });
  for (;;) {
    auto chunk = queue.next();
    REQUIRE(chunk);
    if (chunk->empty()) break;
    got.append(*chunk);
  }
  producer.join();
  CHECK(got == sent);  // nothing lost, reordered or overwritten by a reused buffer
}

}  // namespace
}  // namespace envd::node
