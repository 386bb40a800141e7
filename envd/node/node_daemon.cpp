// The node daemon: one tracker thread per image reference (pull, then watch the tag and pull again
// when it moves), the supervisor's launcher (plan_launch + spawn_background in the image), a
// housekeeping thread (unpin what no replica runs, GC), and the status endpoint's view of it all.
#include "envd/node/node_daemon.hpp"

#include <httplib.h>

#include <atomic>
#include <condition_variable>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <set>
#include <shared_mutex>
#include <thread>

#include "envd/node/process.hpp"
#include "envd/node/sandbox.hpp"
#include "envd/node/status_server.hpp"
#include "envd/node/supervisor.hpp"
#include "envd/util/atomic_file.hpp"
#include "envd/util/log.hpp"

namespace envd::node {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

constexpr std::string_view k_component = "node";
constexpr std::chrono::seconds k_settle_interval{30};
constexpr const char* k_system_ca_bundle = "/etc/ssl/certs/ca-certificates.crt";

std::int64_t unix_now() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// One image reference that workers want, and the thread that keeps it pulled and watched.
struct Tracker {
  std::string reference;  // canonical
  registry::Reference ref;
  std::vector<std::string> workers;
  TagWatch watch = TagWatch::poll;
  // Under Impl::mutex:
  std::string digest;  // pulled and handed to the supervisor
  std::string state = "pulling";
  std::string error;
  std::int64_t updated_at = 0;
  // The long poll's client, so that stop() can cut a request short.
  std::mutex client_mutex;
  std::unique_ptr<httplib::Client> client;
  std::atomic<bool> in_watch{false};
  std::thread thread;
};

enum class WatchOutcome { unchanged, moved, deleted };

}  // namespace

struct NodeDaemon::Impl {
  NodeDaemonOptions options;
  const NodeConfig& config = options.config;
  fs::path ca_bundle;  // system CAs plus the registries' ca_file, when any is configured
  std::unique_ptr<NodeStore> store;
  std::unique_ptr<ImagePuller> puller;
  std::unique_ptr<Supervisor> supervisor;
  std::unique_ptr<StatusServer> status;

  std::shared_mutex pull_gc;       // pulls (with their pin) shared, GC exclusive
  std::atomic<bool> ready{false};  // everything above exists (the status endpoint binds first)
  std::mutex mutex;
  std::condition_variable cv;
  bool stopping = false;
  bool stopped = false;
  bool gc_wanted = false;
  std::map<std::string, PulledImage> images;  // by manifest digest, what replicas may launch on
  std::map<std::string, ImageLease> leases;   // by manifest digest
  std::vector<std::unique_ptr<Tracker>> trackers;
  NodeMetrics metrics;
  std::thread housekeeping;

  const WorkerConfig* worker(const std::string& name) const {
    for (const auto& w : config.workers)
      if (w.spec.name == name) return &w;
    return nullptr;
  }

  // Waits up to `d` unless stopping; returns whether the daemon is stopping.
  bool wait_for(milliseconds d) {
    std::unique_lock lock(mutex);
    return cv.wait_for(lock, d, [&] { return stopping; });
  }

  bool is_stopping() {
    std::lock_guard lock(mutex);
    return stopping;
  }

  Result<pid_t> launch(const LaunchRequest& req) {
    RunSpec spec;
    {
      std::lock_guard lock(mutex);
      auto image = images.find(req.image);
      const WorkerConfig* w = worker(req.worker);
      if (image == images.end() || w == nullptr)
        return Error(ErrorCode::internal, "no pulled image " + req.image + " for " + req.worker);
      spec.rootfs = image->second.rootfs;
      spec.image_env = image->second.config.env;
      spec.working_dir = image->second.config.working_dir;
      spec.command = w->command;
      spec.extra_env = w->environment;
    }
    spec.isolation = config.isolation;
    // Short: relocated binaries must take the new path in place of the old (conda's rule).
    spec.relocation_dir = config.data_dir / "r" / req.image.substr(7, 16);
    auto plan = plan_launch(spec);
    if (!plan) return plan.error().with_context("worker " + req.worker);
    for (const auto& note : plan->notes)
      log::info(k_component, note, {{"worker", req.worker}, {"image", req.image}});
    auto pid = spawn_background(*plan, req.log_file);
    if (!pid) return pid.error().with_context("worker " + req.worker);
    return *pid;
  }

