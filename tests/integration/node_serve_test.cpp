// `envd node serve` end to end: a real `envd builder serve` child, images pushed with `envd push
// --builder`, node daemons as child processes. A moved tag rolls the workers onto the new
// environment with a worker always running (sampled through /v1/workers and replayed from the
// workers' own records); two daemons pulling at once, each with 8 workers on one image, fetch each
// blob once per daemon (counted by a proxy in front of the builder); bad configs are refused.
#include <doctest/doctest.h>
#include <fcntl.h>
#include <httplib.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <functional>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <regex>
#include <set>
#include <sstream>
#include <thread>

#include "support/builder_serve.hpp"
#include "support/child_process.hpp"
#include "support/python_prefix.hpp"
#include "support/run_command.hpp"
#include "support/scratch_dir.hpp"

namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using envd::test::run_command;
using envd::test::ScratchDir;
using envd::test::write_file;
using json = nlohmann::json;
using Env = std::map<std::string, std::string>;

// Polls `done` until it holds or `limit` passed (a bounded wait, not a sleep to synchronise).
bool eventually(const std::function<bool()>& done, std::chrono::milliseconds limit = 90s) {
  auto deadline = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < deadline) {
    if (done()) return true;
    std::this_thread::sleep_for(20ms);
  }
  return done();
}

std::vector<std::string> lines_of(const fs::path& file) {
  std::istringstream in(fs::exists(file) ? envd::test::read_file(file) : "");
  std::vector<std::string> out;
  for (std::string line; std::getline(in, line);)
    if (!line.empty()) out.push_back(line);
  return out;
}

// `envd node serve ARGS` as a child: the constructor waits for its "listening" line and reads the
// status port from it; stop() sends SIGTERM and returns the exit code.
class NodeServe : public envd::test::ChildProcess {
 public:
  NodeServe(const std::vector<std::string>& args, const Env& env, const fs::path& log)
      : ChildProcess(argv_of(args), env, log, "envd node listening on "), m_port(loopback_port()) {}

  int port() const { return m_port; }

  json get(const std::string& path) const {
    if (!m_http) m_http = std::make_unique<httplib::Client>("127.0.0.1", m_port);
    auto res = m_http->Get(path);
    INFO("GET " << path << ": " << (res ? "" : httplib::to_string(res.error())));
    REQUIRE(res);
    REQUIRE(res->status == 200);
    return json::parse(res->body);
  }
  std::string metrics() const {
    httplib::Client http("127.0.0.1", m_port);
    auto res = http.Get("/metrics");
    REQUIRE(res);
    return res->body;
  }
  // The worker named `name` in /v1/workers; null before the daemon lists it.
  json worker(const std::string& name) const {
    json doc = get("/v1/workers");
    for (const auto& w : doc["workers"])
      if (w["name"] == name) return w;
    return nullptr;
  }

 private:
  static std::vector<std::string> argv_of(const std::vector<std::string>& args) {
    std::vector<std::string> argv = {envd::test::envd_binary(), "node", "serve"};
    argv.insert(argv.end(), args.begin(), args.end());
    return argv;
  }
  int m_port;
  mutable std::unique_ptr<httplib::Client> m_http;  // one kept-alive connection
};

// The value of one sample line ("name{labels} value") in Prometheus text.
std::string metric(const std::string& text, const std::string& sample) {
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);)
    if (line.starts_with(sample + " ")) return line.substr(sample.size() + 1);
  return "";
}

// Replicas of worker `w` (a /v1/workers entry) that are ready, and how many run `digest`.
int ready_count(const json& w, const std::string& digest = "") {
  int n = 0;
  if (!w.is_object()) return 0;
  for (const auto& r : w["replicas"])
    n += r["state"] == "ready" && (digest.empty() || r["manifest_digest"] == digest);
  return n;
}

// A Python-looking prefix whose bin/worker records its start and SIGTERM-caused stop, with the
// VERSION of the environment it runs in (read at the prefix's absolute path, so from the image),
// in OUT/events, then says "ready" on stdout (its log file).
struct Scene {
  ScratchDir dir;
  Env env;
  std::unique_ptr<envd::test::Serve> builder;

