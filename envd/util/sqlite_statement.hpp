// One prepared SQLite statement, finalized on scope exit. An error from preparing or binding is
// kept and surfaces at step() (as its return code) or run() (as an Error naming what failed).
#pragma once

#include <sqlite3.h>

#include <cstdint>
#include <string>
#include <string_view>

#include "envd/util/error.hpp"

namespace envd {

class SqliteStatement {
 public:
  SqliteStatement(sqlite3* db, const char* sql) : m_db(db) {
    m_rc = sqlite3_prepare_v2(db, sql, -1, &m_stmt, nullptr);
  }
  ~SqliteStatement() { sqlite3_finalize(m_stmt); }
  SqliteStatement(const SqliteStatement&) = delete;
  SqliteStatement& operator=(const SqliteStatement&) = delete;

  bool ok() const { return m_rc == SQLITE_OK; }
  SqliteStatement& bind(int i, std::string_view text) {
    if (m_rc == SQLITE_OK)
      m_rc = sqlite3_bind_text(m_stmt, i, text.data(), static_cast<int>(text.size()),
                               SQLITE_TRANSIENT);
    return *this;
  }
  SqliteStatement& bind(int i, std::int64_t v) {
    if (m_rc == SQLITE_OK) m_rc = sqlite3_bind_int64(m_stmt, i, v);
    return *this;
  }
  // SQLITE_ROW, SQLITE_DONE or an error code.
  int step() { return m_rc == SQLITE_OK ? sqlite3_step(m_stmt) : m_rc; }
  // Steps once; an io error "WHAT: <SQLite's message>" unless that gave a row or finished.
  Result<void> run(std::string_view what) {
    int rc = step();
    if (rc != SQLITE_DONE && rc != SQLITE_ROW)
      return Error(ErrorCode::io, std::string(what) + ": " + sqlite3_errmsg(m_db));
    return {};
  }
  std::string text(int col) const {
    const auto* p = sqlite3_column_text(m_stmt, col);
    return p != nullptr ? std::string(reinterpret_cast<const char*>(p),
                                      static_cast<std::size_t>(sqlite3_column_bytes(m_stmt, col)))
                        : std::string();
  }
  std::int64_t int64(int col) const { return sqlite3_column_int64(m_stmt, col); }
  bool is_null(int col) const { return sqlite3_column_type(m_stmt, col) == SQLITE_NULL; }

 private:
  sqlite3* m_db;
  sqlite3_stmt* m_stmt = nullptr;
  int m_rc;
};

}  // namespace envd
