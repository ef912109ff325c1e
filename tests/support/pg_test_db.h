// A fresh PostgreSQL database per test, on the server scripts/pg_test_server.sh started
// (socket folder and port in FLUXPIPE_TEST_PG_HOST / FLUXPIPE_TEST_PG_PORT), dropped afterwards.
// Without that server the PostgreSQL tests skip — except under CI=true, where they fail: the
// test command always starts one, so its absence there is a broken run, not an option.
#pragma once

#include <libpq-fe.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <string>

#include <gtest/gtest.h>

namespace fluxpipe::testing {

inline bool pg_test_server_configured() { return std::getenv("FLUXPIPE_TEST_PG_HOST") != nullptr; }

// Call first in a PostgreSQL test: skips (or fails under CI) when no server is configured.
#define FLUXPIPE_REQUIRE_PG()                                                                       \
  do {                                                                                              \
    if (!::fluxpipe::testing::pg_test_server_configured()) {                                       \
      const char* ci = std::getenv("CI");                                                           \
      if (ci && std::string(ci) == "true") FAIL() << "CI=true but FLUXPIPE_TEST_PG_HOST is unset"; \
      GTEST_SKIP() << "no PostgreSQL test server (run scripts/pg_test_server.sh start)";            \
    }                                                                                               \
  } while (0)

class PgTestDb {
 public:
  PgTestDb() {
    static std::atomic<int> counter{0};
    name_ = "fluxpipe_t" + std::to_string(getpid()) + "_" + std::to_string(++counter);
    admin("CREATE DATABASE " + name_);
  }
  ~PgTestDb() { admin("DROP DATABASE IF EXISTS " + name_ + " WITH (FORCE)"); }
  PgTestDb(const PgTestDb&) = delete;
  PgTestDb& operator=(const PgTestDb&) = delete;

  // A postgresql:// URI for this database (what --store takes).
  std::string uri() const { return uri_for(name_); }
  // Runs one statement on this database (to age a lease, bump the schema version, ...).
  void exec(const std::string& sql) const { run(uri(), sql); }

 private:
  static std::string uri_for(const std::string& db) {
    const char* host = std::getenv("FLUXPIPE_TEST_PG_HOST");
    const char* port = std::getenv("FLUXPIPE_TEST_PG_PORT");
    return "postgresql://postgres@/" + db + "?host=" + (host ? host : "/tmp") + "&port=" + (port ? port : "5432");
  }
  static void run(const std::string& conninfo, const std::string& sql) {
    PGconn* c = PQconnectdb(conninfo.c_str());
    ASSERT_EQ(PQstatus(c), CONNECTION_OK) << PQerrorMessage(c);
    PGresult* r = PQexec(c, sql.c_str());
    EXPECT_TRUE(PQresultStatus(r) == PGRES_COMMAND_OK || PQresultStatus(r) == PGRES_TUPLES_OK)
        << sql << ": " << PQresultErrorMessage(r);
    PQclear(r);
    PQfinish(c);
  }
  void admin(const std::string& sql) const { run(uri_for("postgres"), sql); }

  std::string name_;
};

}  // namespace fluxpipe::testing
