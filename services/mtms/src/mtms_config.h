#pragma once
// The configuration of rkl-mtms (environment prefix RKL_MTMS): every key, its default and
// rule, in one schema that --help, --print-config-reference and docs/mtms.md share.

#include "absl/status/status.h"
#include "mtms_batchers.h"
#include "mtms_core.h"
#include "mtms_forwarder.h"
#include "rkl/common/config.h"

namespace rkl::mtms {

inline constexpr char kEnvPrefix[] = "RKL_MTMS";
inline constexpr char kProgram[] = "rkl-mtms";

ConfigSchema MakeMtmsConfigSchema();

MtmsCoreOptions CoreOptionsFromConfig(const Config& config);
ForwarderOptions ForwarderOptionsFromConfig(const Config& config);
TranslateBatcherOptions TranslateBatcherOptionsFromConfig(const Config& config);
KmsSubmitBatcherOptions KmsSubmitBatcherOptionsFromConfig(const Config& config);

// Database connections kept beyond the forwarder's workers, for intake, admin calls and
// the forwarder's claims.
inline constexpr int kPoolReserve = 4;
// Rules beyond each key's own: db.pool_size >= forwarder.workers + kPoolReserve, and
// refusals.flush_interval > 0. INVALID_ARGUMENT naming the keys otherwise; main() refuses
// to start. The budgets of the public RPCs (limits.*) are rpc::PublicCallLimitsFromConfig.
absl::Status CheckMtmsConfig(const Config& config);

}  // namespace rkl::mtms
