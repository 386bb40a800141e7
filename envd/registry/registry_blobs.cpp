// RegistryClient blob transfers: streamed, verified, resumable downloads and uploads (monolithic
// or chunked) with cross-repository mounts.
// https://github.com/opencontainers/distribution-spec/blob/v1.1.0/spec.md#pulling-blobs
// https://github.com/opencontainers/distribution-spec/blob/v1.1.0/spec.md#pushing-blobs
#include <atomic>
#include <charconv>
#include <thread>

#include "envd/registry/auth_challenge.hpp"
#include "envd/registry/registry_client.hpp"
#include "envd/registry/registry_client_impl.hpp"

namespace envd::registry {
namespace {

// The first byte position of a Content-Range "bytes START-END/TOTAL", or nullopt.
std::optional<std::uint64_t> content_range_start(std::string_view v) {
  if (v.starts_with("bytes")) v.remove_prefix(5);
  while (!v.empty() && (v.front() == ' ' || v.front() == '=')) v.remove_prefix(1);
  std::uint64_t start = 0;
  auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), start);
  if (ec != std::errc() || end == v.data()) return std::nullopt;
  return start;
}

std::string with_query(std::string target, std::string_view param) {
  target += target.find('?') == std::string::npos ? '?' : '&';
  target += param;
  return target;
}

// Reads until `buffer` is full or the reader ends.
Result<std::size_t> read_full(store::BlobReader& reader, char* buffer, std::size_t size) {
  std::size_t got = 0;
  while (got < size) {
    ENVD_TRY(std::size_t n, reader.read(buffer + got, size - got));
    if (n == 0) break;
    got += n;
  }
  return got;
}

}  // namespace

// Bounded: max_attempts consecutive attempts without progress, and 4 x max_attempts in all.
Result<FetchResult> RegistryClient::Impl::fetch(
    const std::string& repository, const oci::Digest& digest, std::optional<std::uint64_t> size,
    std::uint64_t offset, const std::function<Result<void>(std::string_view)>& write,
    oci::Sha256* hasher) {
  Impl& impl = *this;
  const std::string what = "fetch blob " + digest.str() + " from " + impl.host + "/" + repository;
  FetchResult result;
  unsigned failures = 0;
  while (true) {
    ++result.requests;
    HttpRequest req;
    req.url = impl.url("/v2/" + repository + "/blobs/" + digest.str());
    if (offset > 0) req.headers.emplace_back("Range", "bytes=" + std::to_string(offset) + "-");
    std::uint64_t skip = 0;  // a server that ignored Range resends bytes we have
    bool progressed = false;
    bool too_long = false;
    bool bad_range = false;
    std::optional<Error> write_error;
    req.on_head = [&](const HttpResponse& h) {
      skip = 0;
      if (h.status == 200) skip = offset;
      if (h.status == 206) {
        auto start = content_range_start(header_value(h.headers, "Content-Range"));
        if (!start || *start > offset) {
          bad_range = true;
          return false;
        }
        skip = offset - *start;
      }
      return true;
    };
    req.on_body = [&](std::string_view data) {
      std::size_t drop = static_cast<std::size_t>(std::min<std::uint64_t>(skip, data.size()));
      data.remove_prefix(drop);
      skip -= drop;
      if (data.empty()) return true;
      if (size && offset + data.size() > *size) {
        too_long = true;
        return false;
      }
      if (hasher != nullptr) hasher->update(data);
      if (auto w = write(data); !w) {
        write_error = w.error();
        return false;
      }
      offset += data.size();
      result.bytes_fetched += data.size();
      progressed = true;
      return true;
    };
    auto resp = impl.execute(req, pull_scope(repository));
    std::optional<Error> failure;
    if (write_error) return write_error->with_context(what);
    if (too_long)
      return unexpected(ErrorCode::digest_mismatch,
                        what + ": longer than the " + std::to_string(*size) + " bytes expected");
    if (bad_range)
      return unexpected(ErrorCode::invalid_argument, what + ": unexpected Content-Range");
    bool complete = false;
    if (!resp) {
      if (resp.error().code() != ErrorCode::unavailable) return resp.error().with_context(what);
      failure = resp.error();
    } else if (resp->status == 200 || resp->status == 206) {
      complete = true;
    } else if (resp->status == 416 && size && offset == *size) {
      complete = true;  // we asked for the bytes after the last one
    } else {
      Error e = impl.status_error(req, *resp);
      if (e.code() != ErrorCode::unavailable) return e.with_context(what);
      failure = e;
    }
    if (complete) {
      if (size && offset != *size)
        return unexpected(
            ErrorCode::digest_mismatch,
            what + ": " + std::to_string(offset) + " bytes, expected " + std::to_string(*size));
      break;
    }
    failures = progressed ? 1 : failures + 1;
    if (failures >= impl.options.max_attempts || result.requests >= 4 * impl.options.max_attempts)
      return failure->with_context(what + " (gave up after " + std::to_string(result.requests) +
                                   " attempts)");
    impl.log_retry(what, *failure, result.requests);
    if (!progressed) impl.backoff(failures);
  }
  if (hasher != nullptr) {
    oci::Digest got = hasher->finish();
    if (got != digest)
      return unexpected(ErrorCode::digest_mismatch,
                        what + ": digest mismatch: the bytes hash to " + got.str());
  }
  return result;
}

