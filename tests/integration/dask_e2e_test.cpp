// End to end with real Dask (issue 4's first test): a venv on Debian's python3 with
// --system-site-packages and an editable package from a git source tree is pushed to a real
// `envd builder serve`; `envd node serve` runs a Dask worker in that image (the venv hidden on
// the host meanwhile, so only the image can provide it) against a real scheduler on 127.0.0.1; a
// Dask client's task reports importlib.metadata's distributions, the editable package's __file__
// and its SHA-256 from the worker: all equal to what the laptop side sees.
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
#include <nlohmann/json.hpp>
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

bool eventually(const std::function<bool()>& done, std::chrono::milliseconds limit) {
  auto deadline = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < deadline) {
    if (done()) return true;
    std::this_thread::sleep_for(50ms);
  }
  return done();
}

using Child = envd::test::ChildProcess;

// What the laptop and the worker report: every distribution (name -> version), the editable
// package's file and its SHA-256, and sys.prefix.
const char* k_probe = R"PY(
def probe():
    import hashlib, importlib.metadata as md, sys
    import devpkg
    dists = {}
    for d in md.distributions():
        dists.setdefault(d.metadata["Name"], d.version)
    with open(devpkg.__file__, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    return {"dists": dists, "file": devpkg.__file__, "sha256": digest, "prefix": sys.prefix,
            "answer": devpkg.answer()}
)PY";

// Renames a directory away for the scope (the node must then get it from the image).
struct Hidden {
  fs::path path;
  explicit Hidden(fs::path p) : path(std::move(p)) { fs::rename(path, hidden()); }
  ~Hidden() { fs::rename(hidden(), path); }
  fs::path hidden() const { return fs::path(path.string() + ".hidden"); }
};

}  // namespace