  // A pulled image becomes the one its tracker's workers run: pinned first, then handed over.
  void install(Tracker& t, PulledImage pulled, Result<ImageLease> lease) {
    std::string digest = pulled.manifest_digest.str();
    auto usage = store->usage();
    {
      std::lock_guard lock(mutex);
      if (lease && !leases.count(digest)) leases.emplace(digest, std::move(*lease));
      ++metrics.pulls;
      metrics.bytes_fetched += pulled.bytes_fetched;
      if (usage) metrics.cache_bytes = *usage;
      bool moved = !t.digest.empty() && t.digest != digest;
      t.digest = digest;
      t.state = "ready";
      t.error.clear();
      t.updated_at = unix_now();
      images.insert_or_assign(digest, std::move(pulled));
      gc_wanted = moved;
    }
    if (!lease)
      log::warn(k_component, "cannot pin image",
                {{"image", digest}, {"error", lease.error().message()}});
    for (const auto& name : t.workers) {
      const WorkerConfig* w = worker(name);
      supervisor->run_worker(w->spec, digest);
    }
    cv.notify_all();
  }

  void record_failure(Tracker& t, const Error& e, bool pull) {
    std::lock_guard lock(mutex);
    if (pull) ++metrics.pull_failures;
    if (t.digest.empty()) t.state = "failed";
    t.error = e.message();
    t.updated_at = unix_now();
  }

  // An http client for the registry of `t`, with its credentials and CAs.
  std::unique_ptr<httplib::Client> make_client(const Tracker& t) {
    const RegistryConfig* reg = nullptr;
    for (const auto& r : config.registries)
      if (r.host == t.ref.host) reg = &r;
    auto scheme = reg ? reg->scheme : registry::default_scheme(t.ref.host);
    auto client = std::make_unique<httplib::Client>(std::string(registry::to_string(scheme)) +
                                                    "://" + t.ref.host);
    client->set_connection_timeout(10);
    client->set_tcp_nodelay(true);
    client->set_read_timeout(static_cast<time_t>(options.watch_wait.count() + 30));
    if (!ca_bundle.empty()) client->set_ca_cert_path(ca_bundle.string());
    if (reg && !reg->token.empty()) {
      if (reg->username.empty())
        client->set_bearer_token_auth(reg->token);
      else
        client->set_basic_auth(reg->username, reg->token);
    }
    return client;
  }

  // One long poll of the envd tag watch. Errors: unimplemented when the registry has no such
  // endpoint (not an envd builder), else what went wrong.
  Result<std::pair<WatchOutcome, std::string>> long_poll(Tracker& t, const std::string& current) {
    std::string path = "/envd/v1/" + t.ref.repository + "/tags/" + t.ref.reference() +
                       "/watch?digest=" + current +
                       "&wait_seconds=" + std::to_string(options.watch_wait.count());
    httplib::Client* client = nullptr;
    {
      std::lock_guard lock(t.client_mutex);
      if (!t.client) t.client = make_client(t);
      client = t.client.get();
      t.in_watch = true;
    }
    if (is_stopping()) {
      t.in_watch = false;
      return std::pair{WatchOutcome::unchanged, std::string()};
    }
    auto res = client->Get(path);
    t.in_watch = false;
    if (!res)
      return Error(ErrorCode::unavailable,
                   "watch " + t.reference + ": " + httplib::to_string(res.error()));
    if (res->status == 404 || res->status == 405 || res->status == 501)
      return Error(ErrorCode::unimplemented, "watch " + t.reference + ": HTTP " +
                                                 std::to_string(res->status) +
                                                 " (not an envd builder)");
    if (res->status != 200)
      return Error(res->status == 401 || res->status == 403 ? ErrorCode::permission_denied
                                                            : ErrorCode::unavailable,
                   "watch " + t.reference + ": HTTP " + std::to_string(res->status) + ": " +
                       res->body.substr(0, 300));
    auto doc = nlohmann::json::parse(res->body, nullptr, false);
    if (doc.is_discarded() || !doc.is_object() || !doc.contains("digest"))
      return Error(ErrorCode::invalid_argument, "watch " + t.reference + ": malformed answer");
    if (doc["digest"].is_null()) return std::pair{WatchOutcome::deleted, std::string()};
    if (!doc["digest"].is_string())
      return Error(ErrorCode::invalid_argument, "watch " + t.reference + ": malformed digest");
    std::string digest = doc["digest"].get<std::string>();
    if (!oci::Digest::parse(digest))
      return Error(ErrorCode::invalid_argument, "watch " + t.reference + ": malformed digest");
    return std::pair{digest == current ? WatchOutcome::unchanged : WatchOutcome::moved, digest};
  }