Result<FetchResult> RegistryClient::fetch_blob_to_sink(const std::string& repository,
                                                       const oci::Digest& digest,
                                                       std::optional<std::uint64_t> size,
                                                       BlobSink& sink) {
  oci::Sha256 hasher;
  return m_impl->fetch(
      repository, digest, size, 0, [&](std::string_view d) { return sink.write(d); }, &hasher);
}

Result<FetchResult> RegistryClient::fetch_blob_to_writer(const std::string& repository,
                                                         const oci::Digest& digest,
                                                         std::optional<std::uint64_t> size,
                                                         store::BlobWriter& writer) {
  // The writer hashes what it is given and verifies at commit, including bytes it held before
  // this call, which this client never saw.
  ENVD_TRY(auto result, m_impl->fetch(
                            repository, digest, size, writer.written(),
                            [&](std::string_view d) { return writer.write(d); }, nullptr));
  auto committed = writer.commit(digest, size);
  if (!committed)
    return committed.error().with_context("fetch blob " + digest.str() + " from " + host() + "/" +
                                          repository);
  return result;
}

Result<FetchResult> RegistryClient::fetch_blob_to_store(const std::string& repository,
                                                        const oci::Descriptor& blob,
                                                        store::BlobStore& store) {
  if (store.contains(blob.digest)) {
    FetchResult r;
    r.already_present = true;
    return r;
  }
  ENVD_TRY(auto writer, store.begin_write());
  return fetch_blob_to_writer(repository, blob.digest, blob.size, *writer);
}

Result<FetchResult> RegistryClient::fetch_blobs(const std::string& repository,
                                                const std::vector<oci::Descriptor>& blobs,
                                                store::BlobStore& store) {
  std::atomic<std::size_t> next{0};
  std::mutex mutex;
  FetchResult total;
  std::optional<Error> first_error;
  auto worker = [&] {
    while (true) {
      {
        std::lock_guard lock(mutex);
        if (first_error) return;
      }
      std::size_t i = next++;
      if (i >= blobs.size()) return;
      auto r = fetch_blob_to_store(repository, blobs[i], store);
      std::lock_guard lock(mutex);
      if (!r) {
        if (!first_error) first_error = r.error();
        return;
      }
      total.bytes_fetched += r->bytes_fetched;
      total.requests += r->requests;
    }
  };
  std::size_t n = std::min<std::size_t>(m_impl->options.parallel_transfers, blobs.size());
  std::vector<std::thread> threads;
  for (std::size_t i = 1; i < n; ++i) threads.emplace_back(worker);
  worker();
  for (auto& t : threads) t.join();
  if (first_error) return *first_error;
  return total;
}

