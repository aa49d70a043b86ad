// Bad input against a live deployment: every RPC of every service (CA, HSM #1, HSM #2,
// MTMS, KMS) receives malformed and oversized fields over real mTLS, with a caller identity
// the RPC admits, so each request reaches validation. Every answer must be the code
// PROTOCOL §10 and docs/<service>.md document — never OK, INTERNAL or UNKNOWN — its message
// must not echo the input, and afterwards every service must still report SERVING.
//
// Run by bad_input.sh after rkl_up; it passes endpoints and files in the environment:
//   E2E_PKI                 rklctl pki init output (service and admin identities)
//   E2E_<SVC>_ADDR          host:port of ca, hsm_mtms, hsm_kms, mtms, kms
//   E2E_HSM_MTMS_PK_INDEX, E2E_HSM_KMS_PK_INDEX, E2E_HSM_KMS_MAK_INDEX  (ceremony)
//   E2E_OPERATOR_CARD, E2E_OPERATOR_PIN_FILE   the operator card
//   E2E_PENDING_SN          a terminal KMS holds in TK_RECEIVED (its TK was forwarded)
//   E2E_INSTALLED_SN        an INSTALLED terminal
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <functional>
#include <future>
#include <iostream>
#include <iterator>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "e2e_support.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/dynamic_message.h"
#include "google/protobuf/message.h"
#include "rkl/common/hex.h"
#include "rkl/crypto/ecdsa.h"
#include "rkl/crypto/keys.h"
#include "rkl/crypto/pkcs12.h"
#include "rkl/crypto/random.h"
#include "rkl/crypto/rsa.h"
#include "rkl/crypto/secret_bytes.h"
#include "rkl/crypto/x509.h"
#include "rkl/crypto/x509_csr.h"
#include "rkl/rpc/call_context.h"
#include "rkl/rpc/channel.h"
#include "rkl/rpc/health.h"
#include "rkl/rpc/server.h"
#include "rkl/v1/ca.grpc.pb.h"
#include "rkl/v1/hsm.grpc.pb.h"
#include "rkl/v1/kms.grpc.pb.h"
#include "rkl/v1/mtms.grpc.pb.h"
#include "rkl/v1/revocation.grpc.pb.h"

