#pragma once
// Configuration keys of rkl-ca's issuance policy (CaPolicy), shared by the daemon and by
// `rklctl pki init` so both spell them alike. Start-up only.

#include "absl/status/statusor.h"
#include "ca_core.h"
#include "rkl/common/config.h"

namespace rkl::ca {

// Declares policy.* keys with CaPolicy's defaults.
void DeclarePolicyConfig(ConfigSchema& schema);
// Reads them back; INVALID_ARGUMENT (naming the key) when ValidatePolicy refuses the result.
absl::StatusOr<CaPolicy> PolicyFromConfig(const Config& config);

}  // namespace rkl::ca
