// The status endpoint: renders what the daemon reports as JSON and Prometheus text, and serves it
// with cpp-httplib on a background thread.
#include "envd/node/status_server.hpp"

#include <httplib.h>

#include <sys/socket.h>

#include <atomic>
#include <ctime>
#include <nlohmann/json.hpp>
#include <thread>

#include "envd/util/log.hpp"

namespace envd::node {
namespace {

using nlohmann::json;

std::string rfc3339(std::int64_t unix_seconds) {
  if (unix_seconds <= 0) return {};
  std::time_t t = static_cast<std::time_t>(unix_seconds);
  std::tm tm{};
  ::gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

json time_or_null(std::int64_t unix_seconds) {
  return unix_seconds > 0 ? json(rfc3339(unix_seconds)) : json(nullptr);
}

json replica_json(const ReplicaStatus& r) {
  auto started =
      std::chrono::duration_cast<std::chrono::seconds>(r.started_at.time_since_epoch()).count();
  return json{{"slot", r.slot},
              {"pid", r.pid == 0 ? json(nullptr) : json(r.pid)},
              {"state", std::string(to_string(r.state))},
              {"manifest_digest", r.image},
              {"started_at", time_or_null(started)},
              {"restarts", r.restarts},
              {"last_exit", r.last_exit ? json(*r.last_exit) : json(nullptr)},
              {"last_error", r.last_error.empty() ? json(nullptr) : json(r.last_error)},
              {"log_file", r.log_file.string()}};
}

// A Prometheus label value: backslash, double quote and newline escaped.
std::string label(std::string_view value) {
  std::string out;
  for (char c : value) {
    if (c == '\\' || c == '"') out += '\\';
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    out += c;
  }
  return out;
}

class MetricWriter {
 public:
  void family(std::string_view name, std::string_view type, std::string_view help) {
    m_out += "# HELP " + std::string(name) + " " + std::string(help) + "\n";
    m_out += "# TYPE " + std::string(name) + " " + std::string(type) + "\n";
  }
  void sample(std::string_view name, std::uint64_t value, std::string_view labels = {}) {
    m_out += std::string(name);
    if (!labels.empty()) m_out += "{" + std::string(labels) + "}";
    m_out += " " + std::to_string(value) + "\n";
  }
  void one(std::string_view name, std::string_view type, std::string_view help,
           std::uint64_t value) {
    family(name, type, help);
    sample(name, value);
  }
  std::string take() { return std::move(m_out); }

 private:
  std::string m_out;
};

}  // namespace

std::string render_images_json(const std::vector<TrackedImage>& tracked,
                               const std::vector<StoredImage>& stored) {
  json t = json::array();
  for (const auto& i : tracked)
    t.push_back(json{
        {"reference", i.reference},
        {"manifest_digest", i.manifest_digest.empty() ? json(nullptr) : json(i.manifest_digest)},
        {"state", i.state},
        {"error", i.error.empty() ? json(nullptr) : json(i.error)},
        {"watch", i.watch},
        {"workers", i.workers},
        {"updated_at", time_or_null(i.updated_at)}});
  json s = json::array();
  for (const auto& i : stored)
    s.push_back(json{{"manifest_digest", i.manifest_digest},
                     {"references", i.references},
                     {"size_bytes", i.size_bytes},
                     {"in_use", i.in_use},
                     {"pulled_at", time_or_null(i.pulled_at)},
                     {"last_used", time_or_null(i.last_used)},
                     {"assembly", i.assembly}});
  return json{{"tracked", t}, {"stored", s}}.dump(2) + "\n";
}

std::string render_workers_json(const std::vector<WorkerView>& workers) {
  json out = json::array();
  for (const auto& w : workers) {
    json replicas = json::array();
    if (w.status)
      for (const auto& r : w.status->replica_status) replicas.push_back(replica_json(r));
    out.push_back(json{{"name", w.name},
                       {"image", w.reference},
                       {"command", w.command},
                       {"manifest_digest", w.status ? json(w.status->image) : json(nullptr)},
                       {"waiting", w.waiting.empty() ? json(nullptr) : json(w.waiting)},
                       {"replicas_desired", w.status ? w.status->replicas : 0},
                       {"replicas_ready", w.status ? w.status->ready : 0},
                       {"rolling", w.status && w.status->rolling},
                       {"restarts", w.status ? w.status->restarts : 0},
                       {"replicas", replicas}});
  }
  return json{{"workers", out}}.dump(2) + "\n";
}

std::string render_metrics(const NodeMetrics& m, const std::vector<WorkerView>& workers) {
  MetricWriter w;
  w.one("envd_node_pulls_total", "counter", "Image pulls completed.", m.pulls);
  w.one("envd_node_pull_failures_total", "counter", "Image pulls that failed.", m.pull_failures);
  w.one("envd_node_bytes_fetched_total", "counter",
        "Manifest, config and layer bytes downloaded from registries.", m.bytes_fetched);
  w.one("envd_node_tag_moves_total", "counter", "Watched tags seen moving to a new image.",
        m.tag_moves);
  w.one("envd_node_cache_bytes", "gauge", "Bytes the node's image cache holds on disk.",
        m.cache_bytes);
  if (m.cache_quota)
    w.one("envd_node_cache_quota_bytes", "gauge", "The cache's byte quota.", *m.cache_quota);
  w.one("envd_node_evictions_total", "counter", "Images evicted from the cache by GC.",
        m.evictions);
  w.one("envd_node_gc_runs_total", "counter", "Garbage collections run.", m.gc_runs);
  w.one("envd_node_worker_launches_total", "counter", "Worker replicas started.",
        m.supervisor.launches);
  w.one("envd_node_worker_launch_failures_total", "counter",
        "Worker replicas that failed to start.", m.supervisor.launch_failures);
  w.one("envd_node_worker_kills_total", "counter",
        "Worker replicas killed with SIGKILL after their stop grace period.", m.supervisor.kills);
  w.family("envd_node_worker_restarts_total", "counter",
           "Worker replicas restarted after they exited or failed to start.");
  for (const auto& v : workers)
    if (v.status)
      w.sample("envd_node_worker_restarts_total", v.status->restarts,
               "worker=\"" + label(v.name) + "\"");
  w.family("envd_node_worker_replicas", "gauge", "Worker replicas by state.");
  for (const auto& v : workers) {
    if (!v.status) continue;
    for (ReplicaState state : {ReplicaState::starting, ReplicaState::ready, ReplicaState::stopping,
                               ReplicaState::backoff, ReplicaState::exited}) {
      std::uint64_t n = 0;
      for (const auto& r : v.status->replica_status) n += r.state == state;
      w.sample("envd_node_worker_replicas", n,
               "worker=\"" + label(v.name) + "\",state=\"" + std::string(to_string(state)) + "\"");
    }
  }
  w.family("envd_node_worker_replicas_desired", "gauge", "Worker replicas configured.");
  for (const auto& v : workers)
    w.sample("envd_node_worker_replicas_desired", v.status ? v.status->replicas : 0,
             "worker=\"" + label(v.name) + "\"");
  return w.take();
}

struct StatusServer::Impl {
  StatusSource source;
  std::unique_ptr<httplib::Server> http;
  std::thread thread;
  std::atomic<bool> listen_returned{false};
  int port = 0;
};

StatusServer::StatusServer(std::unique_ptr<Impl> impl) : m_impl(std::move(impl)) {}

StatusServer::~StatusServer() {
  stop();
}

int StatusServer::port() const {
  return m_impl->port;
}

Result<std::unique_ptr<StatusServer>> StatusServer::start(const std::string& host, int port,
                                                          StatusSource source) {
  auto impl = std::make_unique<Impl>();
  impl->source = std::move(source);
  impl->http = std::make_unique<httplib::Server>();
  // Few threads (a scraper and an operator), and idle keep-alive connections let go soon so
  // they do not hold them.
  impl->http->new_task_queue = [] { return new httplib::ThreadPool(4); };
  impl->http->set_keep_alive_timeout(2);
  impl->http->set_tcp_nodelay(true);
  // httplib's default adds SO_REUSEPORT, which lets a second daemon bind the same port and
  // silently share it; SO_REUSEADDR alone still allows a quick restart.
  impl->http->set_socket_options([](int sock) {
    int yes = 1;
    ::setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
  });
  Impl* raw = impl.get();
  auto guarded = [](auto&& body) {
    return [body](const httplib::Request&, httplib::Response& res) {
      try {
        body(res);
      } catch (const std::exception& e) {
        res.status = 500;
        res.set_content(std::string("internal error: ") + e.what() + "\n", "text/plain");
      }
    };
  };
  impl->http->Get("/healthz", guarded([raw](httplib::Response& res) {
                    Health h = raw->source.health ? raw->source.health() : Health{};
                    res.status = h.ok ? 200 : 503;
                    res.set_content((h.ok ? "ok" : "unhealthy") +
                                        (h.detail.empty() ? "" : ": " + h.detail) + "\n",
                                    "text/plain; charset=utf-8");
                  }));
  impl->http->Get("/v1/images", guarded([raw](httplib::Response& res) {
                    auto tracked = raw->source.tracked_images ? raw->source.tracked_images()
                                                              : std::vector<TrackedImage>{};
                    auto stored = raw->source.stored_images ? raw->source.stored_images()
                                                            : std::vector<StoredImage>{};
                    res.set_content(render_images_json(tracked, stored), "application/json");
                  }));
  impl->http->Get("/v1/workers", guarded([raw](httplib::Response& res) {
                    auto workers =
                        raw->source.workers ? raw->source.workers() : std::vector<WorkerView>{};
                    res.set_content(render_workers_json(workers), "application/json");
                  }));
  impl->http->Get(
      "/metrics", guarded([raw](httplib::Response& res) {
        auto workers = raw->source.workers ? raw->source.workers() : std::vector<WorkerView>{};
        NodeMetrics m = raw->source.metrics ? raw->source.metrics() : NodeMetrics{};
        res.set_content(render_metrics(m, workers), "text/plain; version=0.0.4; charset=utf-8");
      }));
  // Anything else: 404 for unknown paths, 405 for other methods on known ones.
  auto not_allowed = [](const httplib::Request& req, httplib::Response& res) {
    bool known = req.path == "/healthz" || req.path == "/v1/images" || req.path == "/v1/workers" ||
                 req.path == "/metrics";
    res.status = known ? 405 : 404;
    if (known) res.set_header("Allow", "GET, HEAD");
    res.set_content(known ? "method not allowed\n" : "not found\n", "text/plain");
  };
  impl->http->Post(".*", not_allowed);
  impl->http->Put(".*", not_allowed);
  impl->http->Delete(".*", not_allowed);
  impl->http->Patch(".*", not_allowed);

  int bound = port == 0 ? impl->http->bind_to_any_port(host)
                        : (impl->http->bind_to_port(host, port) ? port : -1);
  if (bound < 0)
    return Error(ErrorCode::unavailable,
                 "status endpoint: cannot listen on " + host + ":" + std::to_string(port) +
                     " (address in use, or not an address of this machine)");
  impl->port = bound;
  impl->thread = std::thread([raw] {
    raw->http->listen_after_bind();
    raw->listen_returned = true;
  });
  log::info(
      "node", "status endpoint listening",
      {{"address", "http://" + (host.find(':') != std::string::npos ? "[" + host + "]" : host) +
                       ":" + std::to_string(bound)}});
  return std::unique_ptr<StatusServer>(new StatusServer(std::move(impl)));
}

void StatusServer::stop() {
  if (!m_impl || !m_impl->thread.joinable()) return;
  // httplib's stop() does nothing until the listener has marked itself running; wait for that
  // (or for the listener to have given up) so that the stop cannot be lost.
  while (!m_impl->listen_returned && !m_impl->http->is_running()) std::this_thread::yield();
  m_impl->http->stop();
  m_impl->thread.join();
}

}  // namespace envd::node
