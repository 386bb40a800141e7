// Error code names, errno translation and the mapping of errors to process exit codes.
#include "envd/util/error.hpp"

#include <cerrno>
#include <cstring>

namespace envd {

std::string_view to_string(ErrorCode code) {
  switch (code) {
    case ErrorCode::invalid_argument:
      return "invalid_argument";
    case ErrorCode::not_found:
      return "not_found";
    case ErrorCode::already_exists:
      return "already_exists";
    case ErrorCode::failed_precondition:
      return "failed_precondition";
    case ErrorCode::digest_mismatch:
      return "digest_mismatch";
    case ErrorCode::unavailable:
      return "unavailable";
    case ErrorCode::permission_denied:
      return "permission_denied";
    case ErrorCode::io:
      return "io";
    case ErrorCode::cancelled:
      return "cancelled";
    case ErrorCode::unimplemented:
      return "unimplemented";
    case ErrorCode::internal:
      return "internal";
  }
  return "internal";
}

Error Error::with_context(std::string_view context) const {
  std::string msg(context);
  msg += ": ";
  msg += m_message;
  return Error(m_code, std::move(msg));
}

Error Error::from_errno(std::string_view what, int err) {
  ErrorCode code = ErrorCode::io;
  switch (err) {
    case ENOENT:
    case ENOTDIR:
      code = ErrorCode::not_found;
      break;
    case EACCES:
    case EPERM:
      code = ErrorCode::permission_denied;
      break;
    case EEXIST:
      code = ErrorCode::already_exists;
      break;
    case EINVAL:
      code = ErrorCode::invalid_argument;
      break;
    default:
      break;
  }
  std::string msg(what);
  msg += ": ";
  msg += std::strerror(err);
  return Error(code, std::move(msg));
}

int exit_code_for(const Error& /*error*/) {
  // DESIGN.md §5: 1 for any failure; usage errors (2) are detected by the command-line parser
  // before any work starts, so no Error maps to 2.
  return 1;
}

}  // namespace envd
