#!/usr/bin/env bash
# Regenerates the forwarding functions of the libraries envd loads on first use
# (envd/util/lazy_library.hpp). Add a function here when envd starts calling it: the link of the
# envd executable fails with "undefined reference" until then.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 packaging/gen-lazy-stubs.py ENVD_LIBARCHIVE_SONAME envd/util/libarchive_lazy.cpp \
  archive.h archive_entry.h -- \
  archive_entry_clear archive_entry_copy_hardlink archive_entry_copy_pathname \
  archive_entry_copy_symlink archive_entry_filetype archive_entry_free archive_entry_hardlink \
  archive_entry_mtime archive_entry_mtime_is_set archive_entry_mtime_nsec archive_entry_new \
  archive_entry_pathname archive_entry_perm archive_entry_set_filetype archive_entry_set_gid \
  archive_entry_set_mtime archive_entry_set_perm archive_entry_set_size archive_entry_set_uid \
  archive_entry_size archive_entry_size_is_set archive_entry_symlink archive_error_string \
  archive_read_data_block archive_read_free archive_read_new archive_read_next_header \
  archive_read_open archive_read_support_filter_none archive_read_support_format_tar \
  archive_write_close archive_write_data archive_write_fail archive_write_free \
  archive_write_header archive_write_new archive_write_open2 \
  archive_write_set_format_pax_restricted
python3 packaging/gen-lazy-stubs.py ENVD_LIBGIT2_SONAME agent/libgit2_lazy.cpp \
  git2.h git2/errors.h git2/global.h git2/ignore.h git2/index.h git2/oid.h git2/refs.h \
  git2/repository.h git2/status.h -- \
  git_error_last git_ignore_path_is_ignored git_index_entrycount git_index_find_prefix \
  git_index_free git_index_get_byindex git_libgit2_init git_oid_tostr git_reference_name_to_id \
  git_repository_free git_repository_index git_repository_open_ext git_repository_workdir \
  git_status_byindex git_status_list_entrycount git_status_list_free git_status_list_new \
  git_status_options_init
clang-format -i envd/util/libarchive_lazy.cpp agent/libgit2_lazy.cpp