  Scene() {
    env = {{"ENVD_HOME", (dir / "home").string()}, {"ENVD_CONFIG", "/dev/null"}};
    write_file(dir / "env/bin/python3", "#!/bin/sh\necho python\n");
    fs::permissions(dir / "env/bin/python3", fs::perms(0755));
    write_file(dir / "env/lib/python3.11/os.py", "# os\n");
    envd::test::write_pip_packages(dir / "env", "pkg", 3);
    std::string events = (dir / "out/events").string();
    std::string version = (dir / "env/VERSION").string();
    write_file(dir / "env/bin/worker",
               "#!/bin/sh\n"
               "v=$(cat " +
                   version +
                   ")\n"
                   "trap 'echo \"stop $$ $v\" >> " +
                   events +
                   "; exit 0' TERM\n"
                   "echo \"start $$ $v\" >> " +
                   events +
                   "\n"
                   "echo \"greeting $GREETING\"\n"
                   "echo ready\n"
                   "sleep 1000 & wait\n");
    fs::permissions(dir / "env/bin/worker", fs::perms(0755));
    fs::create_directories(dir / "out");
    set_version("v1");
    builder = std::make_unique<envd::test::Serve>(
        std::vector<std::string>{"--listen", "127.0.0.1:0", "--data",
                                 (dir / "home/builder").string()},
        env, dir / "builder.log");
  }

  void set_version(const std::string& v) { write_file(dir / "env/VERSION", v + "\n"); }

  // Pushes the prefix as team/env:latest through the builder's envd API; the manifest digest.
  std::string push() {
    auto r = run_command({envd::test::envd_binary(), "push", "--prefix", (dir / "env").string(),
                          "--no-src", "--name", "team/env:latest", "--builder",
                          "http://127.0.0.1:" + std::to_string(builder->port()), "--json"},
                         env);
    INFO(r.err);
    REQUIRE(r.exit_code == 0);
    return envd::test::last_json_line(r.out)["manifest_digest"].get<std::string>();
  }

  // A worker entry of a node config; ready once "ready" follows the last start line in its log.
  static std::string worker_yaml(const std::string& name, const std::string& image, int replicas) {
    return "  - name: " + name + "\n    image: " + image + "\n    command: [worker]\n" +
           "    replicas: " + std::to_string(replicas) + "\n    stop_grace_period: 10s\n" +
           "    environment:\n      GREETING: hello from " + name + "\n" +
           "    readiness:\n      after: 50ms\n      interval: 50ms\n      command: [sh, -c, "
           "'awk \"/^--- envd: /{r=0} /^ready$/{r=1} END{exit !r}\" \"$ENVD_WORKER_LOG\"']\n";
  }
};

// Replays OUT/events: after the first start, at least one worker runs at every point; returns
// the live workers at the end by version.
std::map<std::string, int> replay(const std::vector<std::string>& events) {
  std::map<std::string, int> live;
  int total = 0;
  for (std::size_t i = 0; i < events.size(); ++i) {
    CAPTURE(events[i]);
    std::istringstream in(events[i]);
    std::string what, pid, version;
    in >> what >> pid >> version;
    int delta = what == "start" ? 1 : -1;
    live[version] += delta;
    total += delta;
    CHECK(total >= 1);
  }
  return live;
}

// A proxy in front of the builder that counts blob GETs by digest (what each node downloads).
class CountingProxy {
 public:
  // With `plain_oci`, /envd/ answers 404 as a registry that is no envd builder would.
  enum class Api { envd, plain_oci };
  explicit CountingProxy(int upstream, Api api = Api::envd) : m_upstream(upstream) {
    m_server.new_task_queue = [] { return new httplib::ThreadPool(48); };
    auto forward = [this, api](const httplib::Request& req, httplib::Response& res) {
      if (api == Api::plain_oci && req.path.starts_with("/envd/")) {
        res.status = 404;
        res.set_content(R"({"errors":[{"code":"NOT_FOUND","message":"no route"}]})",
                        "application/json");
        return;
      }
      static const std::regex blob("^/v2/.+/blobs/(sha256:[0-9a-f]{64})$");
      std::smatch m;
      if (req.method == "GET" && std::regex_match(req.path, m, blob)) {
        std::lock_guard lock(m_mutex);
        ++m_blob_gets[m[1]];
      }
      httplib::Client up("127.0.0.1", m_upstream);
      up.set_read_timeout(120, 0);
      httplib::Headers headers;
      for (const auto& [k, v] : req.headers)
        if (k != "Host" && !k.starts_with("REMOTE_") && !k.starts_with("LOCAL_"))
          headers.emplace(k, v);
      auto r = req.method == "HEAD" ? up.Head(req.target.c_str(), headers)
                                    : up.Get(req.target.c_str(), headers);
      if (!r) {
        res.status = 502;
        return;
      }
      res.status = r->status;
      for (const auto& [k, v] : r->headers)
        if (k != "Content-Length" && k != "Transfer-Encoding" && k != "Connection" &&
            k != "Content-Type")
          res.set_header(k, v);
      res.set_content(r->body, r->get_header_value("Content-Type"));
      if (req.method == "HEAD")
        res.set_header("Content-Length", r->get_header_value("Content-Length"));
    };
    m_server.Get(".*", forward);
    m_port = m_server.bind_to_any_port("127.0.0.1");
    REQUIRE(m_port > 0);
    m_thread = std::thread([this] { m_server.listen_after_bind(); });
    REQUIRE(eventually([&] { return m_server.is_running(); }, 10s));
  }
  ~CountingProxy() {
    m_server.stop();
    m_thread.join();
  }
  int port() const { return m_port; }
  std::map<std::string, int> blob_gets() {
    std::lock_guard lock(m_mutex);
    return m_blob_gets;
  }

