// The supervisor with real child processes (/bin/sh scripts that leave traces in files): restart
// with growing backoff, restart policies, rolling that never leaves a worker without a running
// replica, SIGKILL after the grace period; and the status server over HTTP.
#include "envd/node/supervisor.hpp"

#include <doctest/doctest.h>
#include <fcntl.h>
#include <httplib.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "envd/node/status_server.hpp"
#include "support/scratch_dir.hpp"

namespace envd::node {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using test::ScratchDir;

// Polls `done` until it holds or `limit` passed (a bounded wait, not a sleep to synchronise).
bool eventually(const std::function<bool()>& done, std::chrono::milliseconds limit = 30s) {
  auto deadline = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < deadline) {
    if (done()) return true;
    std::this_thread::sleep_for(5ms);
  }
  return done();
}

std::vector<std::string> lines_of(const fs::path& file) {
  std::ifstream in(file);
  std::vector<std::string> out;
  for (std::string line; std::getline(in, line);)
    if (!line.empty()) out.push_back(line);
  return out;
}

// Starts `/bin/sh -c SCRIPT` in `dir`, leader of its own process group, with IMAGE, SLOT and
// WORKER in its environment and its output appended to the log file.
Launcher shell_launcher(const fs::path& dir, std::string script) {
  return [dir, script](const LaunchRequest& req) -> Result<pid_t> {
    std::vector<std::string> env_text{"PATH=/usr/bin:/bin", "IMAGE=" + req.image,
                                      "SLOT=" + std::to_string(req.slot), "WORKER=" + req.worker};
    std::vector<char*> envp;
    for (auto& s : env_text) envp.push_back(s.data());
    envp.push_back(nullptr);
    std::string log = req.log_file.string();
    std::string cwd = dir.string();
    pid_t pid = ::fork();
    if (pid < 0) return Error::from_errno("fork", errno);
    if (pid == 0) {
      ::setpgid(0, 0);
      int out = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
      int in = ::open("/dev/null", O_RDONLY);
      if (out < 0 || in < 0 || ::chdir(cwd.c_str()) != 0) ::_exit(126);
      ::dup2(in, 0);
      ::dup2(out, 1);
      ::dup2(out, 2);
      ::execle("/bin/sh", "sh", "-c", script.c_str(), static_cast<char*>(nullptr), envp.data());
      ::_exit(127);
    }
    return pid;
  };
}

struct Fixture {
  ScratchDir dir;
  std::unique_ptr<Supervisor> supervisor;

  explicit Fixture(const std::string& script, std::chrono::milliseconds backoff_initial = 40ms,
                   std::chrono::milliseconds backoff_max = 2s) {
    SupervisorOptions options;
    options.log_dir = dir / "logs";
    options.launch = shell_launcher(dir.path(), script);
    options.backoff_initial = backoff_initial;
    options.backoff_max = backoff_max;
    auto s = Supervisor::create(std::move(options));
    REQUIRE_MESSAGE(s.has_value(), (s ? "" : s.error().message()));
    supervisor = std::move(*s);
  }

  std::optional<WorkerStatus> worker(const std::string& name) const {
    for (auto& w : supervisor->status())
      if (w.name == name) return w;
    return std::nullopt;
  }
};

WorkerSpec spec(const std::string& name, unsigned replicas, RestartPolicy restart,
                std::chrono::milliseconds ready_after = 30ms) {
  WorkerSpec s;
  s.name = name;
  s.replicas = replicas;
  s.restart = restart;
  s.readiness.after = ready_after;
  s.stop_grace = 10s;
  return s;
}

bool alive(pid_t pid) {
  return pid > 0 && ::kill(pid, 0) == 0;
}

// A replica that records its start and its (SIGTERM-caused) stop in ./events, and says it is up
// by creating ./ready.PID after the start line is written.
const std::string k_cooperative = R"SH(
trap 'echo "stop $$ $IMAGE" >> events; exit 0' TERM
echo "start $$ $IMAGE" >> events
: > ready.$$
sleep 1000 & wait
)SH";

}  // namespace

