#pragma once
// `rklctl {hsm,kms,mtms} audit-verify`: the same options and the same verdict for every
// service that keeps an audit chain (libs/audit). Verification runs in the service, which
// holds the MAC key; the administrator's machine never sees it.

#include <CLI/CLI.hpp>
#include <functional>
#include <memory>
#include <string>

#include "connection.h"
#include "rkl/v1/common.pb.h"

namespace rkl::rklctl {

// Adds `audit-verify` under `parent`, with the endpoint options --<flag> etc. `verify` makes
// the service's VerifyAuditChain call (and exits on an RPC error). Exit 0 with "audit chain
// intact" when intact, 1 naming the first broken record when not, 2 when the anchor file
// cannot be read.
void AddAuditVerifyCommand(
    CLI::App* parent, const std::string& service_name, const std::string& flag,
    const std::string& default_target,
    std::function<v1::VerifyAuditChainResponse(const Endpoint&, const v1::VerifyAuditChainRequest&)>
        verify);

}  // namespace rkl::rklctl
