// `rklctl kms ...`: terminal administration on rkl-kms (docs/kms.md) with an admin:*
// client certificate:
//   rklctl kms terminal get SN
//   rklctl kms terminal list [--state STATE] [--prefix P] [--page-size N] [--all]
//   rklctl kms terminal unlock|revoke|rekey SN [--reason TEXT]
//   rklctl kms stats
//   rklctl kms audit [--sn SN] [--page-size N] [--all]
//   rklctl kms kdh provision [--label L] [--bits 2048|3072]
//   rklctl kms kdh list
//   rklctl kms krd import FILE
// Output is one line per terminal, KDH key, KRD or audit record: states, KCVs, ids,
// counters — never keys.

#include <fstream>
#include <iostream>
#include <memory>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
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

std::string ProtocolName(rkl::v1::TerminalProtocol p) {
  std::string name = rkl::v1::TerminalProtocol_Name(p);
  constexpr std::string_view kPrefix = "TERMINAL_PROTOCOL_";
  return name.starts_with(kPrefix) ? name.substr(kPrefix.size()) : name;
}

void PrintTerminal(const rkl::v1::Terminal& t) {
  // The leading fields keep their places (scripts read them); protocol and krd_id come last.
  std::cout << t.sn() << "  state=" << StateName(t.state())
            << "  algorithm=" << rkl::v1::KeyAlgorithm_Name(t.algorithm()).substr(14)
            << "  tmk_kcv=" << (t.tmk_kcv().empty() ? "-" : t.tmk_kcv())
            << "  tek_kcv=" << (t.tek_kcv().empty() ? "-" : t.tek_kcv())
            << "  generation=" << t.tmk_generation() << "  failures=" << t.consecutive_failures()
            << (t.rekey_requested() ? "  rekey-requested" : "")
            << "  protocol=" << ProtocolName(t.protocol())
            << (t.krd_id().empty() ? "" : "  krd_id=" + t.krd_id()) << "\n";
}

void PrintKdhKey(const rkl::v1::KdhKey& k) {
  std::cout << "key_index=" << k.key_index() << "  serial=" << k.serial_hex()
            << "  not_after=" << absl::FormatTime(absl::FromUnixSeconds(k.not_after_unix_s()))
            << "  created=" << absl::FormatTime(absl::FromUnixMillis(k.created_at_unix_ms()))
            << (k.active() ? "  active" : "  inactive") << "\n";
}

// One credential of a `krd import` file: its line number and DER.
struct KrdLine {
  int line = 0;
  std::string der;
};

// The file of `rklctl kms krd import`: one base64 DER CT_KRD per line; blank lines and lines
// starting with '#' are ignored. A line that is not base64 is an error naming it.
absl::StatusOr<std::vector<KrdLine>> ReadKrdFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot be opened"));
  std::vector<KrdLine> out;
  std::string text;
  for (int n = 1; std::getline(in, text); ++n) {
    absl::string_view line = absl::StripAsciiWhitespace(text);
    if (line.empty() || line.front() == '#') continue;
    KrdLine k{n, ""};
    if (!absl::Base64Unescape(line, &k.der) || k.der.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ":", n, ": not a base64 CT_KRD (one per line; # comments)"));
    }
    out.push_back(std::move(k));
  }
  return out;
}