namespace rkl::e2e {
namespace {

using grpc::StatusCode;
namespace pb = google::protobuf;

constexpr int kServerMax = rpc::kDefaultMaxMessageBytes;  // every daemon's limit (1 MiB)
constexpr size_t kJustUnder = kServerMax - 64 * 1024;
constexpr size_t kJustOver = kServerMax + 16 * 1024;
// An error message that names the field and the rule is short; one that echoes a 1 MiB
// input is a defect (logs, clients).
constexpr size_t kMaxErrorMessage = 2048;

// A new channel (own connection) to `service` as `who`.
std::shared_ptr<grpc::Channel> FreshChannel(const std::string& service, Who who) {
  rpc::ChannelOptions options = ChannelOptionsAs(service, who);
  // Larger than the servers' limit, so an oversized request reaches the server and the
  // server (not this client) is what refuses it.
  options.max_message_bytes = 8 * kServerMax;
  auto channel = rpc::MakeChannel(ServiceAddress(service), options);
  EXPECT_TRUE(channel.ok()) << channel.status();
  return channel.ok() ? *channel : nullptr;
}

// One shared channel per (service, identity).
std::shared_ptr<grpc::Channel> Channel(const std::string& service, Who who) {
  static std::map<std::pair<std::string, Who>, std::shared_ptr<grpc::Channel>> cache;
  auto& slot = cache[{service, who}];
  if (!slot) slot = FreshChannel(service, who);
  return slot;
}

std::string Big(size_t n, char c = 'A') { return std::string(n, c); }

// Calls stub method `m` and returns its status.
template <typename Stub, typename Req, typename Resp>
grpc::Status Call(Stub& stub, grpc::Status (Stub::*m)(grpc::ClientContext*, const Req&, Resp*),
                  const Req& req) {
  auto ctx = rpc::MakeClientContext(absl::Seconds(30));
  Resp resp;
  return (stub.*m)(ctx.get(), req, &resp);
}

std::string CodeName(StatusCode code) {
  static const std::map<StatusCode, std::string> names = {
      {StatusCode::OK, "OK"},
      {StatusCode::CANCELLED, "CANCELLED"},
      {StatusCode::UNKNOWN, "UNKNOWN"},
      {StatusCode::INVALID_ARGUMENT, "INVALID_ARGUMENT"},
      {StatusCode::DEADLINE_EXCEEDED, "DEADLINE_EXCEEDED"},
      {StatusCode::NOT_FOUND, "NOT_FOUND"},
      {StatusCode::ALREADY_EXISTS, "ALREADY_EXISTS"},
      {StatusCode::PERMISSION_DENIED, "PERMISSION_DENIED"},
      {StatusCode::RESOURCE_EXHAUSTED, "RESOURCE_EXHAUSTED"},
      {StatusCode::FAILED_PRECONDITION, "FAILED_PRECONDITION"},
      {StatusCode::ABORTED, "ABORTED"},
      {StatusCode::UNIMPLEMENTED, "UNIMPLEMENTED"},
      {StatusCode::INTERNAL, "INTERNAL"},
      {StatusCode::UNAVAILABLE, "UNAVAILABLE"},
      {StatusCode::UNAUTHENTICATED, "UNAUTHENTICATED"}};
  auto it = names.find(code);
  return it == names.end() ? std::to_string(static_cast<int>(code)) : it->second;
}

#define EXPECT_CODE(expr, code)                                                                  \
  do {                                                                                           \
    const grpc::Status _s = (expr);                                                              \
    EXPECT_EQ(CodeName(_s.error_code()), CodeName(code)) << #expr << ": " << _s.error_message(); \
    EXPECT_LT(_s.error_message().size(), kMaxErrorMessage) << #expr << ": message echoes input"; \
  } while (0)

// ---------------------------------------------------------------------------------------
// Every RPC of every service, generically: the descriptors list the methods, so an RPC
// added later is covered without editing this test.

struct ServiceUnderTest {
  std::string full_name;  // e.g. "rkl.v1.Kms"
  std::string endpoint;   // service name: ca, hsm-mtms, hsm-kms, mtms, kms
  std::function<Who(const std::string& method)> who;
  // Whether anyone may call the method here (an HSM serves only its role's commands).
  std::function<bool(const std::string& method)> served = [](const std::string&) { return true; };
};

// Each HSM role's commands, for its own service; the custodian and admin commands are the
// same on both (docs/hsm.md, "Who may call what").
bool IsHsmAdminRpc(const std::string& m) {
  return m == "BeginCeremony" || m == "GetCeremony" || m == "AddComponent" ||
         m == "CompleteCeremony" || m == "GetKeyInfo" || m == "DeleteKey" ||
         m == "VerifyAuditChain";
}
bool IsHsm1Rpc(const std::string& m) {
  return m == "GenerateRsaKeyPair" || m == "GetPublicKey" || m == "TranslateTransportKey" ||
         m == "TranslateTransportKeys" || m == "GenerateRandom";
}
bool IsHsm2Rpc(const std::string& m) {
  return m == "ImportAndChallenge" || m == "AuthChallenge" || m == "AuthenticateAndDeliver" ||
         m == "VerifyInstallProof" || m == "DestroyTerminalKeys" || m == "GenerateRandom" ||
         m == "GenerateKdhKey" || m == "BuildKeyToken" || m == "VerifyKeyTokenInstallProof";
}

std::vector<ServiceUnderTest> Services() {
  // Links revocation.proto's descriptors in: nothing else here names its messages.
  (void)rkl::v1::RefreshCrlRequest::descriptor();
  auto admin = [](const std::string&) { return Who::kAdmin; };
  // On either HSM role, key ceremonies are the custodians' (issue 20); key state, deletion
  // and audit the admins'.
  auto hsm = [](const std::string& m) {
    return m == "BeginCeremony" || m == "AddComponent" || m == "CompleteCeremony" ? Who::kCustodian
                                                                                  : Who::kAdmin;
  };
  return {
      {"rkl.v1.CertificateAuthority", "ca",
       [](const std::string& m) {
         if (m == "IssueWorkCertificate") return Who::kMtms;
         if (m == "IssueKdhCertificate") return Who::kKms;
         return Who::kAdmin;
       }},
      // GetCertifiableKey, on both roles, is the CA's.
      {"rkl.v1.Hsm", "hsm-mtms",
       [hsm](const std::string& m) {
         if (m == "GetCertifiableKey") return Who::kCa;
         return IsHsmAdminRpc(m) ? hsm(m) : Who::kMtms;
       },
       [](const std::string& m) {
         return IsHsmAdminRpc(m) || IsHsm1Rpc(m) || m == "GetCertifiableKey";
       }},
      {"rkl.v1.Hsm", "hsm-kms",
       [hsm](const std::string& m) {
         if (m == "GetCertifiableKey") return Who::kCa;
         return IsHsmAdminRpc(m) ? hsm(m) : Who::kKms;
       },
       [](const std::string& m) {
         return IsHsmAdminRpc(m) || IsHsm2Rpc(m) || m == "GetCertifiableKey";
       }},
      {"rkl.v1.Mtms", "mtms", admin},
      {"rkl.v1.Kms", "kms",
       [](const std::string& m) {
         if (m == "SubmitTransportKey" || m == "SubmitTransportKeys") return Who::kMtms;
         if (m == "BeginAuthentication" || m == "CompleteAuthentication" ||
             m == "ConfirmInstallation" || m == "GetKdhCredential" || m == "RequestKeyToken" ||
             m == "ConfirmKeyToken") {
           return Who::kNone;  // terminals present no certificate
         }
         return Who::kAdmin;
       }},
      // Served beside each service by every rkl server (libs/rpc, client revocation).
      {"rkl.v1.Revocation", "ca", admin},
      {"rkl.v1.Revocation", "hsm-mtms", admin},
      {"rkl.v1.Revocation", "hsm-kms", admin},
      {"rkl.v1.Revocation", "mtms", admin},
      {"rkl.v1.Revocation", "kms", admin},
  };
}

grpc::Status RawCall(const std::shared_ptr<grpc::Channel>& channel, const std::string& method,
                     const std::string& payload) {
  grpc::GenericStub stub(channel);
  auto ctx = rpc::MakeClientContext(absl::Seconds(60));
  grpc::Slice slice(payload);
  grpc::ByteBuffer request(&slice, 1);
  grpc::ByteBuffer response;
  std::promise<grpc::Status> done;
  stub.UnaryCall(ctx.get(), method, grpc::StubOptions(), &request, &response,
                 [&done](grpc::Status s) { done.set_value(std::move(s)); });
  return done.get_future().get();
}

// Sets the first string/bytes field (depth first, into sub-messages) to `value`.
bool FillFirstStringField(pb::Message* message, const std::string& value) {
  const pb::Descriptor* d = message->GetDescriptor();
  const pb::Reflection* r = message->GetReflection();
  for (int i = 0; i < d->field_count(); ++i) {
    const pb::FieldDescriptor* f = d->field(i);
    if (f->cpp_type() == pb::FieldDescriptor::CPPTYPE_STRING) {
      if (f->is_repeated()) {
        r->AddString(message, f, value);
      } else {
        r->SetString(message, f, value);
      }
      return true;
    }
    if (f->cpp_type() == pb::FieldDescriptor::CPPTYPE_MESSAGE && !f->is_repeated() &&
        !f->is_map() && FillFirstStringField(r->MutableMessage(message, f), value)) {
      return true;
    }
  }
  return false;
}

// A request just over the server's limit never reaches a handler: RESOURCE_EXHAUSTED, for
// every RPC of every service.
TEST(EveryRpc, OverTheMessageLimitIsResourceExhausted) {
  for (const ServiceUnderTest& svc : Services()) {
    const pb::ServiceDescriptor* sd =
        pb::DescriptorPool::generated_pool()->FindServiceByName(svc.full_name);
    ASSERT_NE(sd, nullptr) << svc.full_name;
    for (int i = 0; i < sd->method_count(); ++i) {
      const pb::MethodDescriptor* m = sd->method(i);
      const std::string path = absl::StrCat("/", svc.full_name, "/", m->name());
      const grpc::Status s =
          RawCall(Channel(svc.endpoint, svc.who(m->name())), path, Big(kJustOver, '\x7f'));
      EXPECT_EQ(CodeName(s.error_code()), "RESOURCE_EXHAUSTED")
          << svc.endpoint << " " << path << ": " << s.error_message();
    }
  }
}

// A request just under the limit whose first text/bytes field is ~1 MiB reaches the
// handler, which must refuse the field as malformed (INVALID_ARGUMENT), never crash or
// answer INTERNAL, and not echo it.
TEST(EveryRpc, AHugeFieldJustUnderTheLimitIsInvalidArgument) {
  int covered = 0;
  for (const ServiceUnderTest& svc : Services()) {
    const pb::ServiceDescriptor* sd =
        pb::DescriptorPool::generated_pool()->FindServiceByName(svc.full_name);
    ASSERT_NE(sd, nullptr);
    for (int i = 0; i < sd->method_count(); ++i) {
      const pb::MethodDescriptor* m = sd->method(i);
      const pb::Message* prototype =
          pb::MessageFactory::generated_factory()->GetPrototype(m->input_type());
      std::unique_ptr<pb::Message> request(prototype->New());
      if (!svc.served(m->name())) continue;  // refused to everyone before any field is read
      if (!FillFirstStringField(request.get(), Big(kJustUnder))) continue;  // no such field
      ++covered;
      const std::string path = absl::StrCat("/", svc.full_name, "/", m->name());
      const grpc::Status s =
          RawCall(Channel(svc.endpoint, svc.who(m->name())), path, request->SerializeAsString());
      EXPECT_EQ(CodeName(s.error_code()), "INVALID_ARGUMENT")
          << svc.endpoint << " " << path << ": " << s.error_message().substr(0, 300);
      EXPECT_LT(s.error_message().size(), kMaxErrorMessage) << path << ": message echoes input";
    }
  }
  // Each HSM now serves only its role's commands and the admin ones (34 RPCs with a text
  // field in all, the other role's refused before any field is read).
  EXPECT_GE(covered, 34);
}

// Bytes that are not a protobuf message at all: the server cannot parse the request.
TEST(EveryRpc, UnparsableRequestIsRefusedWithoutHarm) {
  for (const ServiceUnderTest& svc : Services()) {
    const pb::ServiceDescriptor* sd =
        pb::DescriptorPool::generated_pool()->FindServiceByName(svc.full_name);
    ASSERT_NE(sd, nullptr);
    for (int i = 0; i < sd->method_count(); ++i) {
      const pb::MethodDescriptor* m = sd->method(i);
      const std::string path = absl::StrCat("/", svc.full_name, "/", m->name());
      // A length-delimited field whose length runs past the end: never valid protobuf.
      const grpc::Status s =
          RawCall(Channel(svc.endpoint, svc.who(m->name())), path, std::string("\x0a\x7f\x01", 3));
      // gRPC's C++ server answers a request it cannot deserialize with INTERNAL before any
      // rkl code runs, as the protos and docs/kms.md "Message limits" say; and the service
      // stays up.
      EXPECT_EQ(CodeName(s.error_code()), "INTERNAL") << path << ": " << s.error_message();
      EXPECT_LT(s.error_message().size(), kMaxErrorMessage) << path;
    }
  }
}

// ---------------------------------------------------------------------------------------
// Field rules, RPC by RPC.

const std::string kSn33(33, 'A');
const char kLowerSn[] = "abc-123";
const char kBadCharSn[] = "AB_C";
const char kUnknownSn[] = "E2E-NO-SUCH-TERMINAL";

std::vector<std::string> BadSns() { return {"", kSn33, kLowerSn, kBadCharSn, "A B"}; }

class KmsBadInput : public ::testing::Test {
 protected:
  std::unique_ptr<rkl::v1::Kms::Stub> terminal_ = rkl::v1::Kms::NewStub(Channel("kms", Who::kNone));
  std::unique_ptr<rkl::v1::Kms::Stub> mtms_ = rkl::v1::Kms::NewStub(Channel("kms", Who::kMtms));
  std::unique_ptr<rkl::v1::Kms::Stub> admin_ = rkl::v1::Kms::NewStub(Channel("kms", Who::kAdmin));
  using K = rkl::v1::Kms::Stub;
};

TEST_F(KmsBadInput, SubmitTransportKey) {
  rkl::v1::KmsSubmitTransportKeyRequest req;
  req.set_ctk_pk(std::string(120, '\x01'));
  for (const std::string& sn : BadSns()) {
    req.set_sn(sn);
    EXPECT_CODE(Call(*mtms_, &K::SubmitTransportKey, req), StatusCode::INVALID_ARGUMENT);
  }
  req.set_sn("E2E-BAD-SUBMIT");
  for (size_t n : {size_t{0}, size_t{1}, size_t{10}, size_t{161}, size_t{600}}) {
    req.set_ctk_pk(std::string(n, '\x01'));  // not a Ctk_pk (PROTOCOL §5), or over 160 bytes
    EXPECT_CODE(Call(*mtms_, &K::SubmitTransportKey, req), StatusCode::INVALID_ARGUMENT);
  }
  req.set_ctk_pk("RKL1garbage");
  req.set_mtms_submission_id(Big(129));
  EXPECT_CODE(Call(*mtms_, &K::SubmitTransportKey, req), StatusCode::INVALID_ARGUMENT);
  // Only MTMS may hand KMS a transport key.
  EXPECT_CODE(Call(*admin_, &K::SubmitTransportKey, req), StatusCode::PERMISSION_DENIED);
  EXPECT_CODE(Call(*terminal_, &K::SubmitTransportKey, req), StatusCode::PERMISSION_DENIED);
}

TEST_F(KmsBadInput, SubmitTransportKeys) {
  rkl::v1::KmsSubmitTransportKeysRequest batch;
  // No items, or more than 64: the call is refused whole.
  EXPECT_CODE(Call(*mtms_, &K::SubmitTransportKeys, batch), StatusCode::INVALID_ARGUMENT);
  for (int i = 0; i < 65; ++i) {
    auto* item = batch.add_items();
    item->set_sn(absl::StrCat("E2E-BAD-BATCH-", i));
    item->set_ctk_pk("RKL1garbage");
  }
  EXPECT_CODE(Call(*mtms_, &K::SubmitTransportKeys, batch), StatusCode::INVALID_ARGUMENT);
  // Bad items are each refused as SubmitTransportKey refuses them, in their own outcome.
  batch.clear_items();
  for (const std::string& sn : BadSns()) {
    auto* item = batch.add_items();
    item->set_sn(sn);
    item->set_ctk_pk(std::string(120, '\x01'));
  }
  auto* item = batch.add_items();
  item->set_sn("E2E-BAD-BATCH");
  item->set_ctk_pk("RKL1garbage");
  item->set_mtms_submission_id(Big(129));
  auto ctx = rpc::MakeClientContext(absl::Seconds(30));
  rkl::v1::KmsSubmitTransportKeysResponse outcomes;
  const grpc::Status s = mtms_->SubmitTransportKeys(ctx.get(), batch, &outcomes);
  ASSERT_TRUE(s.ok()) << s.error_message();
  ASSERT_EQ(outcomes.outcomes_size(), batch.items_size());
  for (const auto& outcome : outcomes.outcomes()) {
    EXPECT_EQ(outcome.code(), static_cast<int>(StatusCode::INVALID_ARGUMENT)) << outcome.message();
    EXPECT_LT(outcome.message().size(), kMaxErrorMessage) << "message echoes input";
  }
  // Only MTMS may hand KMS transport keys.
  EXPECT_CODE(Call(*admin_, &K::SubmitTransportKeys, batch), StatusCode::PERMISSION_DENIED);
  EXPECT_CODE(Call(*terminal_, &K::SubmitTransportKeys, batch), StatusCode::PERMISSION_DENIED);
}

TEST_F(KmsBadInput, BeginAuthentication) {
  rkl::v1::BeginAuthenticationRequest req;
  req.set_rnd1(std::string(16, '\x01'));
  for (const std::string& sn : BadSns()) {
    req.set_sn(sn);
    EXPECT_CODE(Call(*terminal_, &K::BeginAuthentication, req), StatusCode::INVALID_ARGUMENT);
  }
  req.set_sn(kUnknownSn);
  EXPECT_CODE(Call(*terminal_, &K::BeginAuthentication, req), StatusCode::NOT_FOUND);
  // The pending terminal is AES: Rnd1 is exactly one 16-byte block.
  req.set_sn(Env("E2E_PENDING_SN"));
  for (size_t n : {size_t{0}, size_t{8}, size_t{15}, size_t{17}, size_t{32}, size_t{4096}}) {
    req.set_rnd1(std::string(n, '\x02'));
    EXPECT_CODE(Call(*terminal_, &K::BeginAuthentication, req), StatusCode::INVALID_ARGUMENT);
  }
  // An INSTALLED terminal may authenticate again (one that lost the answer to its
  // confirmation, docs/kms.md "Retries"): a session opens; the terminal stays INSTALLED.
  req.set_sn(Env("E2E_INSTALLED_SN"));
  req.set_rnd1(std::string(16, '\x02'));
  EXPECT_CODE(Call(*terminal_, &K::BeginAuthentication, req), StatusCode::OK);
}

TEST_F(KmsBadInput, CompleteAuthenticationAndConfirmInstallation) {
  const std::string pending = Env("E2E_PENDING_SN");
  // A real session of the pending terminal (imports its TEK/AUK; harmless).
  rkl::v1::BeginAuthenticationRequest begin;
  begin.set_sn(pending);
  begin.set_rnd1(std::string(16, '\x03'));
  rkl::v1::BeginAuthenticationResponse session;
  {
    auto ctx = rpc::MakeClientContext(absl::Seconds(30));
    grpc::Status s = terminal_->BeginAuthentication(ctx.get(), begin, &session);
    ASSERT_TRUE(s.ok()) << s.error_message();
  }

  rkl::v1::CompleteAuthenticationRequest req;
  req.set_sn(pending);
  req.set_crnd2(std::string(32, '\x04'));
  for (const std::string& id : {std::string(""), std::string("xyz"), std::string(31, 'a'),
                                std::string(32, 'A'), std::string(33, 'a'), Big(5000, 'a')}) {
    req.set_session_id(id);
    EXPECT_CODE(Call(*terminal_, &K::CompleteAuthentication, req), StatusCode::INVALID_ARGUMENT);
  }
  req.set_session_id(std::string(32, 'f'));  // well-formed, unknown
  EXPECT_CODE(Call(*terminal_, &K::CompleteAuthentication, req), StatusCode::NOT_FOUND);
  req.set_session_id(session.session_id());
  for (const std::string& sn : BadSns()) {
    req.set_sn(sn);
    EXPECT_CODE(Call(*terminal_, &K::CompleteAuthentication, req), StatusCode::INVALID_ARGUMENT);
  }
  // Another terminal's SN: the same NOT_FOUND as an unknown session (docs/kms.md).
  req.set_sn(Env("E2E_INSTALLED_SN"));
  EXPECT_CODE(Call(*terminal_, &K::CompleteAuthentication, req), StatusCode::NOT_FOUND);
  req.set_sn(pending);
  // Wrong Crnd2 length: not an attempt, the session stays usable.
  for (size_t n : {size_t{0}, size_t{16}, size_t{31}, size_t{33}, size_t{64}}) {
    req.set_crnd2(std::string(n, '\x05'));
    EXPECT_CODE(Call(*terminal_, &K::CompleteAuthentication, req), StatusCode::INVALID_ARGUMENT);
  }

  rkl::v1::ConfirmInstallationRequest confirm;
  confirm.set_sn(pending);
  confirm.set_proof(std::string(16, '\x06'));
  for (const std::string& id : {std::string(""), std::string("not-hex"), Big(100, 'a')}) {
    confirm.set_session_id(id);
    EXPECT_CODE(Call(*terminal_, &K::ConfirmInstallation, confirm), StatusCode::INVALID_ARGUMENT);
  }
  confirm.set_session_id(std::string(32, 'e'));
  EXPECT_CODE(Call(*terminal_, &K::ConfirmInstallation, confirm), StatusCode::NOT_FOUND);
  confirm.set_session_id(session.session_id());
  for (const std::string& sn : BadSns()) {
    confirm.set_sn(sn);
    EXPECT_CODE(Call(*terminal_, &K::ConfirmInstallation, confirm), StatusCode::INVALID_ARGUMENT);
  }
  confirm.set_sn(pending);
  // A proof, of any length, on a session that never authenticated: the proof's length
  // depends on the terminal's algorithm and is checked only once the session is
  // AUTHENTICATED (kms_core.cc ConfirmInstallation), so the session state answers first.
  for (size_t n : {size_t{0}, size_t{15}, size_t{16}, size_t{17}, size_t{1000}}) {
    confirm.set_proof(std::string(n, '\x06'));
    EXPECT_CODE(Call(*terminal_, &K::ConfirmInstallation, confirm),
                StatusCode::FAILED_PRECONDITION);
  }
}

TEST_F(KmsBadInput, AdminRpcs) {
  rkl::v1::GetTerminalRequest get;
  for (const std::string& sn : BadSns()) {
    get.set_sn(sn);
    EXPECT_CODE(Call(*admin_, &K::GetTerminal, get), StatusCode::INVALID_ARGUMENT);
  }
  get.set_sn(kUnknownSn);
  EXPECT_CODE(Call(*admin_, &K::GetTerminal, get), StatusCode::NOT_FOUND);
  get.set_sn(Env("E2E_INSTALLED_SN"));
  EXPECT_CODE(Call(*terminal_, &K::GetTerminal, get), StatusCode::PERMISSION_DENIED);
  EXPECT_CODE(Call(*mtms_, &K::GetTerminal, get), StatusCode::PERMISSION_DENIED);

  rkl::v1::ListTerminalsRequest list;
  list.set_state(static_cast<rkl::v1::TerminalState>(99));
  EXPECT_CODE(Call(*admin_, &K::ListTerminals, list), StatusCode::INVALID_ARGUMENT);
  list.set_state(rkl::v1::TERMINAL_STATE_UNSPECIFIED);
  for (const std::string& prefix : {kSn33, std::string(kLowerSn), std::string("A%")}) {
    list.set_sn_prefix(prefix);
    EXPECT_CODE(Call(*admin_, &K::ListTerminals, list), StatusCode::INVALID_ARGUMENT);
  }
  list.set_sn_prefix("");
  list.mutable_page()->set_page_size(1001);
  EXPECT_CODE(Call(*admin_, &K::ListTerminals, list), StatusCode::INVALID_ARGUMENT);
  list.mutable_page()->set_page_size(10);
  list.mutable_page()->set_page_token("not-a-token");
  EXPECT_CODE(Call(*admin_, &K::ListTerminals, list), StatusCode::INVALID_ARGUMENT);
  EXPECT_CODE(Call(*terminal_, &K::ListTerminals, list), StatusCode::PERMISSION_DENIED);

  using AdminRpc = grpc::Status (K::*)(grpc::ClientContext*, const rkl::v1::TerminalAdminRequest&,
                                       rkl::v1::Terminal*);
  for (AdminRpc rpc : {&K::UnlockTerminal, &K::RevokeTerminal, &K::MarkForRekey}) {
    rkl::v1::TerminalAdminRequest req;
    req.set_reason("e2e bad input");
    for (const std::string& sn : BadSns()) {
      req.set_sn(sn);
      EXPECT_CODE(Call(*admin_, rpc, req), StatusCode::INVALID_ARGUMENT);
    }
    req.set_sn(kUnknownSn);
    EXPECT_CODE(Call(*admin_, rpc, req), StatusCode::NOT_FOUND);
    req.set_sn(Env("E2E_INSTALLED_SN"));
    req.set_reason(Big(257, 'r'));
    EXPECT_CODE(Call(*admin_, rpc, req), StatusCode::INVALID_ARGUMENT);
    req.set_reason("line\nbreak");
    EXPECT_CODE(Call(*admin_, rpc, req), StatusCode::INVALID_ARGUMENT);
    EXPECT_CODE(Call(*terminal_, rpc, req), StatusCode::PERMISSION_DENIED);
    EXPECT_CODE(Call(*mtms_, rpc, req), StatusCode::PERMISSION_DENIED);
  }
  rkl::v1::TerminalAdminRequest unlock;
  unlock.set_sn(Env("E2E_INSTALLED_SN"));
  unlock.set_reason("not locked");
  EXPECT_CODE(Call(*admin_, &K::UnlockTerminal, unlock), StatusCode::FAILED_PRECONDITION);

  EXPECT_CODE(Call(*terminal_, &K::GetStatistics, rkl::v1::Empty()), StatusCode::PERMISSION_DENIED);
  EXPECT_CODE(Call(*mtms_, &K::GetStatistics, rkl::v1::Empty()), StatusCode::PERMISSION_DENIED);

  rkl::v1::ListAuditRequest audit;
  audit.set_sn(kLowerSn);
  EXPECT_CODE(Call(*admin_, &K::ListAudit, audit), StatusCode::INVALID_ARGUMENT);
  audit.set_sn("");
  audit.mutable_page()->set_page_size(5000);
  EXPECT_CODE(Call(*admin_, &K::ListAudit, audit), StatusCode::INVALID_ARGUMENT);
  audit.mutable_page()->set_page_size(0);
  audit.mutable_page()->set_page_token("zzz");
  EXPECT_CODE(Call(*admin_, &K::ListAudit, audit), StatusCode::INVALID_ARGUMENT);
  EXPECT_CODE(Call(*terminal_, &K::ListAudit, audit), StatusCode::PERMISSION_DENIED);
}

class MtmsBadInput : public ::testing::Test {
 protected:
  void SetUp() override {
    rkl::v1::GetWorkCertificateResponse wc;
    auto ctx = rpc::MakeClientContext(absl::Seconds(30));
    grpc::Status s = public_->GetWorkCertificate(ctx.get(), {}, &wc);
    ASSERT_TRUE(s.ok()) << s.error_message();
    work_serial_ = wc.serial_hex();

    const std::string pin_line = ReadFile(Env("E2E_OPERATOR_PIN_FILE"));
    const std::string pin = pin_line.substr(0, pin_line.find('\n'));
    const std::string p12 = ReadFile(Env("E2E_OPERATOR_CARD"));
    auto card = crypto::ReadPkcs12(AsBytes(p12), crypto::SecretBytes::CopyOf(AsBytes(pin)));
    ASSERT_TRUE(card.ok()) << card.status();
    operator_cert_pem_ = card->certificate.ToPem();
    const std::string cn = card->certificate.SubjectCommonName();
    operator_id_ = cn.substr(cn.find(':') + 1);
    operator_key_ = std::make_unique<crypto::PrivateKey>(std::move(card->private_key));
  }