TEST_CASE("dask: a worker started by envd node serve runs exactly the laptop's environment") {
  ScratchDir dir;
  const fs::path venv = dir / "venv";
  const fs::path src = dir / "src";
  auto ok = [](const envd::test::CommandResult& r, const std::string& what) {
    INFO(what << ": " << r.err << r.out);
    REQUIRE(r.exit_code == 0);
  };

  // The laptop: a venv on Debian's python3 seeing its dask, plus an editable package from a git
  // source tree (installed by pip offline: PEP 660 with Debian's setuptools).
  ok(run_command({"/usr/bin/python3", "-m", "venv", "--system-site-packages", venv.string()}),
     "venv");
  write_file(src / "pyproject.toml",
             "[build-system]\nrequires = [\"setuptools>=61\"]\n"
             "build-backend = \"setuptools.build_meta\"\n\n"
             "[project]\nname = \"devpkg\"\nversion = \"0.3.1\"\n");
  write_file(src / "devpkg/__init__.py", "def answer():\n    return 42\n");
  Env git_env = {{"GIT_AUTHOR_NAME", "t"},
                 {"GIT_AUTHOR_EMAIL", "t@example.com"},
                 {"GIT_COMMITTER_NAME", "t"},
                 {"GIT_COMMITTER_EMAIL", "t@example.com"},
                 {"HOME", dir.path().string()}};
  ok(run_command({"git", "init", "-q", src.string()}, git_env), "git init");
  ok(run_command({venv.string() + "/bin/pip", "install", "-q", "--no-index", "--no-build-isolation",
                  "--no-deps", "-e", src.string()}),
     "pip install -e");
  ok(run_command({"git", "-C", src.string(), "add", "-A"}, git_env), "git add");
  ok(run_command({"git", "-C", src.string(), "commit", "-q", "-m", "src"}, git_env), "git commit");

  std::string probe_main = std::string(k_probe) + "import json\nprint(json.dumps(probe()))\n";
  auto local = run_command({venv.string() + "/bin/python", "-c", probe_main}, {}, src);
  ok(local, "local probe");
  json expected = json::parse(local.out);
  REQUIRE(expected["file"] == (src / "devpkg/__init__.py").string());
  REQUIRE(expected["dists"].contains("distributed"));
  REQUIRE(expected["dists"]["devpkg"] == "0.3.1");

  // Snapshot -> builder.
  Env env = {{"ENVD_HOME", (dir / "home").string()}, {"ENVD_CONFIG", "/dev/null"}};
  envd::test::Serve builder({"--listen", "127.0.0.1:0", "--data", (dir / "home/builder").string()},
                            env, dir / "builder.log");
  std::string host = "127.0.0.1:" + std::to_string(builder.port());
  auto push = run_command(
      {envd::test::envd_binary(), "push", "--prefix", venv.string(), "--src", src.string(),
       "--name", "team/dask:latest", "--builder", "http://" + host, "--json"},
      env);
  ok(push, "push");
  std::string digest = envd::test::last_json_line(push.out)["manifest_digest"];

  // The scheduler, on a port it picks, announced in its scheduler file.
  Child scheduler(
      {"/usr/bin/python3", "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port",
       "0", "--no-dashboard", "--scheduler-file", (dir / "scheduler.json").string()},
      {}, dir / "scheduler.log");
  std::string address;
  REQUIRE_MESSAGE(eventually(
                      [&] {
                        if (!fs::exists(dir / "scheduler.json")) return false;
                        auto j = json::parse(envd::test::read_file(dir / "scheduler.json"), nullptr,
                                             false);
                        if (j.is_discarded() || !j.contains("address")) return false;
                        address = j["address"];
                        return true;
                      },
                      120s),
                  scheduler.log());
  REQUIRE(address.starts_with("tcp://127.0.0.1:"));

  // The laptop's venv is gone from this host: the worker can only see it through the image.
  Hidden hidden(venv);
  REQUIRE_FALSE(fs::exists(venv));
  fs::create_directories(dir / "dask-space");
  write_file(dir / "node.yaml",
             "data_dir: " + (dir / "node").string() +
                 "\nlisten: 127.0.0.1:0\nworkers:\n"
                 "  - name: dask\n    image: " +
                 host +
                 "/team/dask:latest\n"
                 "    command: [python, -m, distributed.cli.dask_worker, \"" +
                 address +
                 "\", "
                 "--nthreads, \"1\", --no-dashboard, --local-directory, \"" +
                 (dir / "dask-space").string() +
                 "\"]\n"
                 "    replicas: 1\n    stop_grace_period: 20s\n"
                 "    readiness:\n      after: 100ms\n      interval: 200ms\n      timeout: 5m\n"
                 "      command: [sh, -c, 'awk \"/^--- envd: /{r=0} /Registered to/{r=1} "
                 "END{exit !r}\" \"$ENVD_WORKER_LOG\"']\n");
  Child node({envd::test::envd_binary(), "node", "serve", "--config", (dir / "node.yaml").string()},
             env, dir / "node.log", "envd node listening on http://127.0.0.1:");
  int status_port = node.loopback_port();
  INFO("node log: " << node.log());
  httplib::Client status("127.0.0.1", status_port);
  json worker;
  REQUIRE(eventually(
      [&] {
        auto r = status.Get("/v1/workers");
        if (!r || r->status != 200) return false;
        auto workers = json::parse(r->body)["workers"];
        if (workers.empty()) return false;
        worker = workers[0];
        return worker["replicas_ready"] == 1;
      },
      300s));
  CHECK(worker["manifest_digest"] == digest);
  std::string worker_log = worker["replicas"][0]["log_file"];
  INFO("worker log: " << envd::test::read_file(worker_log));

  // A Dask client (Debian's python3) runs the probe as a task on that worker.
  std::string client = std::string(k_probe) +
                       "import json, sys\nfrom distributed import Client\n"
                       "with Client(sys.argv[1], timeout=120) as c:\n"
                       "    print(json.dumps(c.submit(probe, pure=False).result(timeout=300)))\n";
  auto remote = run_command({"/usr/bin/python3", "-c", client, address}, {}, dir.path());
  ok(remote, "dask client");
  json got = envd::test::last_json_line(remote.out);
  CHECK(got["file"] == expected["file"]);
  CHECK(got["sha256"] == expected["sha256"]);
  CHECK(got["prefix"] == venv.string());
  CHECK(got["answer"] == 42);
  CHECK(got["dists"].size() == expected["dists"].size());
  for (const auto& [name, version] : expected["dists"].items()) {
    CAPTURE(name);
    CHECK(got["dists"].value(name, json()) == version);
  }
  CHECK(got["dists"] == expected["dists"]);

  CHECK(node.stop() == 0);
  CHECK(scheduler.stop() >= 0);
}
