#pragma once
// The configuration of rkl-mtms (environment prefix RKL_MTMS): every key, its default and
// rule, in one schema that --help, --print-config-reference and docs/mtms.md share.

#include "mtms_core.h"
#include "mtms_forwarder.h"
#include "rkl/common/config.h"

namespace rkl::mtms {

inline constexpr char kEnvPrefix[] = "RKL_MTMS";
inline constexpr char kProgram[] = "rkl-mtms";

ConfigSchema MakeMtmsConfigSchema();

MtmsCoreOptions CoreOptionsFromConfig(const Config& config);
ForwarderOptions ForwarderOptionsFromConfig(const Config& config);

}  // namespace rkl::mtms
