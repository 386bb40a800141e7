// Child processes for planned commands (see process.hpp): everything a child needs is prepared
// before fork, because after fork in a multi-threaded daemon a child may only make
// async-signal-safe calls until it execs; with bwrap in the background the child stays a signal
// forwarder. In the foreground the caller forwards, and starts the child with posix_spawn.
#include "envd/node/process.hpp"

#include <fcntl.h>
#include <linux/close_range.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <sys/signalfd.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <csignal>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <string>
#include <vector>

#include "envd/util/unique_fd.hpp"

namespace envd::node {
namespace {

constexpr std::array<int, 6> k_forwarded = {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2};
constexpr int k_exec_failed = 127;

// A descriptor moved to 3 or above (so that setting up 0-2 in the child cannot clobber it).
Result<UniqueFd> high_fd(int fd, std::string_view what) {
  if (fd < 0) return unexpected(Error::from_errno(what, errno));
  if (fd > 2) return UniqueFd(fd);
  int moved = ::fcntl(fd, F_DUPFD_CLOEXEC, 3);
  int err = errno;
  ::close(fd);
  if (moved < 0) return unexpected(Error::from_errno(what, err));
  return UniqueFd(moved);
}

Result<std::pair<UniqueFd, UniqueFd>> make_pipe(std::string_view what) {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) return unexpected(Error::from_errno(what, errno));
  ENVD_TRY(auto r, high_fd(fds[0], what));
  ENVD_TRY(auto w, high_fd(fds[1], what));
  return std::pair{std::move(r), std::move(w)};
}

// Who passes signals on to a command under bwrap (which forwards none): a forwarding child
// process between the caller and bwrap (forked: it runs no program of its own), or the caller
// itself, which then starts bwrap (or the command) with posix_spawn.
enum class Forwarder { child, caller };

// The descriptor a posix_spawn'ed bwrap gets its --info-fd pipe on; all above it are closed.
constexpr int k_spawned_info_fd = 3;

struct Prepared {
  std::vector<std::string> args;
  std::vector<std::string> env;
  std::vector<char*> argv;
  std::vector<char*> envp;
  std::string cwd;
  bool bwrap = false;                // the command runs under bwrap (--info-fd added)
  bool forward = false;              // bwrap and Forwarder::child: the child stays as forwarder
  UniqueFd stdin_fd;                 // -1: inherit
  UniqueFd output_fd;                // -1: inherit (stdout and stderr)
  UniqueFd info_read, info_write;    // bwrap --info-fd
  UniqueFd error_read, error_write;  // forked child: exec failure's errno, else EOF at exec
};

Result<Prepared> prepare(const LaunchPlan& plan, Forwarder forwarder) {
  if (plan.argv.empty() || plan.argv.front().empty())
    return unexpected(ErrorCode::invalid_argument, "empty command line");
  Prepared p;
  p.bwrap = plan.isolation == Isolation::bwrap;
  p.forward = p.bwrap && forwarder == Forwarder::child;
  p.args = plan.argv;
  p.env = plan.env;
  p.cwd = plan.cwd.empty() ? "/" : plan.cwd.string();
  if (forwarder == Forwarder::child) {  // posix_spawn reports exec failures itself
    ENVD_TRY(auto err_pipe, make_pipe("pipe"));
    p.error_read = std::move(err_pipe.first);
    p.error_write = std::move(err_pipe.second);
  }
  if (p.bwrap) {
    ENVD_TRY(auto info_pipe, make_pipe("pipe"));
    p.info_read = std::move(info_pipe.first);
    p.info_write = std::move(info_pipe.second);
    if (forwarder == Forwarder::caller && p.info_write.get() == k_spawned_info_fd) {
      // Moved off the number it is dup2'ed to in the child: dup2 onto itself would keep it
      // close-on-exec.
      ENVD_TRY(
          p.info_write,
          high_fd(::fcntl(p.info_write.get(), F_DUPFD_CLOEXEC, k_spawned_info_fd + 1), "pipe"));
    }
    const int announced = forwarder == Forwarder::caller ? k_spawned_info_fd : p.info_write.get();
    // After bwrap itself, which may follow a wrapper such as setpriv.
    auto bwrap = std::find_if(p.args.begin(), p.args.end(), [](const std::string& a) {
      return std::filesystem::path(a).filename() == "bwrap";
    });
    if (bwrap == p.args.end())
      return unexpected(ErrorCode::invalid_argument,
                        "isolation bwrap but no bwrap in the command line");
    p.args.insert(bwrap + 1, {"--info-fd", std::to_string(announced)});
  }
  for (auto& a : p.args) p.argv.push_back(a.data());
  p.argv.push_back(nullptr);
  for (auto& e : p.env) p.envp.push_back(e.data());
  p.envp.push_back(nullptr);
  return p;
}

// ---- in the child: async-signal-safe only ------------------------------------------------------

[[noreturn]] void fail_child(const Prepared& p, int err) {
  ssize_t unused = ::write(p.error_write.get(), &err, sizeof err);
  (void)unused;
  ::_exit(k_exec_failed);
}

// The caller's handlers must not run in the child, nor its ignored signals stay ignored in the
// command. The child starts with every signal blocked (see start()).
void reset_dispositions() {
  struct sigaction dfl {};
  dfl.sa_handler = SIG_DFL;
  for (int sig = 1; sig < NSIG; ++sig)
    if (sig != SIGKILL && sig != SIGSTOP) ::sigaction(sig, &dfl, nullptr);
}

void reset_signals() {
  reset_dispositions();
  sigset_t none;
  ::sigemptyset(&none);
  ::sigprocmask(SIG_SETMASK, &none, nullptr);
}

// Closes every descriptor from 3 up except `keep` (sorted), so that nothing the caller holds (a
// listening socket, a database) lives on in a long-running forwarder.
void close_fds_except(std::initializer_list<int> keep) {
  unsigned low = 3;
  auto close_span = [](unsigned from, unsigned to) {
    if (::close_range(from, to, 0) != 0)
      for (unsigned fd = from; fd <= to && fd < 65536; ++fd) ::close(static_cast<int>(fd));
  };
  for (int fd : keep) {
    if (fd < 0 || static_cast<unsigned>(fd) < low) continue;
    if (static_cast<unsigned>(fd) > low) close_span(low, static_cast<unsigned>(fd) - 1);
    low = static_cast<unsigned>(fd) + 1;
  }
  close_span(low, ~0U);
}

void setup_stdio(const Prepared& p) {
  if (p.stdin_fd.valid() && ::dup2(p.stdin_fd.get(), 0) < 0) fail_child(p, errno);
  if (p.output_fd.valid() && (::dup2(p.output_fd.get(), 1) < 0 || ::dup2(p.output_fd.get(), 2) < 0))
    fail_child(p, errno);
}

[[noreturn]] void exec_child(const Prepared& p) {
  reset_signals();
  ::close_range(3, ~0U, CLOSE_RANGE_CLOEXEC);  // the caller's descriptors stay out of the command
  if (p.info_write.valid() && ::fcntl(p.info_write.get(), F_SETFD, 0) < 0) fail_child(p, errno);
  if (::chdir(p.cwd.c_str()) != 0) fail_child(p, errno);
  ::execve(p.argv[0], p.argv.data(), p.envp.data());
  fail_child(p, errno);
}

// "child-pid": N from bwrap's --info-fd JSON, or 0 while not (yet) there. Async-signal-safe.
pid_t parse_child_pid(const char* buf, std::size_t len) {
  static constexpr char key[] = "\"child-pid\"";
  for (std::size_t i = 0; i + sizeof key - 1 <= len; ++i) {
    if (std::memcmp(buf + i, key, sizeof key - 1) != 0) continue;
    std::size_t j = i + sizeof key - 1;
    while (j < len && (buf[j] == ' ' || buf[j] == ':' || buf[j] == '\n' || buf[j] == '\t')) ++j;
    pid_t pid = 0;
    std::size_t digits = 0;
    while (j < len && buf[j] >= '0' && buf[j] <= '9') {
      pid = pid * 10 + (buf[j++] - '0');
      ++digits;
    }
    return digits > 0 && j < len ? pid : 0;  // a number still being written is not complete
  }
  return 0;
}

void send_to_command(pid_t command, int sig) {
  if (::kill(-command, sig) != 0) ::kill(command, sig);  // before its setsid: the process only
}

// The command's pid as bwrap reports it on --info-fd, and the signals that arrived before it was
// known, sent once it is. No allocation: used in the forwarding child too.
class CommandSignals {
 public:
  explicit CommandSignals(pid_t command = 0) : m_command(command) {}