  // Waits for the tag of `t` to move away from `current` (or a timeout: unchanged).
  Result<std::pair<WatchOutcome, std::string>> watch_once(Tracker& t, const std::string& current) {
    if (t.watch != TagWatch::poll) {
      auto r = long_poll(t, current);
      if (r || r.error().code() != ErrorCode::unimplemented || t.watch == TagWatch::envd) return r;
      log::info(
          k_component, "registry has no envd tag watch; polling instead",
          {{"image", t.reference}, {"every", std::to_string(config.poll_interval.count()) + "ms"}});
      t.watch = TagWatch::poll;
    }
    if (wait_for(config.poll_interval)) return std::pair{WatchOutcome::unchanged, std::string()};
    auto digest = puller->resolve(t.reference);
    if (!digest) {
      if (digest.error().code() == ErrorCode::not_found)
        return std::pair{WatchOutcome::deleted, std::string()};
      return digest.error();
    }
    std::string d = digest->str();
    return std::pair{d == current ? WatchOutcome::unchanged : WatchOutcome::moved, d};
  }

  void track(Tracker& t) {
    milliseconds retry = options.retry_initial;
    auto backoff = [&] {
      bool stop = wait_for(retry);
      retry = std::min(retry * 2, options.retry_max);
      return stop;
    };
    bool need_pull = true;
    std::string current;
    while (!is_stopping()) {
      if (need_pull) {
        log::info(k_component, "pulling", {{"image", t.reference}});
        // GC waits for the pull and the pin after it (else it could evict what was just pulled
        // before it is pinned, with a short cache_grace).
        std::shared_lock pulling(pull_gc);
        auto pulled = puller->pull(t.reference);
        auto lease =
            pulled ? puller->pin(pulled->manifest_digest) : Result<ImageLease>(pulled.error());
        pulling.unlock();
        if (!pulled) {
          log::error(k_component, "pull failed",
                     {{"image", t.reference}, {"error", pulled.error().message()}});
          record_failure(t, pulled.error(), true);
          if (backoff()) break;
          continue;
        }
        current = pulled->manifest_digest.str();
        install(t, std::move(*pulled), std::move(lease));
        need_pull = false;
        retry = options.retry_initial;
      }
      if (t.ref.digest) {  // pinned by digest: nothing to watch
        std::unique_lock lock(mutex);
        cv.wait(lock, [&] { return stopping; });
        break;
      }
      auto seen = watch_once(t, current);
      if (!seen) {
        if (is_stopping()) break;
        log::warn(k_component, "tag watch failed",
                  {{"image", t.reference}, {"error", seen.error().message()}});
        record_failure(t, seen.error(), false);
        if (backoff()) break;
        continue;
      }
      retry = options.retry_initial;
      auto [outcome, digest] = *seen;
      if (outcome == WatchOutcome::moved) {
        log::info(k_component, "tag moved",
                  {{"image", t.reference}, {"from", current}, {"to", digest}});
        std::lock_guard lock(mutex);
        ++metrics.tag_moves;
        t.state = "pulling";
        need_pull = true;
      } else if (outcome == WatchOutcome::deleted) {
        // Keep running what runs; look again later (a long poll would answer at once).
        log::warn(k_component, "tag no longer exists; workers keep their image",
                  {{"image", t.reference}});
        if (wait_for(config.poll_interval)) break;
      }
    }
  }

  // Releases the pins of images no replica runs and no worker wants any more.
  bool sync_pins() {
    auto in_use = supervisor->images_in_use();
    std::lock_guard lock(mutex);
    for (const auto& t : trackers)
      if (!t->digest.empty()) in_use.insert(t->digest);
    bool released = false;
    for (auto it = leases.begin(); it != leases.end();) {
      if (in_use.count(it->first)) {
        ++it;
        continue;
      }
      log::info(k_component, "image no longer in use; unpinned", {{"image", it->first}});
      images.erase(it->first);
      it = leases.erase(it);
      released = true;
    }
    return released;
  }

  void run_gc() {
    std::unique_lock exclusive(pull_gc);
    GcOptions gc;
    gc.quota = config.cache_quota;
    gc.grace = config.cache_grace;
    auto result = puller->gc(gc);
    if (!result) {
      log::error(k_component, "gc failed", {{"error", result.error().message()}});
      return;
    }
    std::lock_guard lock(mutex);
    ++metrics.gc_runs;
    metrics.evictions += result->images_evicted.size();
    metrics.cache_bytes = result->bytes_after;
    for (const auto& d : result->images_evicted) {
      std::error_code ec;
      fs::remove_all(config.data_dir / "r" / d.str().substr(7, 16), ec);
    }
    if (!result->images_evicted.empty() || !result->quota_met)
      log::info(k_component, "gc",
                {{"evicted", std::to_string(result->images_evicted.size())},
                 {"bytes_after", std::to_string(result->bytes_after)},
                 {"quota_met", result->quota_met ? "true" : "false"}});
  }

