#pragma once
// rkl-hsm's own metrics (docs/hsm.md, "Metrics"), besides the RPC, process and audit chain
// metrics every daemon has:
//   rkl_hsm_commands_total{command,result}  every command by its short RPC name and the
//                                           status code it answered (HsmGrpcService counts)
//   rkl_hsm_self_test_ok                    1 when the start-up self-tests passed, else 0
//   rkl_hsm_keys{type,state}                key records by type and state, read from
//                                           hsm_key when Prometheus scrapes; every type ×
//                                           state, zeros included
// Label values are enum names in lower case ("tmk", "rsa_private"; "active", "superseded",
// "deleted"): never a key index, an SN or a label an operator chose.

#include "rkl/db/connection_pool.h"
#include "rkl/metrics/metrics.h"

namespace rkl::hsm {

// Sets rkl_hsm_self_test_ok and registers the rkl_hsm_keys refresher (source "hsm_keys":
// one GROUP BY over hsm_key on one connection of `pool` per scrape). `pool` must outlive
// the scrapes of `metrics`.
void RegisterHsmMetrics(metrics::Metrics& metrics, db::ConnectionPool& pool, bool self_test_passed);

}  // namespace rkl::hsm
