// `rklctl kms ...`: terminal administration on rkl-kms (docs/kms.md) with an admin:*
// client certificate:
//   rklctl kms terminal get SN
//   rklctl kms terminal list [--state STATE] [--prefix P] [--page-size N] [--all]
//   rklctl kms terminal unlock|revoke|rekey SN [--reason TEXT]
//   rklctl kms stats
//   rklctl kms audit [--sn SN] [--page-size N] [--all]
// Output is one line per terminal or audit record: states, KCVs, counters — never keys.

#include <iostream>
#include <memory>

#include "audit_verify.h"
#include "commands.h"
#include "connection.h"
#include "rkl/rpc/call_context.h"
#include "rkl/rpc/status.h"
#include "rkl/v1/kms.grpc.pb.h"

namespace rkl::rklctl {
namespace {

constexpr char kDefaultKms[] = "localhost:50055";
constexpr Area kArea{"kms", absl::Seconds(15)};

std::string StateName(rkl::v1::TerminalState s) {
  std::string name = rkl::v1::TerminalState_Name(s);
  constexpr std::string_view kPrefix = "TERMINAL_STATE_";
  return name.starts_with(kPrefix) ? name.substr(kPrefix.size()) : name;
}

std::unique_ptr<rkl::v1::Kms::Stub> KmsStub(const Endpoint& endpoint, const std::string& step) {
  auto channel = Connect(endpoint);
  if (!channel.ok()) kArea.Fail(step, channel.status());
  return rkl::v1::Kms::NewStub(std::shared_ptr<grpc::ChannelInterface>(*channel));
}

// --page-size and --all of a listing command.
struct Paging {
  uint32_t page_size = 100;
  bool all = false;
};
void AddPagingOptions(CLI::App* cmd, Paging& paging, const std::string& rows) {
  cmd->add_option("--page-size", paging.page_size, rows + " per request")
      ->check(CLI::Range(1, 1000));
  cmd->add_flag("--all", paging.all, "follow pages to the end");
}

// Calls `fetch_page` (which sends `req`, prints the page and returns its next_page_token)
// for the first page, and with --all for every following one; without --all, says when
// there are more.
template <typename Request, typename FetchPage>
void FollowPages(Request& req, const Paging& paging, FetchPage fetch_page) {
  req.mutable_page()->set_page_size(paging.page_size);
  do {
    req.mutable_page()->set_page_token(fetch_page());
    if (!paging.all && !req.page().page_token().empty()) {
      std::cout << "(more: --all)\n";
      return;
    }
  } while (!req.page().page_token().empty());
}

void PrintTerminal(const rkl::v1::Terminal& t) {
  std::cout << t.sn() << "  state=" << StateName(t.state())
            << "  algorithm=" << rkl::v1::KeyAlgorithm_Name(t.algorithm()).substr(14)
            << "  tmk_kcv=" << (t.tmk_kcv().empty() ? "-" : t.tmk_kcv())
            << "  tek_kcv=" << (t.tek_kcv().empty() ? "-" : t.tek_kcv())
            << "  generation=" << t.tmk_generation() << "  failures=" << t.consecutive_failures()
            << (t.rekey_requested() ? "  rekey-requested" : "") << "\n";
}

struct TerminalArgs {
  Endpoint endpoint;
  std::string sn;
  std::string reason;
};

// unlock / revoke / rekey share their shape.
void AddAdminChange(CLI::App* terminal, const std::string& name, const std::string& help,
                    grpc::Status (rkl::v1::Kms::Stub::*rpc)(grpc::ClientContext*,
                                                            const rkl::v1::TerminalAdminRequest&,
                                                            rkl::v1::Terminal*)) {
  auto [cmd, args] = AddServiceCommand<TerminalArgs>(terminal, name, help, "kms", kDefaultKms);
  cmd->add_option("sn", args->sn, "terminal serial number")->required();
  cmd->add_option("--reason", args->reason, "why (recorded in the audit, at most 256 chars)");
  cmd->callback([args, name, rpc] {
    auto stub = KmsStub(args->endpoint, "terminal " + name);
    rkl::v1::TerminalAdminRequest req;
    req.set_sn(args->sn);
    req.set_reason(args->reason);
    PrintTerminal(kArea.Call("terminal " + name, *stub, rpc, req));
  });
}

}  // namespace

void RegisterKmsCommands(CLI::App& app) {
  CLI::App* kms = AddCommandGroup(app, "kms", "terminal administration on rkl-kms");
  CLI::App* terminal = AddCommandGroup(*kms, "terminal", "inspect and administer terminals");

  {
    auto [cmd, args] =
        AddServiceCommand<TerminalArgs>(terminal, "get", "show one terminal", "kms", kDefaultKms);
    cmd->add_option("sn", args->sn, "terminal serial number")->required();
    cmd->callback([args] {
      auto stub = KmsStub(args->endpoint, "terminal get");
      rkl::v1::GetTerminalRequest req;
      req.set_sn(args->sn);
      rkl::v1::Terminal resp =
          kArea.Call("terminal get", *stub, &rkl::v1::Kms::Stub::GetTerminal, req);
      PrintTerminal(resp);
      std::cout << "  tk_received_at_ms=" << resp.tk_received_at_unix_ms()
                << "  installed_at_ms=" << resp.installed_at_unix_ms()
                << "  updated_at_ms=" << resp.updated_at_unix_ms()
                << "  auk_kcv=" << (resp.auk_kcv().empty() ? "-" : resp.auk_kcv()) << "\n";
    });
  }
  {
    struct ListArgs {
      Endpoint endpoint;
      std::string state;
      std::string prefix;
      Paging paging;
    };
    auto [cmd, args] =
        AddServiceCommand<ListArgs>(terminal, "list", "list terminals, by SN", "kms", kDefaultKms);
    cmd->add_option("--state", args->state,
                    "only this state (TK_RECEIVED, AUTHENTICATED, TMK_DELIVERED, INSTALLED, "
                    "LOCKED, REVOKED, REKEY_PENDING)");
    cmd->add_option("--prefix", args->prefix, "only SNs starting with this");
    AddPagingOptions(cmd, args->paging, "terminals");
    cmd->callback([args] {
      rkl::v1::ListTerminalsRequest req;
      if (!args->state.empty()) {
        rkl::v1::TerminalState state;
        if (!rkl::v1::TerminalState_Parse("TERMINAL_STATE_" + args->state, &state)) {
          kArea.Fail("terminal list", absl::InvalidArgumentError("--state: unknown state"));
        }
        req.set_state(state);
      }
      req.set_sn_prefix(args->prefix);
      auto stub = KmsStub(args->endpoint, "terminal list");
      FollowPages(req, args->paging, [&] {
        rkl::v1::ListTerminalsResponse resp =
            kArea.Call("terminal list", *stub, &rkl::v1::Kms::Stub::ListTerminals, req);
        for (const auto& t : resp.terminals()) PrintTerminal(t);
        return resp.next_page_token();
      });
    });
  }
  AddAdminChange(terminal, "unlock", "unlock a LOCKED terminal (back to its previous state)",
                 &rkl::v1::Kms::Stub::UnlockTerminal);
  AddAdminChange(terminal, "revoke", "revoke a terminal for good",
                 &rkl::v1::Kms::Stub::RevokeTerminal);
  AddAdminChange(terminal, "rekey",
                 "mark an INSTALLED terminal for re-key (its next TK brings a new TMK)",
                 &rkl::v1::Kms::Stub::MarkForRekey);

  {
    auto* cmd = kms->add_subcommand("stats", "terminal counts by state, TMK KCVs, failures");
    auto endpoint = std::make_shared<Endpoint>();
    AddEndpointOptions(cmd, *endpoint, "kms", kDefaultKms);
    cmd->callback([endpoint] {
      auto stub = KmsStub(*endpoint, "stats");
      rkl::v1::Statistics resp =
          kArea.Call("stats", *stub, &rkl::v1::Kms::Stub::GetStatistics, rkl::v1::Empty());
      std::cout << "terminals_total=" << resp.terminals_total()
                << "\ndistinct_tmk_kcvs=" << resp.distinct_tmk_kcvs()
                << "\nauth_failures_total=" << resp.auth_failures_total() << "\n";
      std::map<std::string, uint64_t> sorted(resp.terminals_by_state().begin(),
                                             resp.terminals_by_state().end());
      for (const auto& [state, count] : sorted) std::cout << state << "=" << count << "\n";
    });
  }
  {
    struct AuditArgs {
      Endpoint endpoint;
      std::string sn;
      Paging paging;
    };
    auto [cmd, args] = AddServiceCommand<AuditArgs>(
        kms, "audit", "the KMS audit trail, oldest first", "kms", kDefaultKms);
    cmd->add_option("--sn", args->sn, "only this terminal");
    AddPagingOptions(cmd, args->paging, "records");
    cmd->callback([args] {
      auto stub = KmsStub(args->endpoint, "audit");
      rkl::v1::ListAuditRequest req;
      req.set_sn(args->sn);
      FollowPages(req, args->paging, [&] {
        rkl::v1::ListAuditResponse resp =
            kArea.Call("audit", *stub, &rkl::v1::Kms::Stub::ListAudit, req);
        for (const auto& r : resp.records()) {
          std::cout << r.seq() << "  " << absl::FormatTime(absl::FromUnixMillis(r.at_unix_ms()))
                    << "  " << r.actor() << "  " << r.action() << "  "
                    << (r.sn().empty() ? "-" : r.sn()) << "  " << r.result() << "  " << r.detail()
                    << "\n";
        }
        return resp.next_page_token();
      });
    });
  }
  AddAuditVerifyCommand(kms, "KMS", "kms", kDefaultKms,
                        [](const Endpoint& endpoint, const rkl::v1::VerifyAuditChainRequest& req) {
                          auto stub = KmsStub(endpoint, "audit-verify");
                          rkl::v1::VerifyAuditChainResponse resp = kArea.Call(
                              "audit-verify", *stub, &rkl::v1::Kms::Stub::VerifyAuditChain, req);
                          return resp;
                        });
}

}  // namespace rkl::rklctl
