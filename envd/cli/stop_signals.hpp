// The stop signals of a service command (`builder serve`, `node serve`).
#pragma once

#include <signal.h>

namespace envd::cli {

// Blocks SIGTERM and SIGINT from construction on, in the calling thread and every thread it
// starts afterwards (construct it before starting any), so that they wait for wait() instead of
// killing the process mid-write; ignores SIGPIPE, since cpp-httplib sends without MSG_NOSIGNAL
// and a client hanging up mid-response must fail that one write with EPIPE, not kill the service.
class StopSignals {
 public:
  StopSignals();
  // Blocks until SIGTERM or SIGINT arrives; returns "SIGTERM" or "SIGINT".
  const char* wait();

 private:
  sigset_t m_set;
};

}  // namespace envd::cli
