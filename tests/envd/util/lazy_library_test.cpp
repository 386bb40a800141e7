// lazy_symbol: a library opened on first use; a missing library or symbol ends the process the
// way the dynamic loader does at start (a message naming it, exit code 127).
#include "envd/util/lazy_library.hpp"

#include <doctest/doctest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <string>

namespace {

struct Exit {
  int code = -1;
  std::string err;
};

// Runs lazy_symbol(soname, symbol) in a child; its exit code (0 when it returned) and stderr.
Exit in_child(const char* soname, const char* symbol) {
  int fds[2];
  REQUIRE(::pipe(fds) == 0);
  pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    ::dup2(fds[1], 2);
    ::close(fds[0]);
    (void)envd::lazy_symbol(soname, symbol);
    ::_exit(0);
  }
  ::close(fds[1]);
  Exit out;
  char buf[512];
  ssize_t n;
  while ((n = ::read(fds[0], buf, sizeof buf)) > 0)
    out.err.append(buf, static_cast<std::size_t>(n));
  ::close(fds[0]);
  int status = 0;
  ::waitpid(pid, &status, 0);
  out.code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return out;
}

}  // namespace

TEST_CASE("lazy_symbol finds a function of a library opened on first use") {
  void* address = envd::lazy_symbol("libm.so.6", "cos");
  REQUIRE(address != nullptr);
  auto* cosine = reinterpret_cast<double (*)(double)>(address);
  CHECK(cosine(0.5) == std::cos(0.5));
  // The same library again: the handle is kept, the address the same.
  CHECK(envd::lazy_symbol("libm.so.6", "cos") == address);
}

TEST_CASE("a missing library or symbol exits 127 naming it, as the dynamic loader would") {
  auto library = in_child("libenvd-no-such-library.so.0", "f");
  CHECK(library.code == 127);
  CHECK(library.err.find("envd: cannot load libenvd-no-such-library.so.0") != std::string::npos);
  auto symbol = in_child("libm.so.6", "envd_no_such_function");
  CHECK(symbol.code == 127);
  CHECK(symbol.err.find("envd_no_such_function") != std::string::npos);
  CHECK(in_child("libm.so.6", "sin").code == 0);
}
