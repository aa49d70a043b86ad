#pragma once
// The start of every rkl daemon's main(), before anything service-specific: the command line
// and configuration, the process settings, logging and the shutdown signal handlers.

#include <string_view>

#include "rkl/common/config.h"

namespace rkl::rpc {

struct DaemonStart {
  Config config;
  // `--migrate-only` was given: apply the schema migrations and exit. Only db.* and log.*
  // were checked then, since that run reads nothing else.
  bool migrate_only = false;
};

// Loads the configuration for `program` (LoadConfigOrExit: --help, --print-config-reference
// and an invalid configuration end the process there), takes `--migrate-only`, then calls
// InitDaemonProcess, InitLogging from log.format / log.level and
// InstallShutdownSignalHandlers. The schema must declare log.format and log.level.
DaemonStart StartDaemonOrExit(const ConfigSchema& schema, std::string_view program, int argc,
                              const char* const* argv);

}  // namespace rkl::rpc