 private:
  int m_upstream;
  httplib::Server m_server;
  std::thread m_thread;
  int m_port = 0;
  std::mutex m_mutex;
  std::map<std::string, int> m_blob_gets;
};

// The blob digests (config and layers) of a manifest in the builder.
std::set<std::string> blobs_of(int builder_port, const std::string& manifest_digest) {
  httplib::Client http("127.0.0.1", builder_port);
  auto r = http.Get("/v2/team/env/manifests/" + manifest_digest,
                    {{"Accept", "application/vnd.oci.image.manifest.v1+json"}});
  REQUIRE(r);
  REQUIRE(r->status == 200);
  auto m = json::parse(r->body);
  std::set<std::string> out{m["config"]["digest"].get<std::string>()};
  for (const auto& l : m["layers"]) out.insert(l["digest"].get<std::string>());
  return out;
}

}  // namespace

TEST_CASE(
    "node serve: a moved tag rolls the workers onto the new environment, one always running") {
  Scene s;
  std::string v1 = s.push();
  std::string host = "127.0.0.1:" + std::to_string(s.builder->port());
  write_file(s.dir / "node.yaml",
             "data_dir: " + (s.dir / "node").string() +
                 "\nlisten: 127.0.0.1:0\ncache_quota: 1\ncache_grace: 0s\nworkers:\n" +
                 Scene::worker_yaml("dask", host + "/team/env:latest", 2) +
                 Scene::worker_yaml("ghost", host + "/team/nope:latest", 1));
  NodeServe node({"--config", (s.dir / "node.yaml").string()}, s.env, s.dir / "node.log");
  INFO("node log: " << node.log());
  REQUIRE(eventually([&] { return ready_count(node.worker("dask"), v1) == 2; }));
  auto first = node.worker("dask");
  CHECK(first["image"] == host + "/team/env:latest");
  CHECK(first["manifest_digest"] == v1);
  for (const auto& r : first["replicas"]) {
    CHECK(r["log_file"].get<std::string>().starts_with((s.dir / "node/logs/dask/").string()));
    std::string log = envd::test::read_file(r["log_file"].get<std::string>());
    CHECK(log.find("ready\n") != std::string::npos);
    CHECK(log.find("greeting hello from dask\n") != std::string::npos);  // the config's env
  }
  // An image that does not exist leaves its worker waiting, saying why; the others run.
  REQUIRE(eventually([&] { return !node.worker("ghost").value("waiting", json()).is_null(); }));
  auto images = node.get("/v1/images");
  for (const auto& t : images["tracked"]) {
    if (t["reference"] == host + "/team/env:latest") {
      CHECK(t["state"] == "ready");
      CHECK(t["watch"] == "envd");
    }
  }

  // Move the tag: the new image is pulled, then the workers roll; sampled all along.
  s.set_version("v2");
  std::string v2 = s.push();
  REQUIRE(v2 != v1);
  int samples = 0;
  bool rolled = eventually([&] {
    auto w = node.worker("dask");
    ++samples;
    CHECK_MESSAGE(ready_count(w) >= 1, w.dump());
    return ready_count(w, v2) == 2 && w["replicas"].size() == 2 && !w["rolling"].get<bool>();
  });
  REQUIRE(rolled);
  CHECK(samples > 1);
  // The workers' own records: the new ones run v2's files, the old ones stopped after them.
  REQUIRE(eventually([&] { return lines_of(s.dir / "out/events").size() == 6; }));
  auto live = replay(lines_of(s.dir / "out/events"));
  CHECK(live["v1"] == 0);
  CHECK(live["v2"] == 2);

  // The old image is unpinned once no replica runs it, and GC (quota 1 byte) evicts it; the
  // image in use stays whatever the quota.
  REQUIRE(eventually([&] {
    return node.get("/v1/images")["stored"].size() == 1 &&
           metric(node.metrics(), "envd_node_evictions_total") == "1";
  }));
  auto stored = node.get("/v1/images")["stored"][0];
  CHECK(stored["manifest_digest"] == v2);
  CHECK(stored["in_use"] == true);
  CHECK(stored["assembly"] == "overlay");
  // The workers ran from an overlay of the layers, mounted in the daemon's own namespace: on the
  // host the environment's rootfs is an empty mount point; the evicted one's mount went with it.
  const fs::path env_dir = s.dir / "node/envs" / v2.substr(std::string("sha256:").size());
  CHECK(fs::exists(env_dir / "overlay.json"));
  CHECK(fs::is_directory(env_dir / "rootfs"));
  CHECK(fs::is_empty(env_dir / "rootfs"));
  CHECK(!fs::exists(s.dir / "node/envs" / v1.substr(std::string("sha256:").size())));
  auto m = node.metrics();
  CHECK(metric(m, "envd_node_cache_quota_bytes") == "1");
  CHECK(metric(m, "envd_node_tag_moves_total") == "1");
  CHECK(metric(m, "envd_node_pulls_total") == "2");
  CHECK(std::stoll(metric(m, "envd_node_bytes_fetched_total")) > 0);
  CHECK(std::stoll(metric(m, "envd_node_cache_bytes")) > 0);
  CHECK(metric(m, "envd_node_worker_restarts_total{worker=\"dask\"}") == "0");
  CHECK(metric(m, "envd_node_worker_replicas{worker=\"dask\",state=\"ready\"}") == "2");
  CHECK(std::stoll(metric(m, "envd_node_pull_failures_total")) >= 1);  // the ghost
  httplib::Client http("127.0.0.1", node.port());
  CHECK(http.Get("/healthz")->status == 200);

  // SIGTERM: the workers get SIGTERM (their trap records the stop), the daemon exits 0.
  CHECK(node.stop() == 0);
  auto events = lines_of(s.dir / "out/events");
  CHECK(events.size() == 8);
  std::map<std::string, int> after;
  for (const auto& e : events) after[e.substr(0, e.find(' '))]++;
  CHECK(after["stop"] == 4);
}

