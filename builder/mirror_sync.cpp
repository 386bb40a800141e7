// The mirroring thread: a set of repositories waiting to be copied, each retried with its own
// backoff, and what every mirror already has, so that an unchanged tag is not copied again.
#include "builder/mirror_sync.hpp"

#include <algorithm>
#include <condition_variable>
#include <map>
#include <mutex>
#include <set>
#include <thread>
#include <tuple>

#include "builder/local_image_source.hpp"
#include "builder/registry_index.hpp"
#include "envd/registry/http_transport.hpp"
#include "envd/registry/image_copy.hpp"
#include "envd/util/atomic_file.hpp"
#include "envd/util/log.hpp"

namespace envd::builder {

namespace {

using Clock = std::chrono::steady_clock;

struct Target {
  MirrorConfig config;
  std::string host;  // as RegistryClient wants it: "HOST:PORT"
  registry::ClientOptions client;
};

std::string trimmed(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r' || s.back() == ' ')) s.pop_back();
  return s;
}

}  // namespace

struct MirrorSync::Impl {
  BuilderState& state;
  MirrorSyncOptions options;
  std::vector<Target> targets;

  mutable std::mutex mutex;
  std::condition_variable wake;
  bool stopping = false;
  std::set<std::string> pending;
  std::map<std::string, Clock::time_point> not_before;
  std::map<std::string, std::chrono::milliseconds> backoff;
  // (mirror index, repository, tag) -> the manifest digest that mirror has.
  std::map<std::tuple<std::size_t, std::string, std::string>, oci::Digest> mirrored;
  Stats stats;
  std::thread thread;

  Impl(BuilderState& s, MirrorSyncOptions o) : state(s), options(std::move(o)) {}

  // Copies every tag of `repo` a mirror lacks. True when every copy succeeded.
  bool mirror_repository(const std::string& repo) {
    auto tags = state.index->tags(repo);
    if (!tags) {
      log::warn("mirror", "cannot list tags",
                {{"repository", repo}, {"error", tags.error().message()}});
      return false;
    }
    bool ok = true;
    for (const std::string& tag : *tags) {
      auto found = state.index->resolve(repo, tag);
      if (!found || !*found) continue;  // the tag went away meanwhile
      for (std::size_t i = 0; i < targets.size(); ++i) {
        auto key = std::make_tuple(i, repo, tag);
        {
          std::lock_guard lock(mutex);
          if (auto it = mirrored.find(key); it != mirrored.end() && it->second == (*found)->digest)
            continue;
        }
        if (auto copied = copy(targets[i], repo, tag); !copied) {
          ok = false;
          std::lock_guard lock(mutex);
          ++stats.failures;
          log::warn("mirror", "copy failed; will retry",
                    {{"image", repo + ":" + tag},
                     {"mirror", targets[i].config.url},
                     {"error", copied.error().message()}});
        } else {
          std::lock_guard lock(mutex);
          mirrored.insert_or_assign(key, *copied);
          ++stats.images_mirrored;
        }
      }
    }
    return ok;
  }

  Result<oci::Digest> copy(const Target& target, const std::string& repo, const std::string& tag) {
    registry::ClientOptions client = target.client;
    if (!target.config.token_file.empty()) {
      ENVD_TRY(std::string secret, read_file(target.config.token_file));
      secret = trimmed(std::move(secret));
      registry::Credentials& c = client.credentials[target.host];
      if (target.config.username.empty()) {
        c.token = secret;
      } else {
        c.username = target.config.username;
        c.password = secret;
      }
    }
    ENVD_TRY(auto dest, registry::RegistryClient::create(target.host, client));
    auto source = local_image_source(state, repo);
    std::string dest_repo = target.config.prefix.empty() ? repo : target.config.prefix + "/" + repo;
    ENVD_TRY(auto result, registry::copy_image(*source, tag, *dest, dest_repo, tag));
    log::info("mirror", "image mirrored",
              {{"image", repo + ":" + tag},
               {"mirror", target.host + "/" + dest_repo},
               {"manifest", result.manifest_digest.str()},
               {"blobs_copied", std::to_string(result.blobs_copied)}});
    return result.manifest_digest;
  }

  void run() {
    std::unique_lock lock(mutex);
    while (!stopping) {
      // The first pending repository whose retry time has come, else wait for one.
      auto now = Clock::now();
      std::optional<std::string> ready;
      std::optional<Clock::time_point> next;
      for (const std::string& repo : pending) {
        auto it = not_before.find(repo);
        if (it == not_before.end() || it->second <= now) {
          ready = repo;
          break;
        }
        next = next ? std::min(*next, it->second) : it->second;
      }
      if (!ready) {
        if (next) {
          wake.wait_until(lock, *next);
        } else {
          wake.wait(lock);
        }
        continue;
      }
      pending.erase(*ready);
      stats.pending = pending.size();
      lock.unlock();
      bool ok = mirror_repository(*ready);
      lock.lock();
      if (ok) {
        backoff.erase(*ready);
        not_before.erase(*ready);
      } else {
        auto& delay = backoff[*ready];
        delay = delay.count() == 0 ? options.retry_initial : std::min(delay * 2, options.retry_max);
        not_before[*ready] = Clock::now() + delay;
        pending.insert(*ready);
      }
      stats.pending = pending.size();
    }
  }
};

MirrorSync::MirrorSync(std::unique_ptr<Impl> impl) : m_impl(std::move(impl)) {}

Result<std::unique_ptr<MirrorSync>> MirrorSync::create(BuilderState& state,
                                                       MirrorSyncOptions options) {
  auto impl = std::make_unique<Impl>(state, options);
  for (const MirrorConfig& m : options.mirrors) {
    auto url = registry::parse_url(m.url);
    if (!url)
      return unexpected(ErrorCode::invalid_argument,
                        "mirror " + m.url + ": " + url.error().message());
    Target t{m, url->authority(), {}};
    t.client.user_agent = options.user_agent;
    bool loopback = registry::is_loopback_host(url->host);
    if (url->scheme == registry::Scheme::http && !loopback) t.client.http_hosts = {t.host};
    if (url->scheme == registry::Scheme::https && loopback) t.client.https_hosts = {t.host};
    impl->targets.push_back(std::move(t));
  }
  auto sync = std::unique_ptr<MirrorSync>(new MirrorSync(std::move(impl)));
  Impl* raw = sync->m_impl.get();
  raw->thread = std::thread([raw] { raw->run(); });
  return sync;
}

MirrorSync::~MirrorSync() {
  {
    std::lock_guard lock(m_impl->mutex);
    m_impl->stopping = true;
  }
  m_impl->wake.notify_all();
  if (m_impl->thread.joinable()) m_impl->thread.join();
}

void MirrorSync::notify(const std::string& repository) {
  if (m_impl->targets.empty()) return;
  {
    std::lock_guard lock(m_impl->mutex);
    m_impl->pending.insert(repository);
    // A new push retries at once, whatever the backoff of earlier failures.
    m_impl->not_before.erase(repository);
    m_impl->stats.pending = m_impl->pending.size();
  }
  m_impl->wake.notify_all();
}

MirrorSync::Stats MirrorSync::stats() const {
  std::lock_guard lock(m_impl->mutex);
  return m_impl->stats;
}

}  // namespace envd::builder
