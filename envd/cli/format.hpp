// Human-readable numbers for command output: 46,526 and 658.1 MB.
#pragma once

#include <cstdint>
#include <string>

namespace envd::cli {

std::string with_commas(std::uint64_t n);
std::string human_bytes(std::uint64_t bytes);  // decimal units: B, kB, MB, GB

}  // namespace envd::cli