  void housekeep() {
    auto next_gc = Clock::now() + config.gc_interval;
    auto next_settle = Clock::now() + k_settle_interval;
    for (;;) {
      {
        std::unique_lock lock(mutex);
        cv.wait_for(lock, std::chrono::seconds(1), [&] { return stopping || gc_wanted; });
        if (stopping) return;
      }
      bool released = sync_pins();
      bool wanted = false;
      {
        std::lock_guard lock(mutex);
        wanted = std::exchange(gc_wanted, false);
      }
      if (released || wanted || Clock::now() >= next_gc) {
        run_gc();
        next_gc = Clock::now() + config.gc_interval;
      }
      if (Clock::now() >= next_settle) {
        // Pulls commit without waiting for the disk; make what they wrote durable now and then,
        // so a restart of the machine does not discard it (deferred_sync.hpp).
        auto settled = puller->store().settle_deferred_sync(std::chrono::seconds(0));
        if (!settled)
          log::warn(k_component, "could not make pulled content durable",
                    {{"error", settled.error().message()}});
        next_settle = Clock::now() + k_settle_interval;
      }
    }
  }

  StatusSource status_source() {
    StatusSource s;
    s.health = [this] {
      if (!ready) return Health{false, "starting"};
      std::lock_guard lock(mutex);
      Health h;
      h.ok = !stopping;
      std::size_t pulled = 0;
      for (const auto& t : trackers) pulled += t->state == "ready";
      h.detail = stopping ? "stopping"
                          : std::to_string(pulled) + " of " + std::to_string(trackers.size()) +
                                " images ready";
      return h;
    };
    s.tracked_images = [this] {
      std::lock_guard lock(mutex);
      std::vector<TrackedImage> out;
      if (!ready) return out;
      for (const auto& t : trackers)
        out.push_back(TrackedImage{t->reference, t->digest, t->state, t->error,
                                   t->ref.digest                ? "pinned"
                                   : t->watch == TagWatch::poll ? "poll"
                                                                : "envd",
                                   t->workers, t->updated_at});
      return out;
    };
    s.stored_images = [this] {
      std::vector<StoredImage> out;
      if (!ready) return out;
      auto list = store->list_images();
      if (!list) return out;
      for (const auto& i : *list)
        out.push_back(StoredImage{
            i.manifest_digest.str(), i.references, i.size_bytes, i.in_use, i.pulled_at, i.last_used,
            std::string(to_string(assembly_kind(*store, i.manifest_digest)))});
      return out;
    };
    s.workers = [this] {
      if (!ready) return std::vector<WorkerView>{};
      auto statuses = supervisor->status();
      std::lock_guard lock(mutex);
      std::vector<WorkerView> out;
      for (const auto& w : config.workers) {
        WorkerView v{w.spec.name, w.image, w.command, "", std::nullopt};
        for (auto& st : statuses)
          if (st.name == w.spec.name) v.status = st;
        if (!v.status)
          for (const auto& t : trackers)
            if (t->reference == w.image)
              v.waiting =
                  t->error.empty() ? "pulling " + w.image : "pull failed (retrying): " + t->error;
        out.push_back(std::move(v));
      }
      return out;
    };
    s.metrics = [this] {
      if (!ready) return NodeMetrics{};
      auto stats = supervisor->stats();
      std::lock_guard lock(mutex);
      NodeMetrics m = metrics;
      m.cache_quota = config.cache_quota;
      m.supervisor = stats;
      return m;
    };
    return s;
  }

  // One PEM bundle with the system's CAs and every registry's ca_file ("" when none is set).
  Result<void> write_ca_bundle() {
    std::string bundle;
    for (const auto& r : config.registries) {
      if (r.ca_file.empty()) continue;
      auto pem = read_file(r.ca_file);
      if (!pem) return pem.error().with_context("registry " + r.url + ": ca_file");
      bundle += *pem + "\n";
    }
    if (bundle.empty()) return {};
    if (auto system = read_file(k_system_ca_bundle)) bundle = *system + "\n" + bundle;
    ca_bundle = config.data_dir / "ca-bundle.pem";
    return write_file_atomic(ca_bundle, bundle, 0644);
  }

