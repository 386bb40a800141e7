// A reader of ELF program headers and the dynamic section, enough to follow DT_NEEDED the way
// ld.so does. It goes through the program headers (PT_DYNAMIC, PT_LOAD), not the section headers,
// because that is what the loader uses and stripped files may lack section headers.
// Spec: https://refspecs.linuxfoundation.org/elf/gabi4+/ch5.dynamic.html
#include "agent/elf_needed.hpp"
#include "envd/util/unique_fd.hpp"

#include <elf.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <optional>

namespace envd::agent {
namespace {

namespace fs = std::filesystem;

using Fd = envd::UniqueFd;

bool read_at(int fd, std::uint64_t offset, void* buf, std::size_t size) {
  auto* out = static_cast<char*>(buf);
  while (size > 0) {
    ssize_t n = ::pread(fd, out, size, static_cast<off_t>(offset));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    out += n;
    offset += static_cast<std::uint64_t>(n);
    size -= static_cast<std::size_t>(n);
  }
  return true;
}

Error bad_elf(const fs::path& file, std::string_view why) {
  return Error(ErrorCode::invalid_argument, file.string() + ": " + std::string(why));
}

template <class Ehdr, class Phdr, class Dyn>
Result<ElfDynamic> read_dynamic(int fd, std::uint64_t file_size, const fs::path& file) {
  Ehdr eh{};
  if (!read_at(fd, 0, &eh, sizeof eh)) return bad_elf(file, "truncated ELF header");
  ElfDynamic out;
  out.elf_class = eh.e_ident[EI_CLASS] == ELFCLASS32 ? ElfClass::elf32 : ElfClass::elf64;
  out.machine = eh.e_machine;
  if (eh.e_phnum == 0) return out;
  // Bounds first: every offset below comes from the file and is checked before it is used.
  if (eh.e_phentsize != sizeof(Phdr) || eh.e_phoff > file_size ||
      std::uint64_t{eh.e_phnum} * sizeof(Phdr) > file_size - eh.e_phoff)
    return bad_elf(file, "bad program header table");
  std::vector<Phdr> phdrs(eh.e_phnum);
  if (!read_at(fd, eh.e_phoff, phdrs.data(), phdrs.size() * sizeof(Phdr)))
    return bad_elf(file, "truncated program header table");
  auto dyn_it = std::find_if(phdrs.begin(), phdrs.end(),
                             [](const Phdr& p) { return p.p_type == PT_DYNAMIC; });
  if (dyn_it == phdrs.end()) return out;  // statically linked: needs nothing
  if (dyn_it->p_offset > file_size || dyn_it->p_filesz > file_size - dyn_it->p_offset)
    return bad_elf(file, "PT_DYNAMIC outside the file");
  std::vector<Dyn> dyns(dyn_it->p_filesz / sizeof(Dyn));
  if (!read_at(fd, dyn_it->p_offset, dyns.data(), dyns.size() * sizeof(Dyn)))
    return bad_elf(file, "truncated dynamic section");

  std::uint64_t strtab_addr = 0, strtab_size = 0;
  std::vector<std::uint64_t> needed, runpath, rpath;
  for (const Dyn& d : dyns) {
    if (d.d_tag == DT_NULL) break;
    if (d.d_tag == DT_STRTAB) strtab_addr = d.d_un.d_ptr;
    if (d.d_tag == DT_STRSZ) strtab_size = d.d_un.d_val;
    if (d.d_tag == DT_NEEDED) needed.push_back(d.d_un.d_val);
    if (d.d_tag == DT_RUNPATH) runpath.push_back(d.d_un.d_val);
    if (d.d_tag == DT_RPATH) rpath.push_back(d.d_un.d_val);
  }
  if (needed.empty() && runpath.empty() && rpath.empty()) return out;
  // DT_STRTAB is a virtual address; the PT_LOAD segment containing it maps it to a file offset.
  std::uint64_t strtab_offset = 0;
  bool mapped = false;
  for (const Phdr& p : phdrs) {
    if (p.p_type == PT_LOAD && strtab_addr >= p.p_vaddr && strtab_addr - p.p_vaddr < p.p_filesz) {
      strtab_offset = p.p_offset + (strtab_addr - p.p_vaddr);
      mapped = true;
      break;
    }
  }
  if (!mapped || strtab_offset > file_size || strtab_size > file_size - strtab_offset)
    return bad_elf(file, "dynamic string table outside the file");
  std::string strtab(strtab_size, '\0');
  if (!read_at(fd, strtab_offset, strtab.data(), strtab.size()))
    return bad_elf(file, "truncated dynamic string table");
  auto string_at = [&](std::uint64_t off) -> std::optional<std::string> {
    if (off >= strtab.size()) return std::nullopt;
    auto end = strtab.find('\0', off);
    if (end == std::string::npos) return std::nullopt;
    return strtab.substr(off, end - off);
  };
  for (auto off : needed) {
    auto s = string_at(off);
    if (!s) return bad_elf(file, "DT_NEEDED outside the string table");
    out.needed.push_back(std::move(*s));
  }
  // ld.so ignores DT_RPATH when DT_RUNPATH is present (ld.so(8), "Rpath token expansion").
  for (auto off : runpath.empty() ? rpath : runpath) {
    auto s = string_at(off);
    if (!s) return bad_elf(file, "DT_RUNPATH outside the string table");
    std::string_view rest = *s;
    while (!rest.empty()) {
      auto colon = rest.find(':');
      if (colon != 0) out.search_path.emplace_back(rest.substr(0, colon));
      if (colon == std::string_view::npos) break;
      rest.remove_prefix(colon + 1);
    }
  }
  return out;
}

}  // namespace

Result<ElfDynamic> read_elf_dynamic(const std::filesystem::path& file, ElfRead what) {
  Fd fd(::open(file.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) return Error::from_errno("open " + file.string(), errno);
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return Error::from_errno("stat " + file.string(), errno);
  unsigned char ident[EI_NIDENT] = {};
  if (!read_at(fd.get(), 0, ident, sizeof ident) || std::memcmp(ident, ELFMAG, SELFMAG) != 0)
    return bad_elf(file, "not an ELF file");
  const unsigned char native =
      std::endian::native == std::endian::little ? ELFDATA2LSB : ELFDATA2MSB;
  // Only the host's byte order: the prefix being scanned is one this machine runs.
  if (ident[EI_DATA] != native)
    return Error(ErrorCode::unimplemented, file.string() + ": ELF byte order differs from host");
  const auto size = static_cast<std::uint64_t>(st.st_size);
  if (ident[EI_CLASS] == ELFCLASS64) {
    if (what == ElfRead::header_only) {
      Elf64_Ehdr eh{};
      if (!read_at(fd.get(), 0, &eh, sizeof eh)) return bad_elf(file, "truncated ELF header");
      return ElfDynamic{ElfClass::elf64, eh.e_machine, {}, {}};
    }
    return read_dynamic<Elf64_Ehdr, Elf64_Phdr, Elf64_Dyn>(fd.get(), size, file);
  }
  if (ident[EI_CLASS] == ELFCLASS32) {
    if (what == ElfRead::header_only) {
      Elf32_Ehdr eh{};
      if (!read_at(fd.get(), 0, &eh, sizeof eh)) return bad_elf(file, "truncated ELF header");
      return ElfDynamic{ElfClass::elf32, eh.e_machine, {}, {}};
    }
    return read_dynamic<Elf32_Ehdr, Elf32_Phdr, Elf32_Dyn>(fd.get(), size, file);
  }
  return bad_elf(file, "unknown ELF class");
}

// Matched by name prefix. glibc's objects belong to the platform: a worker must use the node's
// loader with its matching libc, never a copy from the laptop (a libc newer than the node's
// loader does not even start).
bool is_platform_library(std::string_view soname) {
  static constexpr std::string_view k_glibc[] = {
      "libc.so",       "libm.so",
      "libmvec.so",    "libpthread.so",
      "libdl.so",      "librt.so",
      "libutil.so",    "libresolv.so",
      "libanl.so",     "libnss_",
      "libnsl.so.1",   "libBrokenLocale.",
      "libthread_db.", "libc_malloc_debug.",
      "ld-linux",      "ld64.so",
      "ld.so",
  };
  return std::any_of(std::begin(k_glibc), std::end(k_glibc),
                     [&](std::string_view p) { return soname.starts_with(p); });
}

std::string_view multiarch_triplet(ElfClass elf_class, std::uint16_t machine) {
  switch (machine) {
    case EM_X86_64:
      return elf_class == ElfClass::elf64 ? "x86_64-linux-gnu" : "x86_64-linux-gnux32";
    case EM_386:
      return "i386-linux-gnu";
    case EM_AARCH64:
      return "aarch64-linux-gnu";
    case EM_ARM:
      return "arm-linux-gnueabihf";
    case EM_PPC64:
      return "powerpc64le-linux-gnu";
    case EM_S390:
      return "s390x-linux-gnu";
    case EM_RISCV:
      return "riscv64-linux-gnu";
    default:
      return {};
  }
}

}  // namespace envd::agent
