// Error and Result<T>: the one way envd functions report failures caused by the outside world.
// Result mirrors std::expected's member names (g++ 12 has no <expected> in C++20).
#pragma once

#include <cassert>
#include <string>
#include <string_view>
#include <utility>
#include <variant>

namespace envd {

// The closed set of error codes. Code branches on these, never on message text. They map to exit
// codes (exit_code_for) and HTTP/OCI errors in one place each.
enum class ErrorCode {
  invalid_argument,
  not_found,
  already_exists,
  failed_precondition,
  digest_mismatch,
  unavailable,
  permission_denied,
  io,
  cancelled,
  unimplemented,
  internal,
};

std::string_view to_string(ErrorCode code);

// An error code plus a human message. Each layer outward adds context with with_context(), giving
// messages like "pull team/env:v3: fetch blob sha256:ab..: digest mismatch".
class Error {
 public:
  Error(ErrorCode code, std::string message) : m_code(code), m_message(std::move(message)) {}

  ErrorCode code() const { return m_code; }
  const std::string& message() const { return m_message; }

  // Returns a copy whose message is "context: message".
  Error with_context(std::string_view context) const;

  // An io/not_found/permission_denied error from errno, naming what failed: "open /x: No such
  // file".
  static Error from_errno(std::string_view what, int err);

 private:
  ErrorCode m_code;
  std::string m_message;
};

// Wraps an Error to construct a failed Result, as std::unexpected does.
struct Unexpected {
  Error error;
};
inline Unexpected unexpected(Error e) {
  return Unexpected{std::move(e)};
}
inline Unexpected unexpected(ErrorCode code, std::string message) {
  return Unexpected{Error(code, std::move(message))};
}

template <class T>
class [[nodiscard]] Result {
 public:
  Result(T value) : m_v(std::in_place_index<0>, std::move(value)) {}
  Result(Unexpected u) : m_v(std::in_place_index<1>, std::move(u.error)) {}
  Result(Error e) : m_v(std::in_place_index<1>, std::move(e)) {}

  bool has_value() const { return m_v.index() == 0; }
  explicit operator bool() const { return has_value(); }

  T& value() & {
    assert(has_value());
    return std::get<0>(m_v);
  }
  const T& value() const& {
    assert(has_value());
    return std::get<0>(m_v);
  }
  T&& value() && {
    assert(has_value());
    return std::get<0>(std::move(m_v));
  }
  const Error& error() const {
    assert(!has_value());
    return std::get<1>(m_v);
  }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T&& operator*() && { return std::move(*this).value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  template <class U>
  T value_or(U&& fallback) const& {
    return has_value() ? value() : static_cast<T>(std::forward<U>(fallback));
  }

 private:
  std::variant<T, Error> m_v;
};

template <>
class [[nodiscard]] Result<void> {
 public:
  Result() = default;
  Result(Unexpected u) : m_error(std::move(u.error)), m_failed(true) {}
  Result(Error e) : m_error(std::move(e)), m_failed(true) {}

  bool has_value() const { return !m_failed; }
  explicit operator bool() const { return has_value(); }
  void value() const { assert(has_value()); }
  const Error& error() const {
    assert(m_failed);
    return m_error;
  }

 private:
  Error m_error{ErrorCode::internal, ""};
  bool m_failed = false;
};

// Process exit code for a command that failed with this error (DESIGN.md §5).
int exit_code_for(const Error& error);

}  // namespace envd

// Propagates a failure: ENVD_TRY(auto x, f()); binds x to the value or returns the error.
#define ENVD_CONCAT_INNER(a, b) a##b
#define ENVD_CONCAT(a, b) ENVD_CONCAT_INNER(a, b)
#define ENVD_TRY(decl, expr) ENVD_TRY_IMPL(ENVD_CONCAT(envd_try_, __LINE__), decl, expr)
#define ENVD_TRY_IMPL(tmp, decl, expr)              \
  auto tmp = (expr);                                \
  if (!tmp) return ::envd::unexpected(tmp.error()); \
  decl = std::move(*tmp)
// Propagates a failure from a Result<void>.
#define ENVD_TRY_VOID(expr)                                                 \
  do {                                                                      \
    auto envd_try_void_ = (expr);                                           \
    if (!envd_try_void_) return ::envd::unexpected(envd_try_void_.error()); \
  } while (0)