TEST_CASE("supervisor: a crashing replica is restarted with exponentially growing backoff") {
  Fixture f("date +%s%N >> runs; echo crashing; exit 3", 40ms, 2s);
  f.supervisor->run_worker(spec("crash", 1, RestartPolicy::always, 10s), "img1");
  REQUIRE(eventually([&] { return lines_of(f.dir / "runs").size() >= 5; }));
  auto runs = lines_of(f.dir / "runs");
  std::vector<double> gaps_ms;
  for (std::size_t i = 1; i < 5; ++i)
    gaps_ms.push_back(static_cast<double>(std::stoll(runs[i]) - std::stoll(runs[i - 1])) / 1e6);
  // Delay k is 40ms * 2^k times a jitter factor in [0.5, 1]: at least 20, 40, 80, 160 ms.
  for (std::size_t k = 0; k < gaps_ms.size(); ++k) {
    CAPTURE(k);
    CHECK(gaps_ms[k] >= 20.0 * static_cast<double>(1u << k) - 1.0);
  }
  auto w = f.worker("crash");
  REQUIRE(w.has_value());
  CHECK(w->restarts >= 4);
  REQUIRE(w->replica_status.size() == 1);
  CHECK(w->replica_status[0].last_exit == 3);
  CHECK(f.supervisor->stats().restarts >= 4);
  // The output went to the replica's log file, after the supervisor's line about each start.
  std::string log = test::read_file(f.dir / "logs/crash/0.log");
  CHECK(log.find("--- envd: ") != std::string::npos);
  CHECK(log.find("worker crash replica 0 starting on img1 (restart 1)") != std::string::npos);
  CHECK(log.find("crashing\n") != std::string::npos);
}

TEST_CASE("supervisor: on-failure restarts failures only; never restarts nothing") {
  Fixture f("echo run >> $WORKER.runs; [ $WORKER = clean ] && exit 0; exit 1");
  f.supervisor->run_worker(spec("clean", 1, RestartPolicy::on_failure, 10s), "img");
  f.supervisor->run_worker(spec("failing", 1, RestartPolicy::on_failure, 10s), "img");
  f.supervisor->run_worker(spec("once", 1, RestartPolicy::never, 10s), "img");
  auto state = [&](const std::string& name) {
    auto w = f.worker(name);
    return w && w->replica_status.size() == 1 ? w->replica_status[0] : ReplicaStatus{};
  };
  // "exited" is the supervisor's decision not to restart: it is final.
  REQUIRE(eventually([&] { return state("clean").state == ReplicaState::exited; }));
  REQUIRE(eventually([&] { return state("once").state == ReplicaState::exited; }));
  REQUIRE(eventually([&] { return lines_of(f.dir / "failing.runs").size() >= 3; }));
  CHECK(state("clean").last_exit == 0);
  CHECK(state("clean").restarts == 0);
  CHECK(state("once").last_exit == 1);
  CHECK(state("once").restarts == 0);
  CHECK(lines_of(f.dir / "clean.runs").size() == 1);
  CHECK(lines_of(f.dir / "once.runs").size() == 1);
  CHECK(f.worker("failing")->restarts >= 2);
}

TEST_CASE(
    "supervisor: rolling onto a new image never leaves the worker without a running replica") {
  Fixture f(k_cooperative);
  WorkerSpec s = spec("dask", 2, RestartPolicy::always, 20ms);
  s.readiness.command = {"/bin/sh", "-c",
                         "test -f " + (f.dir / "ready.").string() + "$ENVD_WORKER_PID"};
  s.readiness.interval = 10ms;
  f.supervisor->run_worker(s, "v1");
  REQUIRE(eventually([&] {
    auto w = f.worker("dask");
    return w && w->ready == 2;
  }));
  auto running = [&] {
    auto w = f.worker("dask");
    int n = 0;
    for (auto& r : w->replica_status) n += (r.pid != 0 && r.state != ReplicaState::backoff);
    return n;
  };
  f.supervisor->run_worker(s, "v2");
  bool done = eventually([&] {
    CHECK(running() >= 1);  // sampled while the roll goes on
    auto w = f.worker("dask");
    return w->ready == 2 && !w->rolling && w->replica_status.size() == 2;
  });
  REQUIRE(done);
  auto rolled = f.worker("dask");
  for (auto& r : rolled->replica_status) CHECK(r.image == "v2");
  REQUIRE(eventually([&] { return lines_of(f.dir / "events").size() == 6; }));
  // Replay of the children's own records: after the first start, never zero running.
  auto events = lines_of(f.dir / "events");
  int live = 0;
  int v2_starts = 0;
  int v1_stops = 0;
  for (std::size_t i = 0; i < events.size(); ++i) {
    CAPTURE(events[i]);
    if (events[i].starts_with("start")) {
      ++live;
      v2_starts += events[i].ends_with(" v2");
    } else {
      --live;
      CHECK(events[i].ends_with(" v1"));
      ++v1_stops;
      CHECK(v2_starts >= v1_stops);  // an old replica stops only for a new one that runs
    }
    if (i > 0) CHECK(live >= 1);
  }
  CHECK(live == 2);
  CHECK(f.supervisor->stats().kills == 0);
  f.supervisor->shutdown();
  CHECK(lines_of(f.dir / "events").size() == 8);  // the two v2 replicas stopped by SIGTERM
}