TEST_CASE("node serve: two daemons with 8 workers each on one image download each blob once") {
  Scene s;
  std::string v1 = s.push();
  CountingProxy proxy(s.builder->port());
  std::string image = "127.0.0.1:" + std::to_string(proxy.port()) + "/team/env:latest";
  std::vector<std::unique_ptr<NodeServe>> nodes;
  for (const char* name : {"a", "b"}) {
    std::string yaml = "data_dir: " + (s.dir / ("node-" + std::string(name))).string() +
                       "\nlisten: 127.0.0.1:0\nworkers:\n";
    for (int i = 0; i < 8; ++i) yaml += Scene::worker_yaml("w" + std::to_string(i), image, 1);
    write_file(s.dir / (std::string(name) + ".yaml"), yaml);
  }
  // Both start at once and pull the same image concurrently.
  for (const char* name : {"a", "b"})
    nodes.push_back(std::make_unique<NodeServe>(
        std::vector<std::string>{"--config", (s.dir / (std::string(name) + ".yaml")).string()},
        s.env, s.dir / (std::string(name) + ".log")));
  auto all_on = [&](const std::string& digest) {
    for (const auto& node : nodes) {
      auto workers = node->get("/v1/workers")["workers"];
      if (workers.size() != 8) return false;
      for (const auto& w : workers)
        if (ready_count(w, digest) != 1 || w["replicas"].size() != 1) return false;
    }
    return true;
  };
  INFO("a: " << nodes[0]->log() << "\nb: " << nodes[1]->log());
  REQUIRE(eventually([&] { return all_on(v1); }));
  auto v1_blobs = blobs_of(s.builder->port(), v1);
  auto gets = proxy.blob_gets();
  for (const auto& b : v1_blobs) {
    CAPTURE(b);
    CHECK(gets[b] == 2);  // once per daemon, not once per worker
  }
  CHECK(gets.size() == v1_blobs.size());

  // A new image for all 16 workers: again one download per blob per daemon, only new blobs.
  s.set_version("v2");
  std::string v2 = s.push();
  REQUIRE(eventually([&] { return all_on(v2); }));
  auto v2_blobs = blobs_of(s.builder->port(), v2);
  gets = proxy.blob_gets();
  for (const auto& b : v2_blobs) {
    CAPTURE(b);
    CHECK(gets[b] == 2);
  }
  std::size_t fresh = 0;
  for (const auto& b : v2_blobs) fresh += !v1_blobs.count(b);
  CHECK(fresh >= 1);
  CHECK(fresh < v2_blobs.size());  // unchanged layers were not fetched again
  for (auto& node : nodes) {
    CHECK(metric(node->metrics(), "envd_node_tag_moves_total") == "1");
    CHECK(metric(node->metrics(), "envd_node_pulls_total") == "2");
    CHECK(node->stop() == 0);
  }
  nodes.clear();
  s.builder->stop();  // ends the proxied long polls before the proxy stops
}