constexpr size_t kKrdBatch = 1000;  // RegisterKrdCredentials takes 1–1000 per call

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
  CLI::App* kms =
      AddCommandGroup(app, "kms", "terminal, TR-34 KDH key and KRD administration on rkl-kms");
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

  // ---- TR-34 ----
  CLI::App* kdh = AddCommandGroup(*kms, "kdh", "the TR-34 KDH signing key (HSM #2 + kdh-ca)");
  {
    struct ProvisionArgs {
      Endpoint endpoint;
      std::string label = "kdh";
      uint32_t bits = 2048;
    };
    auto [cmd, args] = AddServiceCommand<ProvisionArgs>(
        kdh, "provision",
        "generate the KDH key in HSM #2 and have the CA's kdh-ca certify it (once per "
        "deployment: refused while a KDH key is active)",
        "kms", kDefaultKms);
    cmd->add_option("--label", args->label, "HSM #2 key label, 1-64 printable ASCII")
        ->capture_default_str();
    cmd->add_option("--bits", args->bits, "RSA modulus size")
        ->check(CLI::IsMember({2048, 3072}))
        ->capture_default_str();
    cmd->callback([args] {
      auto stub = KmsStub(args->endpoint, "kdh provision");
      rkl::v1::ProvisionKdhKeyRequest req;
      req.set_label(args->label);
      req.set_bits(args->bits);
      rkl::v1::KdhKey key =
          kArea.Call("kdh provision", *stub, &rkl::v1::Kms::Stub::ProvisionKdhKey, req);
      PrintKdhKey(key);
      std::cout << key.certificate_pem();
    });
  }
  {
    auto* cmd = kdh->add_subcommand("list", "the KDH keys KMS knows, the active one marked");
    auto endpoint = std::make_shared<Endpoint>();
    AddEndpointOptions(cmd, *endpoint, "kms", kDefaultKms);
    cmd->callback([endpoint] {
      auto stub = KmsStub(*endpoint, "kdh list");
      rkl::v1::ListKdhKeysResponse resp =
          kArea.Call("kdh list", *stub, &rkl::v1::Kms::Stub::ListKdhKeys, rkl::v1::Empty());
      for (const auto& k : resp.keys()) PrintKdhKey(k);
      if (resp.keys().empty()) std::cout << "(no KDH key: rklctl kms kdh provision)\n";
    });
  }
  CLI::App* krd = AddCommandGroup(*kms, "krd", "TR-34 terminals' KRD credentials");
  {
    struct ImportArgs {
      Endpoint endpoint;
      std::string file;
    };
    auto [cmd, args] = AddServiceCommand<ImportArgs>(
        krd, "import",
        "bind SNs to KRDs from a manufacturer's file: one base64 DER CT_KRD per line, blank "
        "lines and # comments ignored; prints one line per credential and a summary, exit 1 if "
        "any failed",
        "kms", kDefaultKms);
    cmd->add_option("file", args->file, "the CT_KRD file")->required();
    cmd->callback([args] {
      absl::StatusOr<std::vector<KrdLine>> lines = ReadKrdFile(args->file);
      if (!lines.ok()) kArea.Fail("krd import", lines.status());
      if (lines->empty()) {
        kArea.Fail("krd import", absl::InvalidArgumentError(args->file + ": no CT_KRD in it"));
      }
      auto stub = KmsStub(args->endpoint, "krd import");
      size_t bound = 0, already = 0, failed = 0;
      for (size_t start = 0; start < lines->size(); start += kKrdBatch) {
        const size_t end = std::min(lines->size(), start + kKrdBatch);
        rkl::v1::RegisterKrdCredentialsRequest req;
        for (size_t i = start; i < end; ++i) req.add_ct_krd((*lines)[i].der);
        rkl::v1::RegisterKrdCredentialsResponse resp =
            kArea.Call("krd import", *stub, &rkl::v1::Kms::Stub::RegisterKrdCredentials, req);
        for (int i = 0; i < resp.results_size(); ++i) {
          const rkl::v1::KrdRegistration& r = resp.results(i);
          std::cout << "line " << (*lines)[start + i].line << "  "
                    << (r.sn().empty() ? "-" : r.sn()) << "  ";
          if (r.code() == 0) {
            ++(r.duplicate() ? already : bound);
            std::cout << (r.duplicate() ? "already-bound" : "bound") << "  krd_id=" << r.krd_id()
                      << "\n";
          } else {
            ++failed;
            std::cout << "FAILED  "
                      << absl::StatusCodeToString(static_cast<absl::StatusCode>(r.code())) << ": "
                      << r.message() << "\n";
          }
        }
      }
      std::cout << "bound=" << bound << "  already-bound=" << already << "  failed=" << failed
                << "  total=" << lines->size() << "\n";
      if (failed > 0) {
        kArea.Fail("krd import",
                   absl::FailedPreconditionError(absl::StrCat(failed, " of ", lines->size(),
                                                              " credentials were not registered")));
      }
    });
  }

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
      std::map<std::string, uint64_t> protocols(resp.terminals_by_protocol().begin(),
                                                resp.terminals_by_protocol().end());
      for (const auto& [protocol, count] : protocols) {
        std::cout << "protocol." << protocol << "=" << count << "\n";
      }
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
                    << (r.request_id().empty() ? "" : "  request_id=" + r.request_id()) << "\n";
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
