// Warnings collected while scanning: each names the file it is about. Thread-safe.
#pragma once

#include <mutex>
#include <string>
#include <vector>

namespace envd::agent {

struct Diagnostic {
  std::string path;     // the file or directory the message is about (absolute when known)
  std::string message;  // what is wrong and what was done about it
};

class Diagnostics {
 public:
  // Records a warning and logs it (level warn, component "scan").
  void warn(std::string path, std::string message);
  std::vector<Diagnostic> list() const;
  std::size_t size() const;

 private:
  mutable std::mutex m_mutex;
  std::vector<Diagnostic> m_items;
};

}  // namespace envd::agent
