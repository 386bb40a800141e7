// Errors of snapshot JSON writing and reading: invalid_argument naming the JSON location.
#pragma once

#include <string>

#include "envd/util/error.hpp"

namespace envd::snapshot {

// "snapshot /environments/0/prefix: must be ..." ("/" for the document itself).
inline Error bad(const std::string& where, const std::string& why) {
  return Error(ErrorCode::invalid_argument,
               "snapshot " + (where.empty() ? std::string("/") : where) + ": " + why);
}

}  // namespace envd::snapshot
