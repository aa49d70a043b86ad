#include "rkl/rpc/daemon.h"

#include "rkl/common/logging.h"
#include "rkl/common/process.h"
#include "rkl/rpc/shutdown.h"

namespace rkl::rpc {

DaemonStart StartDaemonOrExit(const ConfigSchema& schema, std::string_view program, int argc,
                              const char* const* argv) {
  bool migrate_only = false;
  Config config = LoadConfigOrExit(
      schema, program, argc, argv,
      {{.name = "--migrate-only",
        .help = "apply the schema migrations as db.owner_dsn, grant db.dsn's role its "
                "privileges, and exit (docs/operations.md)",
        .value = &migrate_only,
        .checks_only = {"db.", "log."}}});
  InitDaemonProcess();
  // LoadConfigOrExit checked both enums, so the parses cannot fail here.
  InitLogging({.format = *ParseLogFormat(config.GetEnum("log.format")),
               .level = *ParseLogLevel(config.GetEnum("log.level")),
               .program = std::string(program)});
  InstallShutdownSignalHandlers();
  return {.config = std::move(config), .migrate_only = migrate_only};
}

}  // namespace rkl::rpc
