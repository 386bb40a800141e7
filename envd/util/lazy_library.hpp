// Loading a shared library when one of its functions is first called instead of when envd starts:
// every envd command otherwise pays for loading and relocating libraries (and what they bring in)
// that only some commands use. On these VMs, where each first touch of a page traps to the
// hypervisor, libgit2 and libarchive with their dependencies cost about 10 ms of every start
// (tests/bench/README.md). For each such library a generated file (packaging/gen-lazy-stubs.sh)
// defines the functions envd calls, with the library's own signatures, each forwarding through
// ENVD_LAZY_FORWARD; the envd executable then does not link the library at all.
#pragma once

namespace envd {

// The address of `symbol` in the shared library `soname` (e.g. "libgit2.so.1.5"), opened on first
// use (RTLD_NOW | RTLD_LOCAL) and kept. When either cannot be loaded, prints
// "envd: cannot load SONAME: REASON" and exits with 127, as the dynamic loader does for a library
// missing at start. Thread-safe.
void* lazy_symbol(const char* soname, const char* symbol) noexcept;

}  // namespace envd

// In a function with the signature of `name`: calls the library's `name` with the arguments.
#define ENVD_LAZY_FORWARD(soname, name, ...)                                   \
  static const auto envd_lazy_fn =                                             \
      reinterpret_cast<decltype(&::name)>(::envd::lazy_symbol(soname, #name)); \
  return envd_lazy_fn(__VA_ARGS__)
