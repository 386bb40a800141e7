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
//   (SIGKILL) when it or its parent dies. Someone must pass signals on to the command's process
//   group, whose pid bwrap reports on --info-fd: the caller itself (run_foreground) or a
//   forwarding child (spawn_background).
// - The signals passed on: SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2; one that
//   arrives before bwrap reported the pid is sent once it has.

// Runs the plan in the foreground and waits: returns the command's exit code (128+N when killed
// by signal N; through bwrap, whose status is the command's). The forwarded signals received
// meanwhile (except those the caller ignores, e.g. under nohup) go to the command's process group.
// With bwrap this process is bwrap's parent and forwards itself (no extra process): should it
// die (SIGKILL), or the calling thread exit, bwrap and the command are killed too.
// One call at a time per process (they share the signal handlers; a second caller waits).
// Errors: not_found (command or bwrap missing), io (fork/exec failed).
Result<int> run_foreground(const LaunchPlan& plan);

// Starts the plan in its own process group with stdin from /dev/null and stdout and stderr
// appended to `log_file` (created). Returns the child's pid once the program was exec'd; the
// caller reaps it, and signals it (or its process group) as the command's own. With isolation
// none the child is the command itself. With bwrap it is a small forwarding process (a fork of
// the caller that only makes async-signal-safe calls; it does not depend on the calling thread
// living on) running bwrap in a process group of its own: the forwarded signals sent to it go to
// the command's process group, it exits with bwrap's status, and SIGKILL to it kills bwrap and so
// the command. Thread-safe. Errors: io naming the log file or the command, not_found.
Result<pid_t> spawn_background(const LaunchPlan& plan, const std::filesystem::path& log_file);

}  // namespace envd::node