TEST_CASE("supervisor: replicas of an image that never gets ready leave the old ones running") {
  Fixture f(R"SH([ "$IMAGE" = bad ] && exit 1; : > up.$$; sleep 1000 & wait)SH");
  WorkerSpec s = spec("w", 2, RestartPolicy::always, 10ms);
  s.readiness.command = {"/bin/sh", "-c",
                         "test -f " + (f.dir / "up.").string() + "$ENVD_WORKER_PID"};
  s.readiness.interval = 10ms;
  f.supervisor->run_worker(s, "good");
  REQUIRE(eventually([&] { return f.worker("w")->ready == 2; }));
  f.supervisor->run_worker(s, "bad");
  REQUIRE(eventually([&] { return f.worker("w")->restarts >= 4; }));
  auto w = f.worker("w");
  CHECK(w->rolling);
  CHECK(w->ready == 0);
  int good_running = 0;
  for (auto& r : w->replica_status)
    if (r.image == "good") good_running += (r.state == ReplicaState::ready && alive(r.pid));
  CHECK(good_running == 2);
  auto in_use = f.supervisor->images_in_use();
  CHECK(in_use == std::set<std::string>{"bad", "good"});
  // Moving back to the good image settles: the crashing replicas are dropped.
  f.supervisor->run_worker(s, "good");
  REQUIRE(eventually([&] {
    auto x = f.worker("w");
    return x->ready == 2 && x->replica_status.size() == 2;
  }));
  CHECK(f.supervisor->images_in_use() == std::set<std::string>{"good"});
}

TEST_CASE("supervisor: a replica ignoring SIGTERM is killed after the grace period") {
  Fixture f("trap '' TERM; echo $$ > pid; while :; do sleep 1; done");
  WorkerSpec s = spec("stubborn", 1, RestartPolicy::always, 20ms);
  s.stop_grace = 300ms;
  f.supervisor->run_worker(s, "img");
  REQUIRE(eventually([&] { return f.worker("stubborn") && f.worker("stubborn")->ready == 1; }));
  REQUIRE(eventually([&] { return lines_of(f.dir / "pid").size() == 1; }));
  pid_t pid = std::stoi(lines_of(f.dir / "pid")[0]);
  CHECK(alive(pid));
  auto t0 = std::chrono::steady_clock::now();
  f.supervisor->remove_worker("stubborn");
  REQUIRE(eventually([&] { return !f.worker("stubborn").has_value(); }));
  auto elapsed = std::chrono::steady_clock::now() - t0;
  CHECK(elapsed >= 300ms);
  CHECK(f.supervisor->stats().kills == 1);
  CHECK_FALSE(alive(pid));
}

TEST_CASE("supervisor: a replica not ready before the readiness timeout is restarted") {
  Fixture f("echo run >> runs; sleep 1000 & wait");
  WorkerSpec s = spec("slow", 1, RestartPolicy::on_failure, 10ms);
  s.readiness.command = {"/bin/false"};
  s.readiness.interval = 20ms;
  s.readiness.timeout = 200ms;
  f.supervisor->run_worker(s, "img");
  REQUIRE(eventually([&] { return lines_of(f.dir / "runs").size() >= 2; }));
  auto w = f.worker("slow");
  CHECK(w->restarts >= 1);
  CHECK(w->ready == 0);
}

