// Starting a planned command (LaunchPlan) as a child process: in the foreground with its exit
// code passed through, or in the background with its output in a log file, for supervision.
#pragma once

#include <sys/types.h>

#include <filesystem>

#include "envd/node/sandbox.hpp"
#include "envd/util/error.hpp"

namespace envd::node {

// Signals and process groups (both functions):
// - The command runs in a session of its own (no controlling terminal), so a terminal's ^C or a
//   kill of the caller's process group reaches the caller, not the command directly.
// - bubblewrap forwards no signal and, with --die-with-parent, takes the command down with it
//   (SIGKILL) when it dies. So with isolation bwrap the child is a small forwarding process (a
//   fork of the caller that only makes async-signal-safe calls) running bwrap in a process group
//   of its own: SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 sent to it (or to its
//   process group) go to the command's process group (pid from bwrap's --info-fd), and it exits
//   with bwrap's status, which is the command's. SIGKILL to it kills bwrap and so the command.
// - With isolation none the child is the command itself.
// Either way the pid returned can be signalled and reaped like the command's own.

// Runs the plan in the foreground and waits: returns the command's exit code (128+N when killed
// by signal N). SIGINT and SIGTERM received meanwhile are forwarded to the child. One call at a
// time per process (they share the signal handlers; a second caller waits).
// Errors: not_found (command or bwrap missing), io (fork/exec failed).
Result<int> run_foreground(const LaunchPlan& plan);

// Starts the plan in its own process group with stdin from /dev/null and stdout and stderr
// appended to `log_file` (created). Returns the child's pid once the program was exec'd; the
// caller reaps it. Thread-safe. Errors: io naming the log file or the command, not_found.
Result<pid_t> spawn_background(const LaunchPlan& plan, const std::filesystem::path& log_file);

}  // namespace envd::node