Result<PushResult> RegistryClient::push_blob(const std::string& repository,
                                             const oci::Descriptor& blob, const BlobOpener& open,
                                             const std::optional<std::string>& mount_from) {
  Impl& impl = *m_impl;
  const std::string what = "push blob " + blob.digest.str() + " to " + host() + "/" + repository;
  const Scope scope = push_scope(repository, mount_from);
  auto location_of = [&](const HttpRequest& req, const HttpResponse& resp) -> Result<Url> {
    auto loc = resolve_url(req.url, header_value(resp.headers, "Location"));
    if (!loc) return loc.error().with_context(req.method + " " + req.url.str());
    return loc;
  };
  auto attempt = [&]() -> Result<PushResult> {
    HttpRequest head;
    head.method = "HEAD";
    head.url = impl.url("/v2/" + repository + "/blobs/" + blob.digest.str());
    ENVD_TRY(auto exists, impl.execute(head, scope));
    if (exists.status == 200) return PushResult{PushOutcome::existed, 0};
    if (exists.status != 404) return impl.status_error(head, exists);

    HttpRequest post;
    post.method = "POST";
    post.url = impl.url("/v2/" + repository + "/blobs/uploads/");
    if (mount_from)
      post.url.target +=
          "?mount=" + url_encode(blob.digest.str()) + "&from=" + url_encode(*mount_from);
    ENVD_TRY(auto started, impl.execute(post, scope));
    if (started.status == 201 && mount_from) return PushResult{PushOutcome::mounted, 0};
    if (started.status != 202) return impl.status_error(post, started);
    ENVD_TRY(Url session, location_of(post, started));

    HttpRequest put;
    put.method = "PUT";
    put.content_type = "application/octet-stream";
    if (blob.size <= impl.options.chunk_size) {
      put.url = session;
      put.url.target = with_query(put.url.target, "digest=" + url_encode(blob.digest.str()));
      put.body_length = blob.size;
      BodyOpener body = [&]() -> Result<BodyRead> {
        ENVD_TRY(std::shared_ptr<store::BlobReader> reader, open());
        if (reader->size() != blob.size)
          return unexpected(ErrorCode::invalid_argument,
                            "blob has " + std::to_string(reader->size()) +
                                " bytes, its descriptor " + std::to_string(blob.size));
        return BodyRead([reader](char* buf, std::size_t n) { return reader->read(buf, n); });
      };
      ENVD_TRY(auto done, impl.execute(put, scope, &body));
      if (done.status != 201) return impl.status_error(put, done);
      if (auto sent = header_value(done.headers, "Docker-Content-Digest");
          !sent.empty() && sent != blob.digest.str())
        return unexpected(ErrorCode::digest_mismatch, "the registry stored " + sent);
      return PushResult{PushOutcome::uploaded, blob.size};
    }
    // Chunked: PATCH with Content-Range, each answer naming where the next chunk goes.
    ENVD_TRY(auto reader, open());
    std::string chunk(static_cast<std::size_t>(impl.options.chunk_size), '\0');
    std::uint64_t offset = 0;
    while (offset < blob.size) {
      ENVD_TRY(std::size_t n, read_full(*reader, chunk.data(), chunk.size()));
      if (n == 0)
        return unexpected(ErrorCode::invalid_argument, "blob ended after " +
                                                           std::to_string(offset) + " of " +
                                                           std::to_string(blob.size) + " bytes");
      HttpRequest patch;
      patch.method = "PATCH";
      patch.url = session;
      patch.content_type = "application/octet-stream";
      patch.body = chunk.substr(0, n);
      patch.headers.emplace_back("Content-Range",
                                 std::to_string(offset) + "-" + std::to_string(offset + n - 1));
      ENVD_TRY(auto accepted, impl.execute(patch, scope));
      if (accepted.status != 202) return impl.status_error(patch, accepted);
      ENVD_TRY(session, location_of(patch, accepted));
      offset += n;
    }
    put.url = session;
    put.url.target = with_query(put.url.target, "digest=" + url_encode(blob.digest.str()));
    ENVD_TRY(auto done, impl.execute(put, scope));
    if (done.status != 201) return impl.status_error(put, done);
    return PushResult{PushOutcome::uploaded, blob.size};
  };
  return impl.with_retries(what, attempt);
}

}  // namespace envd::registry
