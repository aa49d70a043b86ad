#pragma once
// rklctl is assembled from one file per area; each registers its subcommands here.
// Every command prints what it did (KCVs, indexes, serials — never key material) and exits
// non-zero with a message naming the failing step.

#include <CLI/CLI.hpp>

namespace rkl::rklctl {

// `rklctl pki ...` — PKI bootstrap and certificate administration (tools/rklctl/pki.cc).
void RegisterPkiCommands(CLI::App& app);
// `rklctl hsm ...` — key ceremony, key info, audit verification (tools/rklctl/hsm.cc).
void RegisterHsmCommands(CLI::App& app);
// `rklctl mtms ...` — work key provisioning/rotation, outbox queue (tools/rklctl/mtms.cc).
void RegisterMtmsCommands(CLI::App& app);
// `rklctl kms ...` — terminal administration, statistics, audit (tools/rklctl/kms.cc).
void RegisterKmsCommands(CLI::App& app);
// `rklctl health` — gRPC health probe (tools/rklctl/health.cc).
void RegisterHealthCommands(CLI::App& app);

}  // namespace rkl::rklctl