TEST_CASE("supervisor: scaling up and down, and shutdown stops everything") {
  Fixture f("echo $$ >> pids; sleep 1000 & wait");
  f.supervisor->run_worker(spec("w", 1, RestartPolicy::always), "img");
  REQUIRE(eventually([&] { return f.worker("w")->ready == 1; }));
  f.supervisor->run_worker(spec("w", 3, RestartPolicy::always), "img");
  REQUIRE(eventually([&] { return f.worker("w")->ready == 3; }));
  CHECK(f.worker("w")->replica_status.size() == 3);
  REQUIRE(eventually([&] { return lines_of(f.dir / "pids").size() == 3; }));
  f.supervisor->run_worker(spec("w", 1, RestartPolicy::always), "img");
  REQUIRE(eventually([&] { return f.worker("w")->replica_status.size() == 1; }));
  CHECK(f.worker("w")->replica_status[0].slot == 0);  // the highest slots went first
  f.supervisor->shutdown();
  CHECK(f.supervisor->status().empty());
  for (auto& line : lines_of(f.dir / "pids")) CHECK_FALSE(alive(std::stoi(line)));
  f.supervisor->run_worker(spec("w", 1, RestartPolicy::always), "img");  // ignored now
  CHECK(f.supervisor->status().empty());
}

TEST_CASE("supervisor: a launch failure is reported and retried with backoff") {
  SupervisorOptions options;
  ScratchDir dir;
  options.log_dir = dir / "logs";
  int calls = 0;
  options.backoff_initial = 10ms;
  options.launch = [&calls](const LaunchRequest&) -> Result<pid_t> {
    ++calls;
    return Error(ErrorCode::not_found, "command dask: not found in the image");
  };
  auto s = Supervisor::create(std::move(options));
  REQUIRE(s.has_value());
  (*s)->run_worker(spec("w", 1, RestartPolicy::always), "img");
  REQUIRE(eventually([&] { return (*s)->stats().launch_failures >= 3; }));
  auto st = (*s)->status();
  REQUIRE(st.size() == 1);
  CHECK(st[0].replica_status[0].last_error == "command dask: not found in the image");
  (*s)->shutdown();
  CHECK(calls >= 3);
  SupervisorOptions none;
  none.log_dir = dir / "logs2";
  auto bad = Supervisor::create(std::move(none));
  REQUIRE_FALSE(bad.has_value());
  CHECK(bad.error().code() == ErrorCode::invalid_argument);
  CHECK_FALSE(fs::exists(dir / "logs2"));
}