TEST_CASE("node serve: tags on a registry without the envd watch are polled") {
  Scene s;
  std::string v1 = s.push();
  CountingProxy registry(s.builder->port(), CountingProxy::Api::plain_oci);
  std::string image = "127.0.0.1:" + std::to_string(registry.port()) + "/team/env:latest";
  write_file(s.dir / "node.yaml", "data_dir: " + (s.dir / "node").string() +
                                      "\nlisten: 127.0.0.1:0\npoll_interval: 200ms\nworkers:\n" +
                                      Scene::worker_yaml("w", image, 1));
  NodeServe node({"--config", (s.dir / "node.yaml").string()}, s.env, s.dir / "node.log");
  INFO("node log: " << node.log());
  REQUIRE(eventually([&] { return ready_count(node.worker("w"), v1) == 1; }));
  REQUIRE(eventually([&] { return node.get("/v1/images")["tracked"][0]["watch"] == "poll"; }));
  s.set_version("v2");
  std::string v2 = s.push();
  REQUIRE(eventually([&] {
    auto w = node.worker("w");
    return ready_count(w, v2) == 1 && w["replicas"].size() == 1;
  }));
  CHECK(metric(node.metrics(), "envd_node_tag_moves_total") == "1");
  REQUIRE(eventually([&] { return lines_of(s.dir / "out/events").size() == 3; }));
  auto live = replay(lines_of(s.dir / "out/events"));
  CHECK(live["v1"] == 0);
  CHECK(live["v2"] == 1);
  CHECK(node.stop() == 0);
}

TEST_CASE("node serve: bad configs and flags are refused, and nothing is created") {
  ScratchDir dir;
  Env env = {{"ENVD_HOME", (dir / "home").string()}};
  write_file(dir / "bad.yaml", "data_dir: " + (dir / "data").string() +
                                   "\nworkers:\n  - name: w\n    image: 127.0.0.1:1/a/b\n"
                                   "    command: [x]\n    replicas: many\n");
  auto before = envd::test::tree_listing(dir.path());
  auto r = run_command(
      {envd::test::envd_binary(), "node", "serve", "--config", (dir / "bad.yaml").string()}, env);
  CHECK(r.exit_code == 1);
  CHECK(r.err.find((dir / "bad.yaml").string() +
                   ":6: workers[0].replicas: must be an integer from 0 to 1000") !=
        std::string::npos);
  CHECK(envd::test::tree_listing(dir.path()) == before);

  auto flag = run_command({envd::test::envd_binary(), "node", "serve", "--listen", "nowhere",
                           "--data", (dir / "data").string()},
                          env);
  CHECK(flag.exit_code == 2);
  CHECK(flag.err.find("--listen: listen address \"nowhere\": expected HOST:PORT") !=
        std::string::npos);
  CHECK(envd::test::tree_listing(dir.path()) == before);

  // The status address is taken: refused before the data dir exists.
  httplib::Server taken;
  int port = taken.bind_to_any_port("127.0.0.1");
  REQUIRE(port > 0);
  auto busy = run_command({envd::test::envd_binary(), "node", "serve", "--listen",
                           "127.0.0.1:" + std::to_string(port), "--data", (dir / "data").string()},
                          env);
  CHECK(busy.exit_code == 1);
  CHECK(busy.err.find("cannot listen on 127.0.0.1:" + std::to_string(port)) != std::string::npos);
  CHECK(envd::test::tree_listing(dir.path()) == before);
  auto missing = run_command(
      {envd::test::envd_binary(), "node", "serve", "--config", (dir / "absent.yaml").string()},
      env);
  CHECK(missing.exit_code == 2);
}