  // A package that passes every field rule (MTMS check 1).
  rkl::v1::TransportKeyPackage GoodPackage() const {
    rkl::v1::TransportKeyPackage p;
    p.set_sn("E2E-BAD-MTMS");
    p.set_ctk_pu(std::string(256, '\x01'));
    p.set_work_certificate_serial(work_serial_);
    p.set_algorithm(rkl::v1::KEY_ALGORITHM_AES128);
    p.set_created_at_unix_ms(absl::ToUnixMillis(absl::Now()));
    p.set_nonce(std::string(16, '\x02'));
    p.set_operator_id(operator_id_);
    return p;
  }

  grpc::Status Submit(const std::string& package, const std::string& signature,
                      const std::string& cert_pem) {
    rkl::v1::SubmitTransportKeyRequest req;
    req.set_package(package);
    req.set_signature(signature);
    req.set_operator_certificate_pem(cert_pem);
    return Call(*public_, &M::SubmitTransportKey, req);
  }

  grpc::Status SubmitSigned(const rkl::v1::TransportKeyPackage& p) {
    const std::string bytes = p.SerializeAsString();
    auto sig = crypto::EcdsaSign(*operator_key_, AsBytes(bytes));
    EXPECT_TRUE(sig.ok());
    return Submit(bytes, std::string(sig->begin(), sig->end()), operator_cert_pem_);
  }

