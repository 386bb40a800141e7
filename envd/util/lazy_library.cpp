#include "envd/util/lazy_library.hpp"

#include <dlfcn.h>

#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <string>

namespace envd {
namespace {

[[noreturn]] void cannot_load(const char* soname, const char* why) {
  std::fprintf(stderr, "envd: cannot load %s: %s\n", soname, why != nullptr ? why : "unknown");
  std::_Exit(127);
}

}  // namespace

void* lazy_symbol(const char* soname, const char* symbol) noexcept {
  static std::mutex mutex;
  static std::map<std::string, void*> handles;
  void* handle = nullptr;
  {
    std::lock_guard guard(mutex);
    auto& h = handles[soname];
    if (h == nullptr) {
      h = ::dlopen(soname, RTLD_NOW | RTLD_LOCAL);
      if (h == nullptr) cannot_load(soname, ::dlerror());
    }
    handle = h;
  }
  // dlsym on the library's own handle finds its definition, never the forwarding one.
  void* address = ::dlsym(handle, symbol);
  if (address == nullptr) cannot_load(soname, ::dlerror());
  return address;
}

}  // namespace envd