  registry::ClientOptions client_options() const {
    registry::ClientOptions o;
    o.parallel_transfers = config.parallel_downloads;
    o.ca_file = ca_bundle.string();
    for (const auto& r : config.registries) {
      if (!r.token.empty()) {
        registry::Credentials c;
        if (r.username.empty()) {
          c.token = r.token;
        } else {
          c.username = r.username;
          c.password = r.token;
        }
        o.credentials[r.host] = c;
      }
      bool loopback = registry::is_loopback_host(r.host);
      if (r.scheme == registry::Scheme::http && !loopback) o.http_hosts.push_back(r.host);
      if (r.scheme == registry::Scheme::https && loopback) o.https_hosts.push_back(r.host);
    }
    return o;
  }
};

NodeDaemon::NodeDaemon(std::unique_ptr<Impl> impl) : m_impl(std::move(impl)) {}

NodeDaemon::~NodeDaemon() {
  stop();
}

int NodeDaemon::status_port() const {
  return m_impl->status->port();
}

const std::filesystem::path& NodeDaemon::data_dir() const {
  return m_impl->config.data_dir;
}

Result<std::unique_ptr<NodeDaemon>> NodeDaemon::start(NodeDaemonOptions options) {
  if (options.config.data_dir.empty())
    return Error(ErrorCode::invalid_argument, "node daemon: no data dir");
  auto impl = std::make_unique<Impl>();
  impl->options = std::move(options);
  Impl* d = impl.get();
  const NodeConfig& config = d->config;

  // Before anything is created: a refused address must not leave a data directory behind.
  ENVD_TRY(d->status,
           StatusServer::start(config.listen_host, config.listen_port, d->status_source()));
  ENVD_TRY(d->store, NodeStore::open(config.data_dir));
  ENVD_TRY_VOID(d->write_ca_bundle());
  PullerOptions puller_options;
  puller_options.client = d->client_options();
  puller_options.local_source = d->options.local_source;
  puller_options.assembly = d->config.assembly;
  ENVD_TRY(d->puller, ImagePuller::create(*d->store, std::move(puller_options)));

  SupervisorOptions sup;
  sup.log_dir = config.data_dir / "logs";
  sup.launch = [d](const LaunchRequest& req) { return d->launch(req); };
  sup.backoff_initial = d->options.restart_backoff_initial;
  sup.backoff_max = d->options.restart_backoff_max;
  ENVD_TRY(d->supervisor, Supervisor::create(std::move(sup)));

  // One tracker per distinct reference: however many workers want an image, it is pulled once.
  for (const auto& w : config.workers) {
    Tracker* t = nullptr;
    for (auto& x : d->trackers)
      if (x->reference == w.image) t = x.get();
    if (t == nullptr) {
      auto ref = registry::parse_reference(w.image);
      if (!ref) return ref.error().with_context("worker " + w.spec.name);
      auto& added = d->trackers.emplace_back(std::make_unique<Tracker>());
      t = added.get();
      t->reference = w.image;
      t->ref = *ref;
      t->watch = TagWatch::poll;
      if (!ref->is_local()) {
        t->watch = TagWatch::automatic;
        for (const auto& r : config.registries)
          if (r.host == ref->host) t->watch = r.watch;
      }
    }
    t->workers.push_back(w.spec.name);
  }

  d->ready = true;
  for (auto& t : d->trackers) {
    Tracker* raw = t.get();
    t->thread = std::thread([d, raw] { d->track(*raw); });
  }
  d->housekeeping = std::thread([d] { d->housekeep(); });
  log::info(k_component, "node daemon started",
            {{"data", config.data_dir.string()},
             {"workers", std::to_string(config.workers.size())},
             {"images", std::to_string(d->trackers.size())}});
  return std::unique_ptr<NodeDaemon>(new NodeDaemon(std::move(impl)));
}

void NodeDaemon::stop() {
  Impl* d = m_impl.get();
  {
    std::lock_guard lock(d->mutex);
    if (d->stopped) return;
    d->stopped = true;
    d->stopping = true;
  }
  d->cv.notify_all();
  log::info(k_component, "stopping: workers first");
  d->supervisor->shutdown();
  // A long poll in flight is cut short; stop() again in case it began just after the last one.
  for (auto& t : d->trackers) {
    while (t->in_watch) {
      {
        std::lock_guard lock(t->client_mutex);
        if (t->client) t->client->stop();
      }
      std::this_thread::sleep_for(milliseconds(10));
    }
  }
  for (auto& t : d->trackers)
    if (t->thread.joinable()) t->thread.join();
  if (d->housekeeping.joinable()) d->housekeeping.join();
  d->status->stop();
  std::lock_guard lock(d->mutex);
  d->leases.clear();
  log::info(k_component, "node daemon stopped");
}

}  // namespace envd::node
