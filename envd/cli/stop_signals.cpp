#include "envd/cli/stop_signals.hpp"

#include <pthread.h>

namespace envd::cli {

StopSignals::StopSignals() {
  sigemptyset(&m_set);
  sigaddset(&m_set, SIGTERM);
  sigaddset(&m_set, SIGINT);
  pthread_sigmask(SIG_BLOCK, &m_set, nullptr);
  ::signal(SIGPIPE, SIG_IGN);
}

const char* StopSignals::wait() {
  int signal = 0;
  sigwait(&m_set, &signal);
  return signal == SIGTERM ? "SIGTERM" : "SIGINT";
}

}  // namespace envd::cli