  // Reads what `fd` (readable) holds; false once it is at its end (or the buffer full).
  bool read_info(int fd) {
    ssize_t n = ::read(fd, m_info + m_len, sizeof m_info - m_len);
    if (n < 0) return errno == EINTR || errno == EAGAIN;
    m_len += static_cast<std::size_t>(n);
    if (m_command == 0 && (m_command = parse_child_pid(m_info, m_len)) != 0) {
      for (int sig = 1; sig < 64; ++sig)
        if ((m_pending & (std::uint64_t{1} << sig)) != 0) send_to_command(m_command, sig);
      m_pending = 0;
    }
    return n > 0 && m_len < sizeof m_info;
  }

  void send(int sig) {
    if (m_command != 0)
      send_to_command(m_command, sig);
    else if (sig > 0 && sig < 64)
      m_pending |= std::uint64_t{1} << sig;
  }

 private:
  pid_t m_command = 0;
  std::uint64_t m_pending = 0;  // bit N: signal N arrived before the command's pid was known
  char m_info[1024];
  std::size_t m_len = 0;
};

// The forwarding process: runs bwrap in its own process group, passes signals on to the command's
// process group, exits with bwrap's status.
[[noreturn]] void forwarder(const Prepared& p) {
  reset_dispositions();
  int keep[] = {p.info_read.get(), p.info_write.get(), p.error_write.get()};
  std::sort(std::begin(keep), std::end(keep));
  close_fds_except({keep[0], keep[1], keep[2]});
  sigset_t mask;
  ::sigemptyset(&mask);
  for (int sig : k_forwarded) ::sigaddset(&mask, sig);
  ::sigaddset(&mask, SIGCHLD);
  ::sigprocmask(SIG_SETMASK, &mask, nullptr);
  int sfd = ::signalfd(-1, &mask, SFD_CLOEXEC);
  if (sfd < 0) fail_child(p, errno);
  pid_t bwrap = ::_Fork();
  if (bwrap < 0) fail_child(p, errno);
  if (bwrap == 0) {
    if (::setpgid(0, 0) != 0) fail_child(p, errno);
    exec_child(p);
  }
  ::close(p.info_write.get());
  ::close(p.error_write.get());
  CommandSignals command;
  bool info_open = true;
  for (;;) {
    struct pollfd fds[2] = {{sfd, POLLIN, 0}, {p.info_read.get(), POLLIN, 0}};
    if (::poll(fds, info_open ? 2 : 1, -1) < 0 && errno != EINTR) ::_exit(k_exec_failed);
    if (info_open && (fds[1].revents & (POLLIN | POLLHUP)) != 0)
      info_open = command.read_info(p.info_read.get());
    if ((fds[0].revents & POLLIN) == 0) continue;
    struct signalfd_siginfo si {};
    if (::read(sfd, &si, sizeof si) != static_cast<ssize_t>(sizeof si)) continue;
    const int sig = static_cast<int>(si.ssi_signo);
    if (sig == SIGCHLD) {
      int status = 0;
      if (::waitpid(bwrap, &status, WNOHANG) == bwrap) {
        if (WIFEXITED(status)) ::_exit(WEXITSTATUS(status));
        ::_exit(128 + WTERMSIG(status));
      }
      continue;
    }
    if (std::find(k_forwarded.begin(), k_forwarded.end(), sig) != k_forwarded.end())
      command.send(sig);
  }
}

// ---- in the parent ------------------------------------------------------------------------------

// For spawn_background: forks the child (the command itself, or the forwarder for bwrap) in a
// session of its own and waits until it exec'd. Returns its pid.
Result<pid_t> start(Prepared& p) {
  sigset_t all, previous;
  ::sigfillset(&all);
  ::pthread_sigmask(SIG_SETMASK, &all, &previous);
  pid_t pid = ::fork();
  int fork_errno = errno;
  if (pid != 0) ::pthread_sigmask(SIG_SETMASK, &previous, nullptr);
  if (pid < 0) return unexpected(Error::from_errno("fork", fork_errno));
  if (pid == 0) {
    ::setsid();
    setup_stdio(p);
    if (p.forward) forwarder(p);
    exec_child(p);
  }
  p.error_write = UniqueFd();
  p.info_write = UniqueFd();
  p.info_read = UniqueFd();
  int err = 0;
  ssize_t n;
  while ((n = ::read(p.error_read.get(), &err, sizeof err)) < 0 && errno == EINTR) {
  }
  if (n == static_cast<ssize_t>(sizeof err)) {
    while (::waitpid(pid, nullptr, 0) < 0 && errno == EINTR) {
    }
    return unexpected(Error::from_errno("start " + p.args.front(), err));
  }
  return pid;
}

// Starts the command (or bwrap) for run_foreground with posix_spawn, which glibc does with
// clone(CLONE_VM | CLONE_VFORK): no copy of this large process's page tables, and none of the
// copy-on-write faults a fork costs it afterwards (several ms on slow VMs). Same child set-up as
// exec_child: a session of its own, default dispositions and an empty mask, descriptors from 3 up
// closed but the --info-fd pipe, the plan's directory. Returns its pid once exec'd.
Result<pid_t> spawn_command(Prepared& p) {
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  sigset_t all, none;
  ::sigfillset(&all);
  ::sigemptyset(&none);
  int rc = posix_spawnattr_setflags(
      &attr, POSIX_SPAWN_SETSID | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK);
  if (rc == 0) rc = posix_spawnattr_setsigdefault(&attr, &all);
  if (rc == 0) rc = posix_spawnattr_setsigmask(&attr, &none);
  int first_closed = 3;
  if (rc == 0 && p.info_write.valid()) {
    rc = posix_spawn_file_actions_adddup2(&actions, p.info_write.get(), k_spawned_info_fd);
    first_closed = k_spawned_info_fd + 1;
  }
  if (rc == 0) rc = posix_spawn_file_actions_addclosefrom_np(&actions, first_closed);
  if (rc == 0) rc = posix_spawn_file_actions_addchdir_np(&actions, p.cwd.c_str());
  pid_t pid = 0;
  if (rc == 0) rc = ::posix_spawn(&pid, p.argv[0], &actions, &attr, p.argv.data(), p.envp.data());
  posix_spawn_file_actions_destroy(&actions);
  posix_spawnattr_destroy(&attr);
  p.info_write = UniqueFd();
  if (rc != 0) return unexpected(Error::from_errno("start " + p.args.front(), rc));
  return pid;
}

int exit_code_of(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return 255;
}

std::mutex g_foreground_mutex;
int g_signal_pipe = -1;  // write end, for the handler

extern "C" void on_forwarded_signal(int sig) {
  int saved = errno;
  unsigned char byte = static_cast<unsigned char>(sig);
  ssize_t unused = ::write(g_signal_pipe, &byte, 1);
  (void)unused;
  errno = saved;
}

}  // namespace

