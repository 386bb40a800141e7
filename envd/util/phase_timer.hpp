// Logs how long a phase took, at debug level, when it goes out of scope:
//   ts=.. level=debug component=snapshot msg="phase done" phase=walk ms=123.4
#pragma once

#include <chrono>
#include <cstdio>
#include <string>

#include "envd/util/log.hpp"

namespace envd::log {

class PhaseTimer {
 public:
  PhaseTimer(std::string component, std::string phase)
      : m_component(std::move(component)),
        m_phase(std::move(phase)),
        m_start(std::chrono::steady_clock::now()) {}
  ~PhaseTimer() {
    if (!enabled(Level::debug)) return;
    double ms =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - m_start)
            .count();
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.1f", ms);
    debug(m_component, "phase done", {{"phase", m_phase}, {"ms", buf}});
  }
  PhaseTimer(const PhaseTimer&) = delete;
  PhaseTimer& operator=(const PhaseTimer&) = delete;

 private:
  std::string m_component;
  std::string m_phase;
  std::chrono::steady_clock::time_point m_start;
};

}  // namespace envd::log
