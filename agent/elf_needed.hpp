// Reads the dynamic section of an ELF file (what shared libraries it needs and where it asks the
// loader to look for them), with a small reader of our own: no libelf, no running ldd.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include "envd/util/error.hpp"

namespace envd::agent {

enum class ElfClass : std::uint8_t { elf32 = 1, elf64 = 2 };  // values of e_ident[EI_CLASS]

struct ElfDynamic {
  ElfClass elf_class = ElfClass::elf64;
  std::uint16_t machine = 0;             // e_machine (EM_X86_64, EM_AARCH64, ...)
  std::vector<std::string> needed;       // DT_NEEDED, in file order
  std::vector<std::string> search_path;  // DT_RUNPATH split at ':', else DT_RPATH; tokens as stored
};

enum class ElfRead { header_only, dynamic_section };

// Reads `file`'s class and machine and, with ElfRead::dynamic_section, its DT_NEEDED and
// DT_RUNPATH/DT_RPATH. 32- and 64-bit files in the host's byte order. A static executable has
// empty lists. Errors: invalid_argument naming the file (not ELF, truncated, offsets outside the
// file); unimplemented (other byte order); not_found / permission_denied / io from open.
// Thread-safe.
Result<ElfDynamic> read_elf_dynamic(const std::filesystem::path& file,
                                    ElfRead what = ElfRead::dynamic_section);

// True for the GNU C library's own objects (libc, libm, libmvec, libpthread, libdl, librt,
// libutil, libresolv, libanl, libnss_*, glibc's libnsl.so.1, libBrokenLocale, libthread_db,
// libc_malloc_debug and the loader ld-linux* / ld64.so* / ld.so*), which the platform provides.
// libcrypt.so.1 (libxcrypt) and libnsl.so.2 are separate packages and return false.
bool is_platform_library(std::string_view soname);

// Debian's multiarch directory name ("x86_64-linux-gnu") for an ELF class and machine; empty when
// unknown.
std::string_view multiarch_triplet(ElfClass elf_class, std::uint16_t machine);

}  // namespace envd::agent