Result<int> run_foreground(const LaunchPlan& plan) {
  std::lock_guard lock(g_foreground_mutex);
  ENVD_TRY(Prepared p, prepare(plan, Forwarder::caller));
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC | O_NONBLOCK) != 0)
    return unexpected(Error::from_errno("pipe", errno));
  UniqueFd signal_read(fds[0]), signal_write(fds[1]);
  g_signal_pipe = signal_write.get();
  // Signals the caller ignores (nohup, a background job's SIGINT) stay ignored: not forwarded.
  std::array<struct sigaction, k_forwarded.size()> previous{};
  std::array<bool, k_forwarded.size()> caught{};
  struct sigaction sa {};
  sa.sa_handler = on_forwarded_signal;
  sa.sa_flags = SA_RESTART;
  ::sigemptyset(&sa.sa_mask);
  for (std::size_t i = 0; i < k_forwarded.size(); ++i) {
    ::sigaction(k_forwarded[i], nullptr, &previous[i]);
    caught[i] = previous[i].sa_handler != SIG_IGN;
    if (caught[i]) ::sigaction(k_forwarded[i], &sa, nullptr);
  }
  auto restore = [&] {
    for (std::size_t i = 0; i < k_forwarded.size(); ++i)
      if (caught[i]) ::sigaction(k_forwarded[i], &previous[i], nullptr);
    g_signal_pipe = -1;
  };

  auto pid = spawn_command(p);
  if (!pid) {
    restore();
    return unexpected(pid.error());
  }
  // With bwrap this process is bwrap's parent: the command's pid comes from --info-fd.
  CommandSignals command(p.bwrap ? 0 : *pid);
  UniqueFd pidfd(static_cast<int>(::syscall(SYS_pidfd_open, *pid, 0)));
  int status = 0;
  for (;;) {
    struct pollfd pfds[3] = {{signal_read.get(), POLLIN, 0},
                             {pidfd.valid() ? pidfd.get() : -1, POLLIN, 0},
                             {p.info_read.valid() ? p.info_read.get() : -1, POLLIN, 0}};
    // Without pidfds (Linux < 5.3) the child is polled for every 20 ms.
    ::poll(pfds, 3, pidfd.valid() ? -1 : 20);
    if ((pfds[2].revents & (POLLIN | POLLHUP | POLLERR)) != 0 && !command.read_info(pfds[2].fd))
      p.info_read = UniqueFd();
    unsigned char sig = 0;
    while (::read(signal_read.get(), &sig, 1) == 1) command.send(sig);
    pid_t done = ::waitpid(*pid, &status, WNOHANG);
    if (done == *pid) break;
    if (done < 0 && errno != EINTR) {
      restore();
      return unexpected(Error::from_errno("wait for " + p.args.front(), errno));
    }
  }
  restore();
  return exit_code_of(status);
}

Result<pid_t> spawn_background(const LaunchPlan& plan, const std::filesystem::path& log_file) {
  ENVD_TRY(Prepared p, prepare(plan, Forwarder::child));
  ENVD_TRY(p.stdin_fd, high_fd(::open("/dev/null", O_RDONLY | O_CLOEXEC), "open /dev/null"));
  ENVD_TRY(p.output_fd,
           high_fd(::open(log_file.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644),
                   "open log file " + log_file.string()));
  return start(p);
}

}  // namespace envd::node
