// rkl-hsm — the software payment HSM daemon. `rkl-hsm --help` lists every setting;
// docs/hsm.md describes the commands, key types, LMK handling and audit.

#include "absl/strings/str_cat.h"
#include "hsm_daemon.h"
#include "rkl/common/config.h"
#include "rkl/rpc/daemon.h"
#include "spdlog/spdlog.h"

int main(int argc, char** argv) {
  rkl::ConfigSchema schema("RKL_HSM");
  rkl::hsm::DeclareHsmConfig(schema);
  const auto [config, migrate_only] = rkl::rpc::StartDaemonOrExit(schema, "rkl-hsm", argc, argv);

  if (migrate_only) {
    absl::Status migrated = rkl::hsm::HsmDaemon::MigrateOnly(config.GetString("db.dsn"),
                                                             config.GetString("db.owner_dsn"));
    if (!migrated.ok()) {
      spdlog::critical("migration failed: {}", migrated.ToString());
      return 1;
    }
    return 0;
  }
  auto options = rkl::hsm::HsmOptionsFromConfig(config);
  if (!options.ok()) {
    spdlog::critical("{}", std::string(options.status().message()));
    return 2;
  }
  auto daemon = rkl::hsm::HsmDaemon::Start(*std::move(options));
  if (!daemon.ok()) {
    spdlog::critical("cannot start: {}", daemon.status().ToString());
    return 1;
  }
  (*daemon)->server().RunUntilShutdownSignal(absl::Seconds(10));
  return 0;
}
