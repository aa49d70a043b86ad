// `rklctl mtms ...`: work keys and the outbox of rkl-mtms (docs/mtms.md), with an admin:*
// client certificate:
//   rklctl mtms work-key provision [--rotate] [--rsa-bits 2048|3072]
//   rklctl mtms work-key list
//   rklctl mtms work-key retire --serial HEX [--force]
//   rklctl mtms queue [--state received|forwarded|rejected] [--page-size N] [--all]
//   rklctl mtms forward-now
// Each takes --mtms host:port --tls-ca --tls-cert --tls-key [--authority]. Output: serials,
// HSM key indexes, states, SNs, counters — never keys.

#include <iostream>
#include <memory>

#include "absl/strings/ascii.h"
#include "absl/time/time.h"
#include "audit_verify.h"
#include "commands.h"
#include "connection.h"
#include "rkl/rpc/call_context.h"
#include "rkl/rpc/status.h"
#include "rkl/v1/mtms.grpc.pb.h"

namespace rkl::rklctl {
namespace {

constexpr char kDefaultMtms[] = "localhost:50054";
// Provisioning generates an RSA key in HSM #1 and has the CA sign it: allow for that.
constexpr Area kArea{"mtms", absl::Seconds(60)};

std::unique_ptr<v1::Mtms::Stub> MtmsStub(const Endpoint& endpoint, const std::string& step) {
  auto channel = Connect(endpoint);
  if (!channel.ok()) kArea.Fail(step, channel.status());
  return v1::Mtms::NewStub(std::shared_ptr<grpc::ChannelInterface>(*channel));
}

std::string Time(int64_t unix_ms) {
  if (unix_ms == 0) return "-";
  return absl::FormatTime("%Y-%m-%dT%H:%M:%SZ", absl::FromUnixMillis(unix_ms), absl::UTCTimeZone());
}

std::string WorkKeyState(v1::WorkKey::State s) {
  std::string name = v1::WorkKey::State_Name(s);
  return name.starts_with("STATE_") ? name.substr(6) : name;
}

std::string SubmissionState(v1::SubmissionState s) {
  std::string name = v1::SubmissionState_Name(s);
  constexpr std::string_view kPrefix = "SUBMISSION_STATE_";
  return name.starts_with(kPrefix) ? name.substr(kPrefix.size()) : name;
}

void PrintWorkKey(const v1::WorkKey& k) {
  std::cout << k.serial_hex() << "  state=" << WorkKeyState(k.state())
            << "  hsm_key_index=" << k.hsm_key_index()
            << "  created=" << Time(k.created_at_unix_ms()) << "\n";
}

void PrintSubmission(const v1::Submission& s) {
  std::cout << s.submission_id() << "  sn=" << s.sn() << "  operator=" << s.operator_id()
            << "  state=" << SubmissionState(s.state()) << "  attempts=" << s.attempts()
            << "  received=" << Time(s.received_at_unix_ms());
  if (s.state() == v1::SUBMISSION_STATE_FORWARDED) {
    std::cout << "  forwarded=" << Time(s.forwarded_at_unix_ms());
  }
  if (s.state() == v1::SUBMISSION_STATE_RECEIVED && s.attempts() > 0) {
    std::cout << "  next_attempt=" << Time(s.next_attempt_at_unix_ms()) << "  last_error=\""
              << s.last_error() << "\"";
  }
  if (s.state() == v1::SUBMISSION_STATE_REJECTED) std::cout << "  reason=\"" << s.reason() << "\"";
  std::cout << "\n";
}

void RegisterWorkKeyCommands(CLI::App* mtms) {
  auto* work_key = mtms->add_subcommand("work-key", "HSM work key pair (Pu/Pr) and HsmWCRT");
  work_key->require_subcommand(1);

  {
    struct Args {
      Endpoint endpoint;
      bool rotate = false;
      uint32_t rsa_bits = 0;
    };
    auto [cmd, args] = AddServiceCommand<Args>(
        work_key, "provision",
        "have HSM #1 generate Pu/Pr and the CA certify it (idempotent unless --rotate)", "mtms",
        kDefaultMtms);
    cmd->add_flag("--rotate", args->rotate,
                  "make a new pair current; the old one stays accepted until retired");
    cmd->add_option("--rsa-bits", args->rsa_bits, "2048 or 3072 (default: the server's)")
        ->check(CLI::IsMember({0, 2048, 3072}));
    cmd->callback([args] {
      auto stub = MtmsStub(args->endpoint, "work-key provision");
      v1::ProvisionWorkKeyRequest req;
      req.set_rotate(args->rotate);
      req.set_rsa_bits(args->rsa_bits);
      v1::WorkKey resp =
          kArea.Call("work-key provision", *stub, &v1::Mtms::Stub::ProvisionWorkKey, req);
      PrintWorkKey(resp);
    });
  }
  {
    auto endpoint = std::make_shared<Endpoint>();
    auto* cmd = work_key->add_subcommand("list", "all work keys, newest first");
    AddEndpointOptions(cmd, *endpoint, "mtms", kDefaultMtms);
    cmd->callback([endpoint] {
      auto stub = MtmsStub(*endpoint, "work-key list");
      v1::ListWorkKeysResponse resp =
          kArea.Call("work-key list", *stub, &v1::Mtms::Stub::ListWorkKeys, {});
      for (const auto& k : resp.work_keys()) PrintWorkKey(k);
    });
  }
  {
    struct Args {
      Endpoint endpoint;
      std::string serial;
      bool force = false;
    };
    auto args = std::make_shared<Args>();
    auto* cmd =
        work_key->add_subcommand("retire", "stop accepting packages made for a previous work key");
    AddEndpointOptions(cmd, args->endpoint, "mtms", kDefaultMtms);
    cmd->add_option("--serial", args->serial, "serial (hex) of the work certificate")->required();
    cmd->add_flag("--force", args->force,
                  "retire even though queued packages name it (they will be REJECTED)");
    cmd->callback([args] {
      auto stub = MtmsStub(args->endpoint, "work-key retire");
      v1::RetireWorkKeyRequest req;
      req.set_serial_hex(args->serial);
      req.set_force(args->force);
      v1::WorkKey resp = kArea.Call("work-key retire", *stub, &v1::Mtms::Stub::RetireWorkKey, req);
      PrintWorkKey(resp);
    });
  }
}

void RegisterQueueCommands(CLI::App* mtms) {
  struct Args {
    Endpoint endpoint;
    std::string state;
    uint32_t page_size = 0;
    bool all = false;
  };
  auto [queue, args] = AddServiceCommand<Args>(
      mtms, "queue", "table SN-Key_MTMS: packages and their forwarding", "mtms", kDefaultMtms);
  queue->add_option("--state", args->state, "received | forwarded | rejected (default: all)")
      ->check(CLI::IsMember({"received", "forwarded", "rejected"}, CLI::ignore_case));
  queue->add_option("--page-size", args->page_size, "rows per page (default 100, at most 1000)");
  queue->add_flag("--all", args->all, "follow every page");
  queue->callback([args] {
    auto stub = MtmsStub(args->endpoint, "queue");
    v1::ListQueueRequest req;
    const std::string state = absl::AsciiStrToLower(args->state);
    if (state == "received") req.set_state(v1::SUBMISSION_STATE_RECEIVED);
    if (state == "forwarded") req.set_state(v1::SUBMISSION_STATE_FORWARDED);
    if (state == "rejected") req.set_state(v1::SUBMISSION_STATE_REJECTED);
    req.mutable_page()->set_page_size(args->page_size);
    v1::ListQueueResponse resp;
    do {
      resp = kArea.Call("queue", *stub, &v1::Mtms::Stub::ListQueue, req);
      for (const auto& s : resp.submissions()) PrintSubmission(s);
      req.mutable_page()->set_page_token(resp.next_page_token());
    } while (args->all && !resp.next_page_token().empty());
    std::cout << "received=" << resp.received() << "  forwarded=" << resp.forwarded()
              << "  rejected=" << resp.rejected() << "\n";
    if (!args->all && !resp.next_page_token().empty()) std::cout << "(more: use --all)\n";
  });

  auto endpoint = std::make_shared<Endpoint>();
  auto* forward = mtms->add_subcommand(
      "forward-now", "make every RECEIVED package due and run one forwarder pass now");
  AddEndpointOptions(forward, *endpoint, "mtms", kDefaultMtms);
  forward->callback([endpoint] {
    auto stub = MtmsStub(*endpoint, "forward-now");
    v1::ForceForwardResponse resp =
        kArea.Call("forward-now", *stub, &v1::Mtms::Stub::ForceForward, {});
    std::cout << "forwarded=" << resp.forwarded() << "  rejected=" << resp.rejected()
              << "  retry_later=" << resp.retry_later() << "\n";
  });
}

}  // namespace

void RegisterMtmsCommands(CLI::App& app) {
  CLI::App* mtms =
      AddCommandGroup(app, "mtms", "rkl-mtms: work keys, the forwarding queue, audit verification",
                      {RegisterWorkKeyCommands, RegisterQueueCommands});
  AddAuditVerifyCommand(mtms, "MTMS", "mtms", kDefaultMtms,
                        [](const Endpoint& endpoint, const v1::VerifyAuditChainRequest& req) {
                          auto stub = MtmsStub(endpoint, "audit-verify");
                          v1::VerifyAuditChainResponse resp = kArea.Call(
                              "audit-verify", *stub, &v1::Mtms::Stub::VerifyAuditChain, req);
                          return resp;
                        });
}

}  // namespace rkl::rklctl