TEST_CASE("status server: health, workers, images and metrics of a live supervisor") {
  Fixture f("echo $$ > pid.$SLOT; sleep 1000 & wait");
  f.supervisor->run_worker(spec("dask", 2, RestartPolicy::always), "sha256:aaaa");
  REQUIRE(eventually([&] { return f.worker("dask")->ready == 2; }));
  bool healthy = true;
  StatusSource source;
  source.health = [&] { return Health{healthy, healthy ? "1 of 1 images ready" : "stopping"}; };
  source.tracked_images = [] {
    return std::vector<TrackedImage>{{"127.0.0.1:5000/team/env:v1",
                                      "sha256:aaaa",
                                      "ready",
                                      "",
                                      "envd",
                                      {"dask", "other"},
                                      1700000000}};
  };
  source.stored_images = [] {
    return std::vector<StoredImage>{{"sha256:aaaa",
                                     {"127.0.0.1:5000/team/env:v1"},
                                     1234,
                                     true,
                                     1700000000,
                                     1700000100,
                                     "overlay"}};
  };
  source.workers = [&] {
    std::vector<WorkerView> out{
        {"dask", "127.0.0.1:5000/team/env:v1", {"dask", "worker"}, "", f.worker("dask")},
        {"other", "127.0.0.1:5000/team/env:v1", {"x"}, "pull failed (retrying): nope", {}}};
    return out;
  };
  source.metrics = [&] {
    NodeMetrics m;
    m.pulls = 3;
    m.bytes_fetched = 4096;
    m.cache_bytes = 8192;
    m.cache_quota = 1 << 20;
    m.evictions = 1;
    m.supervisor = f.supervisor->stats();
    return m;
  };
  auto server = StatusServer::start("127.0.0.1", 0, source);
  REQUIRE_MESSAGE(server.has_value(), (server ? "" : server.error().message()));
  httplib::Client http("127.0.0.1", (*server)->port());

  auto health = http.Get("/healthz");
  REQUIRE(health);
  CHECK(health->status == 200);
  CHECK(health->body == "ok: 1 of 1 images ready\n");
  healthy = false;
  CHECK(http.Get("/healthz")->status == 503);

  auto workers = http.Get("/v1/workers");
  REQUIRE(workers);
  CHECK(workers->status == 200);
  CHECK(workers->get_header_value("Content-Type") == "application/json");
  auto doc = nlohmann::json::parse(workers->body);
  REQUIRE(doc["workers"].size() == 2);
  const auto& dask = doc["workers"][0];
  CHECK(dask["name"] == "dask");
  CHECK(dask["manifest_digest"] == "sha256:aaaa");
  CHECK(dask["replicas_desired"] == 2);
  CHECK(dask["replicas_ready"] == 2);
  CHECK(dask["waiting"].is_null());
  REQUIRE(dask["replicas"].size() == 2);
  for (const auto& r : dask["replicas"]) {
    CHECK(r["state"] == "ready");
    CHECK(alive(r["pid"].get<pid_t>()));
    CHECK(r["started_at"].get<std::string>().ends_with("Z"));
    CHECK(r["log_file"].get<std::string>().ends_with(".log"));
  }
  CHECK(doc["workers"][1]["waiting"] == "pull failed (retrying): nope");
  CHECK(doc["workers"][1]["replicas"].empty());

  auto images = nlohmann::json::parse(http.Get("/v1/images")->body);
  CHECK(images["tracked"][0]["state"] == "ready");
  CHECK(images["tracked"][0]["updated_at"] == "2023-11-14T22:13:20Z");
  CHECK(images["tracked"][0]["workers"] == nlohmann::json::array({"dask", "other"}));
  CHECK(images["stored"][0]["size_bytes"] == 1234);
  CHECK(images["stored"][0]["in_use"] == true);
  CHECK(images["stored"][0]["assembly"] == "overlay");

  auto metrics = http.Get("/metrics");
  REQUIRE(metrics);
  CHECK(metrics->get_header_value("Content-Type").starts_with("text/plain; version=0.0.4"));
  std::istringstream lines(metrics->body);
  std::map<std::string, std::string> samples;
  for (std::string line; std::getline(lines, line);) {
    if (line.starts_with("#")) {
      CHECK((line.starts_with("# HELP envd_node_") || line.starts_with("# TYPE envd_node_")));
      continue;
    }
    auto space = line.rfind(' ');
    REQUIRE(space != std::string::npos);
    samples[line.substr(0, space)] = line.substr(space + 1);
  }
  CHECK(samples["envd_node_pulls_total"] == "3");
  CHECK(samples["envd_node_bytes_fetched_total"] == "4096");
  CHECK(samples["envd_node_cache_bytes"] == "8192");
  CHECK(samples["envd_node_cache_quota_bytes"] == "1048576");
  CHECK(samples["envd_node_evictions_total"] == "1");
  CHECK(samples["envd_node_worker_launches_total"] == "2");
  CHECK(samples["envd_node_worker_restarts_total{worker=\"dask\"}"] == "0");
  CHECK(samples["envd_node_worker_replicas{worker=\"dask\",state=\"ready\"}"] == "2");
  CHECK(samples["envd_node_worker_replicas_desired{worker=\"other\"}"] == "0");

  CHECK(http.Get("/v2/")->status == 404);
  CHECK(http.Post("/v1/workers", "", "text/plain")->status == 405);
  // The address is taken now: a second server there fails with a clear error.
  auto second = StatusServer::start("127.0.0.1", (*server)->port(), source);
  REQUIRE_FALSE(second.has_value());
  CHECK(second.error().code() == ErrorCode::unavailable);
  CHECK(second.error().message().find("127.0.0.1:" + std::to_string((*server)->port())) !=
        std::string::npos);
  (*server)->stop();
  (*server)->stop();  // idempotent
  CHECK_FALSE(http.Get("/healthz"));
}

}  // namespace envd::node
