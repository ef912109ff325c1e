// `fluxpipe serve` options: flags, their environment twins, and errors that name the option.
#include <gtest/gtest.h>
#include <stdlib.h>

#include "core/error.h"
#include "server/options.h"

namespace fluxpipe::server {
namespace {

TEST(ServeOptions, MemoryBudgetAndTilingFromFlagsAndEnvironment) {
  ServeOptions o = parse_serve_options({"--data", "/tmp/x", "--memory-budget", "8G", "--vae-tiling", "off"});
  EXPECT_EQ(o.engine.memory_budget, size_t{8} << 30);
  EXPECT_EQ(o.engine.vae_tiling, Tiling::off);
  EXPECT_EQ(parse_serve_options({"--data", "/tmp/x"}).engine.memory_budget, 0u);   // default: the machine's
  setenv("FLUXPIPE_MEMORY_BUDGET", "6000M", 1);
  setenv("FLUXPIPE_VAE_TILING", "on", 1);
  ServeOptions e = parse_serve_options({"--data", "/tmp/x"});
  EXPECT_EQ(e.engine.memory_budget, size_t{6000} << 20);
  EXPECT_EQ(e.engine.vae_tiling, Tiling::on);
  EXPECT_EQ(parse_serve_options({"--data", "/tmp/x", "--memory-budget", "7G"}).engine.memory_budget, size_t{7} << 30)
      << "a flag wins over the environment";
  unsetenv("FLUXPIPE_MEMORY_BUDGET");
  unsetenv("FLUXPIPE_VAE_TILING");
  try {
    parse_serve_options({"--data", "/tmp/x", "--memory-budget", "plenty"});
    FAIL() << "expected a UserError";
  } catch (const UserError& err) {
    EXPECT_NE(std::string(err.what()).find("--memory-budget"), std::string::npos) << err.what();
  }
  EXPECT_THROW(parse_serve_options({"--data", "/tmp/x", "--vae-tiling", "maybe"}), UserError);
}

TEST(ServeOptions, SeveralNodeOptionsAndTheirTwins) {
  setenv("FLUXPIPE_STORE", "postgresql://u@h/db", 1);
  setenv("FLUXPIPE_ROLE", "worker", 1);
  ServeOptions o = parse_serve_options({"--data", "/tmp/x", "--server-id", "gpu-a", "--node-id", "n1", "--images",
                                        "postgresql", "--lease-ms", "5000", "--max-queued-per-key", "7"});
  EXPECT_EQ(o.store_location, "postgresql://u@h/db");
  EXPECT_EQ(o.role, "worker");
  EXPECT_FALSE(runs_jobs(parse_serve_options({"--data", "/tmp/x", "--role", "api"})));
  EXPECT_EQ(o.server_id, "gpu-a");
  EXPECT_EQ(o.node_id, "n1");
  EXPECT_EQ(o.images_dir, "postgresql");
  EXPECT_EQ(o.lease_ms, 5000);
  EXPECT_EQ(o.max_queued_per_key, 7);
  unsetenv("FLUXPIPE_STORE");
  unsetenv("FLUXPIPE_ROLE");
  EXPECT_THROW(parse_serve_options({"--data", "/tmp/x", "--role", "boss"}), UserError);
  try {
    parse_serve_options({"--data", "/tmp/x", "--images", "postgresql"});   // with the SQLite store
    FAIL() << "expected a UserError";
  } catch (const UserError& err) {
    EXPECT_NE(std::string(err.what()).find("--store postgresql"), std::string::npos) << err.what();
  }
}

}  // namespace
}  // namespace fluxpipe::server
