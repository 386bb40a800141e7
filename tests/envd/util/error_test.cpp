// Result/Error: values, errors, context chaining and errno mapping.
#include <doctest/doctest.h>

#include <cerrno>

#include "envd/util/error.hpp"

using envd::Error;
using envd::ErrorCode;
using envd::Result;

namespace {
Result<int> half(int x) {
  if (x % 2 != 0) return envd::unexpected(ErrorCode::invalid_argument, "odd: " + std::to_string(x));
  return x / 2;
}
Result<int> quarter(int x) {
  ENVD_TRY(int h, half(x));
  ENVD_TRY(int q, half(h));
  return q;
}
}  // namespace

TEST_CASE("Result carries a value or an error, and ENVD_TRY propagates the error") {
  auto ok = quarter(8);
  REQUIRE(ok);
  CHECK(*ok == 2);
  auto bad = quarter(6);
  REQUIRE_FALSE(bad);
  CHECK(bad.error().code() == ErrorCode::invalid_argument);
  CHECK(bad.error().message() == "odd: 3");
}

TEST_CASE("with_context prefixes the message and keeps the code") {
  Error e(ErrorCode::digest_mismatch, "digest mismatch");
  auto outer = e.with_context("fetch blob sha256:ab").with_context("pull team/env:v3");
  CHECK(outer.code() == ErrorCode::digest_mismatch);
  CHECK(outer.message() == "pull team/env:v3: fetch blob sha256:ab: digest mismatch");
}

TEST_CASE("from_errno maps errno to codes and names what failed") {
  CHECK(Error::from_errno("open /x", ENOENT).code() == ErrorCode::not_found);
  CHECK(Error::from_errno("open /x", EACCES).code() == ErrorCode::permission_denied);
  CHECK(Error::from_errno("open /x", EIO).code() == ErrorCode::io);
  CHECK(Error::from_errno("open /x", ENOENT).message() == "open /x: No such file or directory");
}