  using M = rkl::v1::Mtms::Stub;
  std::unique_ptr<M> public_ = rkl::v1::Mtms::NewStub(Channel("mtms", Who::kNone));
  std::unique_ptr<M> admin_ = rkl::v1::Mtms::NewStub(Channel("mtms", Who::kAdmin));
  std::string work_serial_, operator_cert_pem_, operator_id_;
  std::unique_ptr<crypto::PrivateKey> operator_key_;
};

TEST_F(MtmsBadInput, SubmitTransportKeyFieldRules) {
  // Check 1: sizes and every package field, each one wrong in turn (properly signed).
  EXPECT_CODE(Submit("not a protobuf \xff\xff", "sig", operator_cert_pem_),
              StatusCode::INVALID_ARGUMENT);
  EXPECT_CODE(Submit(Big(4097), "sig", operator_cert_pem_), StatusCode::INVALID_ARGUMENT);
  EXPECT_CODE(Submit(GoodPackage().SerializeAsString(), Big(129), operator_cert_pem_),
              StatusCode::INVALID_ARGUMENT);
  EXPECT_CODE(Submit(GoodPackage().SerializeAsString(), "sig", Big(16 * 1024 + 1)),
              StatusCode::INVALID_ARGUMENT);
  std::vector<std::function<void(rkl::v1::TransportKeyPackage&)>> breakers = {
      [](auto& p) { p.set_sn(""); },
      [](auto& p) { p.set_sn(kSn33); },
      [](auto& p) { p.set_sn(kLowerSn); },
      [](auto& p) { p.set_sn(kBadCharSn); },
      [](auto& p) { p.set_ctk_pu(std::string(255, '\x01')); },
      [](auto& p) { p.set_ctk_pu(std::string(257, '\x01')); },
      [](auto& p) { p.set_ctk_pu(""); },
      [](auto& p) { p.set_work_certificate_serial("not-hex"); },
      [](auto& p) { p.set_work_certificate_serial(std::string(41, 'A')); },
      [](auto& p) { p.set_work_certificate_serial("abcdef"); },  // lower case
      [](auto& p) { p.set_algorithm(rkl::v1::KEY_ALGORITHM_UNSPECIFIED); },
      [](auto& p) { p.set_algorithm(static_cast<rkl::v1::KeyAlgorithm>(99)); },
      [](auto& p) { p.set_created_at_unix_ms(0); },
      [](auto& p) { p.set_created_at_unix_ms(-5); },
      [](auto& p) { p.set_nonce(std::string(15, '\x02')); },
      [](auto& p) { p.set_nonce(std::string(17, '\x02')); },
      [](auto& p) { p.set_nonce(""); },
      [](auto& p) { p.set_operator_id("Operator One"); },
      [](auto& p) { p.set_operator_id(""); },
  };
  for (size_t i = 0; i < breakers.size(); ++i) {
    rkl::v1::TransportKeyPackage p = GoodPackage();
    breakers[i](p);
    SCOPED_TRACE(absl::StrCat("package rule #", i));
    EXPECT_CODE(SubmitSigned(p), StatusCode::INVALID_ARGUMENT);
  }
  // Unknown fields in the signed bytes are refused (MTMS stores B byte-exact).
  std::string with_unknown = GoodPackage().SerializeAsString() + std::string("\xfa\x01\x01x", 4);
  EXPECT_CODE(Submit(with_unknown, "sig", operator_cert_pem_), StatusCode::INVALID_ARGUMENT);
}

TEST_F(MtmsBadInput, SubmitTransportKeyCertificateAndSignature) {
  const std::string package = GoodPackage().SerializeAsString();
  // Check 2: not one PEM certificate.
  for (const std::string& pem :
       {std::string(""), std::string("garbage"),
        std::string("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"),
        operator_cert_pem_ + operator_cert_pem_}) {
    EXPECT_CODE(Submit(package, "sig", pem), StatusCode::INVALID_ARGUMENT);
  }
  // Check 4: a certificate that does not chain to operator-ca (a service certificate).
  EXPECT_CODE(Submit(package, "sig", ReadFile(Env("E2E_PKI") + "/mtms/cert.pem")),
              StatusCode::UNAUTHENTICATED);
  // Check 7: a signature that is not DER; one that is DER but by another key.
  EXPECT_CODE(Submit(package, "not DER", operator_cert_pem_), StatusCode::INVALID_ARGUMENT);
  auto other = crypto::GenerateEcP256Key();
  ASSERT_TRUE(other.ok());
  auto sig = crypto::EcdsaSign(*other, AsBytes(package));
  ASSERT_TRUE(sig.ok());
  EXPECT_CODE(Submit(package, std::string(sig->begin(), sig->end()), operator_cert_pem_),
              StatusCode::UNAUTHENTICATED);
  // Check 8: a stale package (well-formed, properly signed).
  rkl::v1::TransportKeyPackage stale = GoodPackage();
  stale.set_created_at_unix_ms(absl::ToUnixMillis(absl::Now() - absl::Hours(1)));
  EXPECT_CODE(SubmitSigned(stale), StatusCode::FAILED_PRECONDITION);
  // Check 9: a work certificate serial MTMS never issued.
  rkl::v1::TransportKeyPackage unknown_serial = GoodPackage();
  unknown_serial.set_work_certificate_serial("0123456789ABCDEF");
  EXPECT_CODE(SubmitSigned(unknown_serial), StatusCode::FAILED_PRECONDITION);
}

// GetOwnSubmission (docs/mtms.md "Reading a submission back"), as an anonymous TLS client
// with the deployment's operator card: each rule refused, an unknown id NOT_FOUND.
TEST_F(MtmsBadInput, GetOwnSubmissionRules) {
  auto ask = [this](const rkl::v1::SubmissionQuery& q, bool with_context = true,
                    const std::string& cert = "") {
    const std::string bytes = q.SerializeAsString();
    const std::string to_sign = with_context ? "RKL-SUBMISSION-QUERY:" + bytes : bytes;
    auto sig = crypto::EcdsaSign(*operator_key_, AsBytes(to_sign));
    EXPECT_TRUE(sig.ok());
    rkl::v1::GetOwnSubmissionRequest req;
    req.set_query(bytes);
    req.set_signature(std::string(sig->begin(), sig->end()));
    req.set_operator_certificate_pem(cert.empty() ? operator_cert_pem_ : cert);
    return Call(*public_, &M::GetOwnSubmission, req);
  };
  rkl::v1::SubmissionQuery good;
  good.set_submission_id("00000000000000000000000000000000");
  good.set_operator_id(operator_id_);
  good.set_created_at_unix_ms(absl::ToUnixMillis(absl::Now()));
  EXPECT_CODE(ask(good), StatusCode::NOT_FOUND);
  EXPECT_CODE(ask(good, false), StatusCode::UNAUTHENTICATED);
  EXPECT_CODE(ask(good, true, "garbage"), StatusCode::INVALID_ARGUMENT);
  rkl::v1::SubmissionQuery q = good;
  q.set_operator_id("someone-else");
  EXPECT_CODE(ask(q), StatusCode::PERMISSION_DENIED);
  q = good;
  q.set_created_at_unix_ms(absl::ToUnixMillis(absl::Now() - absl::Minutes(10)));
  EXPECT_CODE(ask(q), StatusCode::FAILED_PRECONDITION);
  q = good;
  q.set_submission_id("");
  EXPECT_CODE(ask(q), StatusCode::INVALID_ARGUMENT);
  rkl::v1::GetOwnSubmissionRequest junk;
  junk.set_query("\xff\xff");
  junk.set_signature("sig");
  junk.set_operator_certificate_pem(operator_cert_pem_);
  EXPECT_CODE(Call(*public_, &M::GetOwnSubmission, junk), StatusCode::INVALID_ARGUMENT);
}

TEST_F(MtmsBadInput, AdminRpcs) {
  rkl::v1::GetSubmissionRequest get;
  for (const std::string& id : {std::string(""), Big(65, 'z'), Big(300, 'z')}) {
    get.set_submission_id(id);
    EXPECT_CODE(Call(*admin_, &M::GetSubmission, get), StatusCode::INVALID_ARGUMENT);
  }
  // MTMS's rule for submission ids is only "1-64 characters" (mtms_core.cc GetSubmission);
  // anything within it is looked up.
  for (const std::string& id :
       {std::string("00000000000000000000000000000000"), std::string("\x01\x02")}) {
    get.set_submission_id(id);
    EXPECT_CODE(Call(*admin_, &M::GetSubmission, get), StatusCode::NOT_FOUND);
  }
  EXPECT_CODE(Call(*public_, &M::GetSubmission, get), StatusCode::PERMISSION_DENIED);

  rkl::v1::ProvisionWorkKeyRequest provision;
  provision.set_rsa_bits(1024);
  EXPECT_CODE(Call(*admin_, &M::ProvisionWorkKey, provision), StatusCode::INVALID_ARGUMENT);
  provision.set_rsa_bits(0);
  EXPECT_CODE(Call(*public_, &M::ProvisionWorkKey, provision), StatusCode::PERMISSION_DENIED);

  rkl::v1::RetireWorkKeyRequest retire;
  for (const std::string& serial : {std::string(""), std::string("not hex"), Big(41, 'A')}) {
    retire.set_serial_hex(serial);
    EXPECT_CODE(Call(*admin_, &M::RetireWorkKey, retire), StatusCode::INVALID_ARGUMENT);
  }
  retire.set_serial_hex("0123456789ABCDEF");
  EXPECT_CODE(Call(*admin_, &M::RetireWorkKey, retire), StatusCode::NOT_FOUND);
  retire.set_serial_hex(work_serial_);  // the CURRENT key cannot be retired
  EXPECT_CODE(Call(*admin_, &M::RetireWorkKey, retire), StatusCode::FAILED_PRECONDITION);
  EXPECT_CODE(Call(*public_, &M::RetireWorkKey, retire), StatusCode::PERMISSION_DENIED);

  EXPECT_CODE(Call(*public_, &M::ListWorkKeys, rkl::v1::Empty()), StatusCode::PERMISSION_DENIED);
  EXPECT_CODE(Call(*public_, &M::ForceForward, rkl::v1::Empty()), StatusCode::PERMISSION_DENIED);

  rkl::v1::ListQueueRequest queue;
  queue.set_state(static_cast<rkl::v1::SubmissionState>(99));
  EXPECT_CODE(Call(*admin_, &M::ListQueue, queue), StatusCode::INVALID_ARGUMENT);
  queue.set_state(rkl::v1::SUBMISSION_STATE_UNSPECIFIED);
  queue.mutable_page()->set_page_size(1001);
  EXPECT_CODE(Call(*admin_, &M::ListQueue, queue), StatusCode::INVALID_ARGUMENT);
  queue.mutable_page()->set_page_size(0);
  queue.mutable_page()->set_page_token("bogus");
  EXPECT_CODE(Call(*admin_, &M::ListQueue, queue), StatusCode::INVALID_ARGUMENT);
  EXPECT_CODE(Call(*public_, &M::ListQueue, queue), StatusCode::PERMISSION_DENIED);
}

class CaBadInput : public ::testing::Test {
 protected:
  using C = rkl::v1::CertificateAuthority::Stub;
  std::unique_ptr<C> admin_ = rkl::v1::CertificateAuthority::NewStub(Channel("ca", Who::kAdmin));
  std::unique_ptr<C> mtms_ = rkl::v1::CertificateAuthority::NewStub(Channel("ca", Who::kMtms));
  std::unique_ptr<C> kms_ = rkl::v1::CertificateAuthority::NewStub(Channel("ca", Who::kKms));
};

TEST_F(CaBadInput, IssuersAndCrls) {
  for (int issuer : {0, 5, 99}) {  // 1..4 are the four issuers
    rkl::v1::GetIssuerCertificateRequest req;
    req.set_issuer(static_cast<rkl::v1::Issuer>(issuer));
    EXPECT_CODE(Call(*admin_, &C::GetIssuerCertificate, req), StatusCode::INVALID_ARGUMENT);
    rkl::v1::GetCrlRequest crl;
    crl.set_issuer(static_cast<rkl::v1::Issuer>(issuer));
    EXPECT_CODE(Call(*admin_, &C::GetCrl, crl), StatusCode::INVALID_ARGUMENT);
  }
  rkl::v1::GetCertificateStatusRequest status;
  for (const std::string& serial : {std::string(""), std::string("xyz"), Big(200, 'A')}) {
    status.set_serial_hex(serial);
    EXPECT_CODE(Call(*admin_, &C::GetCertificateStatus, status), StatusCode::INVALID_ARGUMENT);
  }
  status.set_serial_hex("4000000000000000000000000000DEAD");
  EXPECT_CODE(Call(*admin_, &C::GetCertificateStatus, status), StatusCode::NOT_FOUND);
}

TEST_F(CaBadInput, IssueWorkCertificate) {
  auto rsa = crypto::GenerateRsaKey(2048);
  ASSERT_TRUE(rsa.ok());
  const Bytes good_der = rsa->GetPublicKey().ToDer();
  auto ec = crypto::GenerateEcP256Key();
  ASSERT_TRUE(ec.ok());
  auto small = crypto::GenerateRsaKey(1024);
  rkl::v1::IssueWorkCertificateRequest req;
  req.set_hsm_id("hsm-mtms");
  req.set_key_index(1);
  for (const std::string& der :
       {std::string(""), std::string("garbage"), std::string(500, '\x30')}) {
    req.set_public_key_der(der);
    EXPECT_CODE(Call(*mtms_, &C::IssueWorkCertificate, req), StatusCode::INVALID_ARGUMENT);
  }
  const Bytes ec_der = ec->GetPublicKey().ToDer();
  req.set_public_key_der(std::string(ec_der.begin(), ec_der.end()));  // not RSA
  EXPECT_CODE(Call(*mtms_, &C::IssueWorkCertificate, req), StatusCode::INVALID_ARGUMENT);
  if (small.ok()) {
    const Bytes small_der = small->GetPublicKey().ToDer();
    req.set_public_key_der(std::string(small_der.begin(), small_der.end()));  // < 2048 bits
    EXPECT_CODE(Call(*mtms_, &C::IssueWorkCertificate, req), StatusCode::INVALID_ARGUMENT);
  }
  req.set_public_key_der(std::string(good_der.begin(), good_der.end()));
  for (const std::string& id : {std::string(""), std::string("HSM-UPPER"), Big(33, 'a')}) {
    req.set_hsm_id(id);
    EXPECT_CODE(Call(*mtms_, &C::IssueWorkCertificate, req), StatusCode::INVALID_ARGUMENT);
  }
  req.set_hsm_id("hsm-mtms");
  req.set_validity_days(100000);
  EXPECT_CODE(Call(*mtms_, &C::IssueWorkCertificate, req), StatusCode::INVALID_ARGUMENT);
  req.set_validity_days(0);
  // Only MTMS has work keys certified.
  EXPECT_CODE(Call(*admin_, &C::IssueWorkCertificate, req), StatusCode::PERMISSION_DENIED);
  EXPECT_CODE(Call(*kms_, &C::IssueWorkCertificate, req), StatusCode::PERMISSION_DENIED);
}

TEST_F(CaBadInput, CertificateRequestsApprovalsAndRevoke) {
  auto ec = crypto::GenerateEcP256Key();
  ASSERT_TRUE(ec.ok());
  auto csr = crypto::CsrBuilder().SetSubjectCommonName("ignored").Sign(*ec);
  ASSERT_TRUE(csr.ok());
  const std::string good_csr = csr->ToPem();

  rkl::v1::RequestCertificateRequest request;
  EXPECT_CODE(Call(*admin_, &C::RequestCertificate, request), StatusCode::INVALID_ARGUMENT);
  rkl::v1::IssueOperatorCertificateRequest* op = request.mutable_operator_();
  op->set_operator_id("e2e-op");
  for (const std::string& pem :
       {std::string(""), std::string("garbage"),
        std::string(
            "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n")}) {
    op->set_csr_pem(pem);
    EXPECT_CODE(Call(*admin_, &C::RequestCertificate, request), StatusCode::INVALID_ARGUMENT);
  }
  op->set_csr_pem(good_csr);
  for (const std::string& id : {std::string(""), std::string("Upper"), Big(49, 'a')}) {
    op->set_operator_id(id);
    EXPECT_CODE(Call(*admin_, &C::RequestCertificate, request), StatusCode::INVALID_ARGUMENT);
  }
  op->set_operator_id("e2e-op");
  op->set_validity_days(100000);
  EXPECT_CODE(Call(*admin_, &C::RequestCertificate, request), StatusCode::INVALID_ARGUMENT);
  EXPECT_CODE(Call(*mtms_, &C::RequestCertificate, request), StatusCode::PERMISSION_DENIED);

  rkl::v1::IssueServiceCertificateRequest* svc = request.mutable_service();
  svc->set_csr_pem("garbage");
  svc->set_name("kms");
  EXPECT_CODE(Call(*admin_, &C::RequestCertificate, request), StatusCode::INVALID_ARGUMENT);
  svc->set_csr_pem(good_csr);
  for (const std::string& name :
       {std::string(""), std::string("root"), std::string("admin:"), std::string("admin:UP"),
        std::string("custodian:"), std::string("custodian:a b")}) {
    svc->set_name(name);
    EXPECT_CODE(Call(*admin_, &C::RequestCertificate, request), StatusCode::INVALID_ARGUMENT);
  }
  svc->set_name("kms");
  svc->add_dns_names("bad_name!");
  EXPECT_CODE(Call(*admin_, &C::RequestCertificate, request), StatusCode::INVALID_ARGUMENT);
  EXPECT_CODE(Call(*kms_, &C::RequestCertificate, request), StatusCode::PERMISSION_DENIED);

  rkl::v1::ApproveCertificateRequestRequest approve;
  approve.set_subject("kms");
  for (const std::string& id : {std::string(""), std::string("xyz"), Big(200, 'A')}) {
    approve.set_request_id(id);
    EXPECT_CODE(Call(*admin_, &C::ApproveCertificateRequest, approve),
                StatusCode::INVALID_ARGUMENT);
  }
  approve.set_request_id(Big(32, 'A'));  // well formed, never issued
  EXPECT_CODE(Call(*admin_, &C::ApproveCertificateRequest, approve), StatusCode::NOT_FOUND);
  approve.set_subject("");
  EXPECT_CODE(Call(*admin_, &C::ApproveCertificateRequest, approve), StatusCode::INVALID_ARGUMENT);
  EXPECT_CODE(Call(*mtms_, &C::ApproveCertificateRequest, approve), StatusCode::PERMISSION_DENIED);
  rkl::v1::GetCertificateRequestRequest get;
  get.set_request_id("xyz");
  EXPECT_CODE(Call(*admin_, &C::GetCertificateRequest, get), StatusCode::INVALID_ARGUMENT);
  get.set_request_id(Big(32, 'A'));
  EXPECT_CODE(Call(*admin_, &C::GetCertificateRequest, get), StatusCode::NOT_FOUND);
  EXPECT_CODE(Call(*kms_, &C::GetCertificateRequest, get), StatusCode::PERMISSION_DENIED);

  rkl::v1::RevokeCertificateRequest revoke;
  revoke.set_reason(rkl::v1::REVOCATION_REASON_KEY_COMPROMISE);
  for (const std::string& serial : {std::string(""), std::string("xyz"), Big(100, 'A')}) {
    revoke.set_serial_hex(serial);
    EXPECT_CODE(Call(*admin_, &C::RevokeCertificate, revoke), StatusCode::INVALID_ARGUMENT);
  }
  revoke.set_serial_hex("4000000000000000000000000000DEAD");
  EXPECT_CODE(Call(*admin_, &C::RevokeCertificate, revoke), StatusCode::NOT_FOUND);
  revoke.set_reason(static_cast<rkl::v1::RevocationReason>(99));
  EXPECT_CODE(Call(*admin_, &C::RevokeCertificate, revoke), StatusCode::INVALID_ARGUMENT);
  revoke.set_reason(rkl::v1::REVOCATION_REASON_KEY_COMPROMISE);
  EXPECT_CODE(Call(*mtms_, &C::RevokeCertificate, revoke), StatusCode::PERMISSION_DENIED);
}

// Both HSMs get the same treatment, each with its own operational identity and the
// commands of its role (HSM #1: work key and translation; HSM #2: import, authentication,
// delivery, revocation); the other role's commands are refused to everyone.
struct HsmCase {
  const char* endpoint;
  Who operational;
  Who foreign;  // the other HSM's owner: not allowed here
  const char* pk_env;
  bool translates;  // HSM #1
};

class HsmBadInput : public ::testing::TestWithParam<HsmCase> {
 protected:
  using H = rkl::v1::Hsm::Stub;
  std::unique_ptr<H> op_ =
      rkl::v1::Hsm::NewStub(Channel(GetParam().endpoint, GetParam().operational));
  std::unique_ptr<H> admin_ = rkl::v1::Hsm::NewStub(Channel(GetParam().endpoint, Who::kAdmin));
  std::unique_ptr<H> custodian_ =
      rkl::v1::Hsm::NewStub(Channel(GetParam().endpoint, Who::kCustodian));
  std::unique_ptr<H> foreign_ =
      rkl::v1::Hsm::NewStub(Channel(GetParam().endpoint, GetParam().foreign));
  uint64_t pk() const { return EnvIndex(GetParam().pk_env); }
  bool translates() const { return GetParam().translates; }
  static constexpr uint64_t kUnknownIndex = 987654321;
};

TEST_P(HsmBadInput, KeyIndexesAndUsages) {
  rkl::v1::GetKeyInfoRequest info;
  info.set_key_index(0);
  EXPECT_CODE(Call(*admin_, &H::GetKeyInfo, info), StatusCode::INVALID_ARGUMENT);
  info.set_key_index(kUnknownIndex);
  EXPECT_CODE(Call(*admin_, &H::GetKeyInfo, info), StatusCode::NOT_FOUND);
  EXPECT_CODE(Call(*op_, &H::GetKeyInfo, info), StatusCode::PERMISSION_DENIED);

  rkl::v1::GetPublicKeyRequest pub;
  pub.set_key_index(0);
  if (translates()) {
    EXPECT_CODE(Call(*op_, &H::GetPublicKey, pub), StatusCode::INVALID_ARGUMENT);
    pub.set_key_index(kUnknownIndex);
    EXPECT_CODE(Call(*op_, &H::GetPublicKey, pub), StatusCode::NOT_FOUND);
    pub.set_key_index(pk());  // PK is not an RSA key
    EXPECT_CODE(Call(*op_, &H::GetPublicKey, pub), StatusCode::PERMISSION_DENIED);
  } else {
    EXPECT_CODE(Call(*op_, &H::GetPublicKey, pub), StatusCode::PERMISSION_DENIED);
  }
  EXPECT_CODE(Call(*admin_, &H::GetPublicKey, pub), StatusCode::PERMISSION_DENIED);

  rkl::v1::DeleteKeyRequest del;
  del.set_key_index(0);
  EXPECT_CODE(Call(*admin_, &H::DeleteKey, del), StatusCode::INVALID_ARGUMENT);
  del.set_key_index(pk());  // admins only: the operational identity may not delete
  EXPECT_CODE(Call(*op_, &H::DeleteKey, del), StatusCode::PERMISSION_DENIED);

  rkl::v1::GenerateRandomRequest rnd;
  for (uint32_t n : {0u, 1025u, 1u << 30}) {
    rnd.set_length(n);
    EXPECT_CODE(Call(*op_, &H::GenerateRandom, rnd), StatusCode::INVALID_ARGUMENT);
  }
  rkl::v1::GenerateRsaKeyPairRequest gen;
  gen.set_label("e2e-bad");
  for (uint32_t bits : {0u, 1024u, 4096u}) {
    gen.set_bits(bits);
    EXPECT_CODE(Call(*op_, &H::GenerateRsaKeyPair, gen),
                translates() ? StatusCode::INVALID_ARGUMENT : StatusCode::PERMISSION_DENIED);
  }
  gen.set_bits(2048);
  for (const std::string& label : {std::string(""), Big(65, 'l'), std::string("tab\there")}) {
    gen.set_label(label);
    EXPECT_CODE(Call(*op_, &H::GenerateRsaKeyPair, gen),
                translates() ? StatusCode::INVALID_ARGUMENT : StatusCode::PERMISSION_DENIED);
  }
  EXPECT_CODE(Call(*op_, &H::VerifyAuditChain, rkl::v1::VerifyAuditChainRequest()),
              StatusCode::PERMISSION_DENIED);
  EXPECT_CODE(Call(*op_, &H::AnchorAuditChain, rkl::v1::Empty()), StatusCode::PERMISSION_DENIED);
  rkl::v1::VerifyAuditChainRequest anchor;
  for (const std::string& bad : {std::string("rkl-hsm-audit-anchor v1"), Big(513, 'a'),
                                 std::string("rkl-hsm-audit-anchor v1 hsm=x seq=-1 head= at_ms=0 "
                                             "mac=")}) {
    anchor.set_anchor(bad);
    EXPECT_CODE(Call(*admin_, &H::VerifyAuditChain, anchor), StatusCode::INVALID_ARGUMENT);
  }
  // The other HSM's owner is a stranger here, and an admin gets no operational command.
  rnd.set_length(16);
  EXPECT_CODE(Call(*foreign_, &H::GenerateRandom, rnd), StatusCode::PERMISSION_DENIED);
  EXPECT_CODE(Call(*admin_, &H::GenerateRandom, rnd), StatusCode::PERMISSION_DENIED);
}

TEST_P(HsmBadInput, TransportKeys) {
  rkl::v1::TranslateTransportKeyRequest tr;
  tr.set_pr_index(kUnknownIndex);
  tr.set_pk_index(pk());
  tr.set_mak_index(pk() + 1);
  tr.set_created_at_unix_ms(1);
  tr.set_algorithm(rkl::v1::KEY_ALGORITHM_AES128);
  tr.set_ctk_pu(std::string(256, '\x01'));
  if (translates()) {
    for (const std::string& sn : BadSns()) {
      tr.set_sn(sn);
      EXPECT_CODE(Call(*op_, &H::TranslateTransportKey, tr), StatusCode::INVALID_ARGUMENT);
    }
    tr.set_sn("E2E-BAD-HSM");
    tr.set_algorithm(static_cast<rkl::v1::KeyAlgorithm>(99));
    EXPECT_CODE(Call(*op_, &H::TranslateTransportKey, tr), StatusCode::INVALID_ARGUMENT);
    tr.set_algorithm(rkl::v1::KEY_ALGORITHM_AES128);
    tr.set_created_at_unix_ms(-1);
    EXPECT_CODE(Call(*op_, &H::TranslateTransportKey, tr), StatusCode::INVALID_ARGUMENT);
    tr.set_created_at_unix_ms(1);
    tr.set_pr_index(0);
    EXPECT_CODE(Call(*op_, &H::TranslateTransportKey, tr), StatusCode::INVALID_ARGUMENT);
    tr.set_pr_index(kUnknownIndex);
    EXPECT_CODE(Call(*op_, &H::TranslateTransportKey, tr), StatusCode::NOT_FOUND);
    tr.set_pr_index(pk());  // PK used as Pr: outside its usage
    EXPECT_CODE(Call(*op_, &H::TranslateTransportKey, tr), StatusCode::PERMISSION_DENIED);
  } else {
    tr.set_sn("E2E-BAD-HSM");
    EXPECT_CODE(Call(*op_, &H::TranslateTransportKey, tr), StatusCode::PERMISSION_DENIED);
  }
  EXPECT_CODE(Call(*admin_, &H::TranslateTransportKey, tr), StatusCode::PERMISSION_DENIED);

  rkl::v1::ImportAndChallengeRequest begin;
  rkl::v1::ImportTransportKeyRequest* im = begin.mutable_import();
  begin.set_rnd1(std::string(16, '\x01'));
  im->set_pk_index(pk());
  im->set_mak_index(pk() + 1);
  im->set_sn("E2E-BAD-HSM");
  if (!translates()) {
    for (size_t n : {size_t{0}, size_t{5}, size_t{100}, size_t{513}}) {
      im->set_ctk_pk(std::string(n, '\x01'));
      EXPECT_CODE(Call(*op_, &H::ImportAndChallenge, begin), StatusCode::INVALID_ARGUMENT);
    }
    im->set_ctk_pk(std::string(100, '\x01'));
    for (const std::string& sn : BadSns()) {
      im->set_sn(sn);
      EXPECT_CODE(Call(*op_, &H::ImportAndChallenge, begin), StatusCode::INVALID_ARGUMENT);
    }
    im->set_sn("E2E-BAD-HSM");
    im->set_pk_index(0);
    EXPECT_CODE(Call(*op_, &H::ImportAndChallenge, begin), StatusCode::INVALID_ARGUMENT);
  } else {
    EXPECT_CODE(Call(*op_, &H::ImportAndChallenge, begin), StatusCode::PERMISSION_DENIED);
  }
  EXPECT_CODE(Call(*admin_, &H::ImportAndChallenge, begin), StatusCode::PERMISSION_DENIED);
}

TEST_P(HsmBadInput, TerminalKeyCommands) {
  const StatusCode refused_here = StatusCode::PERMISSION_DENIED;  // HSM #1 serves none of them
  rkl::v1::AuthChallengeRequest ch;
  ch.set_sn("E2E-BAD-HSM");
  ch.set_rnd1(std::string(16, '\x01'));
  ch.set_auk_index(0);
  EXPECT_CODE(Call(*op_, &H::AuthChallenge, ch),
              translates() ? refused_here : StatusCode::INVALID_ARGUMENT);
  if (!translates()) {
    ch.set_auk_index(kUnknownIndex);
    EXPECT_CODE(Call(*op_, &H::AuthChallenge, ch), StatusCode::NOT_FOUND);
    ch.set_auk_index(pk());  // PK is not an AUK
    EXPECT_CODE(Call(*op_, &H::AuthChallenge, ch), StatusCode::PERMISSION_DENIED);
    for (const std::string& sn : BadSns()) {
      ch.set_sn(sn);
      EXPECT_CODE(Call(*op_, &H::AuthChallenge, ch), StatusCode::INVALID_ARGUMENT);
    }
  }

  rkl::v1::AuthenticateAndDeliverRequest deliver;
  rkl::v1::AuthVerifyRequest* av = deliver.mutable_verify();
  av->set_sn("E2E-BAD-HSM");
  av->set_auk_index(0);
  av->set_rnd1(std::string(16, '\x01'));
  av->set_rnd2(std::string(16, '\x02'));
  av->set_crnd2(std::string(32, '\x03'));
  deliver.set_algorithm(rkl::v1::KEY_ALGORITHM_AES128);
  deliver.set_tek_index(kUnknownIndex);
  EXPECT_CODE(Call(*op_, &H::AuthenticateAndDeliver, deliver),
              translates() ? refused_here : StatusCode::INVALID_ARGUMENT);
  if (!translates()) {
    av->set_auk_index(kUnknownIndex);
    EXPECT_CODE(Call(*op_, &H::AuthenticateAndDeliver, deliver), StatusCode::NOT_FOUND);
    av->set_auk_index(pk());
    EXPECT_CODE(Call(*op_, &H::AuthenticateAndDeliver, deliver), StatusCode::PERMISSION_DENIED);
    for (const std::string& sn : BadSns()) {
      av->set_sn(sn);
      EXPECT_CODE(Call(*op_, &H::AuthenticateAndDeliver, deliver), StatusCode::INVALID_ARGUMENT);
    }
  }
  EXPECT_CODE(Call(*admin_, &H::AuthenticateAndDeliver, deliver), StatusCode::PERMISSION_DENIED);

  rkl::v1::VerifyInstallProofRequest vp;
  vp.set_sn("E2E-BAD-HSM");
  vp.set_auk_index(kUnknownIndex);
  vp.set_rnd1(std::string(16, '\x01'));
  vp.set_rnd2(std::string(16, '\x02'));
  vp.set_proof(std::string(16, '\x03'));
  for (const std::string& kcv : {std::string(""), std::string("XYZ123"), std::string("ABCDEF01")}) {
    vp.set_tmk_kcv(kcv);
    EXPECT_CODE(Call(*op_, &H::VerifyInstallProof, vp),
                translates() ? refused_here : StatusCode::INVALID_ARGUMENT);
  }

  rkl::v1::DestroyTerminalKeysRequest destroy;
  for (const std::string& sn : BadSns()) {
    destroy.set_sn(sn);
    EXPECT_CODE(Call(*op_, &H::DestroyTerminalKeys, destroy),
                translates() ? refused_here : StatusCode::INVALID_ARGUMENT);
  }
  destroy.set_sn("E2E-BAD-HSM");
  destroy.set_reason(Big(300, 'r'));
  EXPECT_CODE(Call(*op_, &H::DestroyTerminalKeys, destroy),
              translates() ? refused_here : StatusCode::INVALID_ARGUMENT);
  EXPECT_CODE(Call(*admin_, &H::DestroyTerminalKeys, destroy), StatusCode::PERMISSION_DENIED);
}

TEST_P(HsmBadInput, CeremonyCommands) {
  rkl::v1::BeginCeremonyRequest begin;
  begin.set_label("e2e-bad-ceremony");
  begin.set_key_type(rkl::v1::KEY_TYPE_TEK);  // only PK or MAK come from components
  begin.set_component_count(2);
  EXPECT_CODE(Call(*custodian_, &H::BeginCeremony, begin), StatusCode::INVALID_ARGUMENT);
  begin.set_key_type(rkl::v1::KEY_TYPE_PK);
  for (uint32_t n : {0u, 1u, 10u}) {
    begin.set_component_count(n);
    EXPECT_CODE(Call(*custodian_, &H::BeginCeremony, begin), StatusCode::INVALID_ARGUMENT);
  }
  begin.set_component_count(2);
  begin.set_ttl_seconds(25 * 3600);  // more than 24 h
  EXPECT_CODE(Call(*custodian_, &H::BeginCeremony, begin), StatusCode::INVALID_ARGUMENT);
  begin.set_ttl_seconds(0);
  EXPECT_CODE(Call(*op_, &H::BeginCeremony, begin), StatusCode::PERMISSION_DENIED);
  // Ceremonies are the custodians' (issue 20): an admin is refused too.
  EXPECT_CODE(Call(*admin_, &H::BeginCeremony, begin), StatusCode::PERMISSION_DENIED);

  // Each ceremony command refuses an empty id and one not of the 32-hex-digit form ids have
  // as INVALID_ARGUMENT, and a well-formed id never issued as NOT_FOUND.
  const std::pair<std::string, StatusCode> bad_ids[] = {
      {"", StatusCode::INVALID_ARGUMENT},
      {"no-such-ceremony", StatusCode::INVALID_ARGUMENT},
      {std::string(32, 'A'), StatusCode::NOT_FOUND}};

  rkl::v1::GetCeremonyRequest get;
  for (const auto& [id, code] : bad_ids) {
    SCOPED_TRACE("ceremony id '" + id + "'");
    get.set_ceremony_id(id);
    EXPECT_CODE(Call(*admin_, &H::GetCeremony, get), code);
  }

  rkl::v1::AddComponentRequest add;
  add.set_encrypted_component(std::string(384, '\x01'));
  for (const auto& [id, code] : bad_ids) {
    SCOPED_TRACE("ceremony id '" + id + "'");
    add.set_ceremony_id(id);
    EXPECT_CODE(Call(*custodian_, &H::AddComponent, add), code);
  }
  EXPECT_CODE(Call(*op_, &H::AddComponent, add), StatusCode::PERMISSION_DENIED);
  EXPECT_CODE(Call(*admin_, &H::AddComponent, add), StatusCode::PERMISSION_DENIED);

  rkl::v1::CompleteCeremonyRequest complete;
  for (const auto& [id, code] : bad_ids) {
    SCOPED_TRACE("ceremony id '" + id + "'");
    complete.set_ceremony_id(id);
    EXPECT_CODE(Call(*custodian_, &H::CompleteCeremony, complete), code);
  }
  EXPECT_CODE(Call(*admin_, &H::CompleteCeremony, complete), StatusCode::PERMISSION_DENIED);
  EXPECT_CODE(Call(*op_, &H::CompleteCeremony, complete), StatusCode::PERMISSION_DENIED);
}

INSTANTIATE_TEST_SUITE_P(BothHsms, HsmBadInput,
                         ::testing::Values(HsmCase{"hsm-mtms", Who::kMtms, Who::kKms,
                                                   "E2E_HSM_MTMS_PK_INDEX", /*translates=*/true},
                                           HsmCase{"hsm-kms", Who::kKms, Who::kMtms,
                                                   "E2E_HSM_KMS_PK_INDEX", /*translates=*/false}),
                         [](const ::testing::TestParamInfo<HsmCase>& info) {
                           return std::string(info.param.endpoint) == "hsm-mtms" ? "Hsm1Mtms"
                                                                                 : "Hsm2Kms";
                         });

// Last (gtest runs suites in definition order): after all of the above, every service is
// still up and SERVING.
TEST(ZzAfterwards, EveryServiceIsStillServing) {
  for (const char* svc : {"ca", "hsm-mtms", "hsm-kms", "mtms", "kms"}) {
    auto serving = rpc::CheckHealth(Channel(svc, Who::kAdmin), "", absl::Seconds(10));
    ASSERT_TRUE(serving.ok()) << svc << ": " << serving.status();
    EXPECT_TRUE(*serving) << svc << " is not SERVING";
  }
}

}  // namespace
}  // namespace rkl::e2e
