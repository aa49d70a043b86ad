#include "rkl/rpc/adapter.h"

#include <gtest/gtest.h>

#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/descriptor.pb.h"
#include "rkl/rpc/call_context.h"
#include "rkl/rpc/channel.h"
#include "rkl/rpc/server.h"
#include "rkl/rpc/unary_service.h"
#include "rkl/v1/ca.pb.h"
#include "rkl/v1/echo.grpc.pb.h"
#include "rkl/v1/hsm.pb.h"
#include "rkl/v1/kms.pb.h"
#include "rkl/v1/mtms.pb.h"
#include "rkl/v1/options.pb.h"
#include "rkl/v1/revocation.pb.h"
#include "test_pki.h"

namespace rkl::rpc {
namespace {

using google::protobuf::DescriptorPool;
using google::protobuf::FileDescriptorProto;
using google::protobuf::MethodDescriptorProto;
using testing::TestPki;

constexpr absl::Duration kTimeout = absl::Seconds(10);

// Declarations as a .proto would make them, built into a pool of their own so each test can
// declare what it needs: descriptor.proto and options.proto, then `file`.
class DeclaredPool {
 public:
  explicit DeclaredPool(const FileDescriptorProto& file) {
    for (const google::protobuf::FileDescriptor* dependency :
         {google::protobuf::MethodOptions::descriptor()->file(),
          DescriptorPool::generated_pool()->FindFileByName("rkl/v1/options.proto")}) {
      FileDescriptorProto proto;
      dependency->CopyTo(&proto);
      EXPECT_NE(pool_.BuildFile(proto), nullptr) << proto.name();
    }
    EXPECT_NE(pool_.BuildFile(file), nullptr) << file.name();
  }
  const google::protobuf::ServiceDescriptor& Service(const std::string& name) const {
    const google::protobuf::ServiceDescriptor* service = pool_.FindServiceByName(name);
    EXPECT_NE(service, nullptr) << name;
    return *service;
  }

 private:
  DescriptorPool pool_;
};

MethodDescriptorProto* AddMethod(FileDescriptorProto& file, const std::string& name,
                                 const std::vector<std::string>& roles, bool is_public = false) {
  MethodDescriptorProto* m = file.mutable_service(0)->add_method();
  m->set_name(name);
  m->set_input_type(".rkl.test.Nothing");
  m->set_output_type(".rkl.test.Nothing");
  for (const std::string& role : roles) m->mutable_options()->AddExtension(v1::allowed_roles, role);
  if (is_public) m->mutable_options()->SetExtension(v1::public_rpc, true);
  return m;
}

// rkl.test.Probe: Declared (mtms, admin:*), Bound ("kms"), Open (public) and Undeclared.
FileDescriptorProto ProbeFile() {
  FileDescriptorProto file;
  file.set_name("rkl/test/probe.proto");
  file.set_package("rkl.test");
  file.set_syntax("proto3");
  file.add_dependency("rkl/v1/options.proto");
  file.add_message_type()->set_name("Nothing");
  file.add_service()->set_name("Probe");
  AddMethod(file, "Declared", {"mtms", "admin:*"});
  AddMethod(file, "Bound", {"kms"});
  AddMethod(file, "Open", {}, /*is_public=*/true);
  AddMethod(file, "Undeclared", {});
  return file;
}

TEST(ServiceAdapter, AdmitsExactlyTheDeclaredRoles) {
  DeclaredPool pool(ProbeFile());
  ServiceAdapter adapter(pool.Service("rkl.test.Probe"));
  EXPECT_EQ(adapter.service_name(), "rkl.test.Probe");
  EXPECT_TRUE(adapter.Check("Declared", "mtms").ok());
  EXPECT_TRUE(adapter.Check("Declared", "admin:alice").ok());
  EXPECT_EQ(adapter.Check("Declared", "kms"),
            absl::PermissionDeniedError("caller 'kms' may not call Declared"));
  EXPECT_EQ(adapter.Check("Declared", "").code(), absl::StatusCode::kPermissionDenied);
  EXPECT_TRUE(adapter.Check("Bound", "kms").ok());
  EXPECT_FALSE(adapter.IsPublic("Declared"));
}

TEST(ServiceAdapter, AMethodWithNoDeclarationIsRefusedToEveryone) {
  DeclaredPool pool(ProbeFile());
  ServiceAdapter adapter(pool.Service("rkl.test.Probe"));
  for (const char* who : {"mtms", "kms", "admin:alice", "custodian:carol", ""}) {
    EXPECT_EQ(adapter.Check("Undeclared", who).code(), absl::StatusCode::kPermissionDenied) << who;
  }
  EXPECT_EQ(adapter.Check("Undeclared", "admin:alice"),
            absl::PermissionDeniedError("caller 'admin:alice' may not call Undeclared"));
  EXPECT_FALSE(adapter.IsPublic("Undeclared"));
  // And a name the service does not have at all.
  EXPECT_EQ(adapter.Check("NoSuchMethod", "admin:alice").code(),
            absl::StatusCode::kPermissionDenied);
}

TEST(ServiceAdapter, APublicRpcAdmitsEveryCallerWithOrWithoutIdentity) {
  DeclaredPool pool(ProbeFile());
  ServiceAdapter adapter(pool.Service("rkl.test.Probe"));
  EXPECT_TRUE(adapter.IsPublic("Open"));
  for (const char* who : {"mtms", "admin:alice", ""}) {
    EXPECT_TRUE(adapter.Check("Open", who).ok()) << who;
  }
}

TEST(ServiceAdapter, ABoundRoleNamesTheBoundIdentitiesInsteadOfItself) {
  DeclaredPool pool(ProbeFile());
  ServiceAdapter bound(
      pool.Service("rkl.test.Probe"),
      {.role_bindings = {{"kms", {"kms-blue", "kms-green"}}}, .on_refused = nullptr});
  EXPECT_TRUE(bound.Check("Bound", "kms-blue").ok());
  EXPECT_TRUE(bound.Check("Bound", "kms-green").ok());
  EXPECT_EQ(bound.Check("Bound", "kms").code(), absl::StatusCode::kPermissionDenied);
  // Bound to nobody: the RPC is refused to everyone.
  ServiceAdapter nobody(pool.Service("rkl.test.Probe"),
                        {.role_bindings = {{"kms", {}}}, .on_refused = nullptr});
  EXPECT_EQ(nobody.Check("Bound", "kms").code(), absl::StatusCode::kPermissionDenied);
  EXPECT_TRUE(nobody.Check("Declared", "mtms").ok());
}

TEST(ServiceAdapter, ADeclarationBothPublicAndRestrictedDoesNotStart) {
  FileDescriptorProto file = ProbeFile();
  AddMethod(file, "Confused", {"mtms"}, /*is_public=*/true);
  DeclaredPool pool(file);
  EXPECT_THROW(ServiceAdapter(pool.Service("rkl.test.Probe")), std::invalid_argument);
}

TEST(ServiceAdapter, AMatchEverythingRoleDoesNotStart) {
  FileDescriptorProto file = ProbeFile();
  AddMethod(file, "Everyone", {"*"});
  DeclaredPool pool(file);
  EXPECT_THROW(ServiceAdapter(pool.Service("rkl.test.Probe")), std::invalid_argument);
}

TEST(ServiceAdapter, TheRklServicesDeclareEveryRpc) {
  int methods = 0;
  for (const google::protobuf::FileDescriptor* file :
       {v1::GetKeyInfoRequest::descriptor()->file(), v1::GetCrlRequest::descriptor()->file(),
        v1::GetTerminalRequest::descriptor()->file(),
        v1::GetSubmissionRequest::descriptor()->file(),
        v1::RefreshCrlRequest::descriptor()->file()}) {
    ASSERT_EQ(file->service_count(), 1) << file->name();
    const google::protobuf::ServiceDescriptor* service = file->service(0);
    for (int i = 0; i < service->method_count(); ++i, ++methods) {
      const google::protobuf::MethodOptions& options = service->method(i)->options();
      EXPECT_NE(options.GetExtension(v1::public_rpc), options.ExtensionSize(v1::allowed_roles) > 0)
          << service->method(i)->full_name() << ": declare allowed_roles or public_rpc";
    }
    EXPECT_NO_THROW(ServiceAdapter{*service}) << service->full_name();
  }
  EXPECT_GE(methods, 46);
}

// ---- Over a real server: the method comes from the call, not from the handler --------------

// rkl.v1.Echo served as a UnaryService (through its ServiceAdapter); records what it saw.
class AdaptedEcho final : public UnaryService {
 public:
  AdaptedEcho(const google::protobuf::ServiceDescriptor& service, Dispatch dispatch)
      : UnaryService(service,
                     {.role_bindings = {},
                      .on_refused =
                          [this](std::string_view caller, std::string_view method,
                                 const absl::Status& refusal) {
                            absl::MutexLock lock(&mu_);
                            refusals_.push_back(std::string(caller) + " " + std::string(method));
                          }},
                     {.dispatch = dispatch, .pool_threads = 2}) {
    Bind("Echo",
         [this](const UnaryCall& call, const v1::EchoRequest* req,
                v1::EchoResponse* resp) -> absl::Status {
           {
             absl::MutexLock lock(&mu_);
             methods_.push_back(RpcMethod(call.ctx));
           }
           if (req->payload() == "fail") return absl::FailedPreconditionError("payload: fail");
           resp->set_payload(req->payload());
           resp->set_caller_identity(call.caller);
           return absl::OkStatus();
         });
  }

  std::vector<std::string> refusals() {
    absl::MutexLock lock(&mu_);
    return refusals_;
  }
  std::vector<std::string> methods() {
    absl::MutexLock lock(&mu_);
    return methods_;
  }

 private:
  absl::Mutex mu_;
  std::vector<std::string> refusals_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> methods_ ABSL_GUARDED_BY(mu_);
};

// echo.proto as served, with `declare` applied to its one method.
template <typename Declare>
FileDescriptorProto EchoFile(Declare declare) {
  FileDescriptorProto file;
  v1::EchoRequest::descriptor()->file()->CopyTo(&file);
  file.add_dependency("rkl/v1/options.proto");
  declare(*file.mutable_service(0)->mutable_method(0)->mutable_options());
  return file;
}

// Every case holds on each Dispatch: authorization and status conversion do not depend on
// which thread runs the body.
class AdaptedServerTest : public ::testing::TestWithParam<Dispatch> {
 protected:
  void Start(const google::protobuf::ServiceDescriptor& service) {
    echo_ = std::make_unique<AdaptedEcho>(service, GetParam());
    auto server = Server::Start({.listen_address = "127.0.0.1:0",
                                 .tls = TestPki::Get().Server(),
                                 .client_cert_mode = ClientCertMode::kOptionalVerified},
                                {echo_.get()});
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
  }

  // The call's status, and the caller identity the handler saw on success.
  absl::StatusOr<std::string> Call(const TlsFiles& tls, const std::string& payload = "ping",
                                   const std::string& claimed_method = "") {
    ChannelOptions options;
    options.tls = tls;
    options.authority = "localhost";
    auto channel = MakeChannel("127.0.0.1:" + std::to_string(server_->port()), options);
    if (!channel.ok()) return channel.status();
    auto stub = v1::Echo::NewStub(*channel);
    auto ctx = MakeClientContext(kTimeout);
    if (!claimed_method.empty()) ctx->AddMetadata(kMethodMetadataKey, claimed_method);
    v1::EchoRequest req;
    req.set_payload(payload);
    v1::EchoResponse resp;
    grpc::Status status = stub->Echo(ctx.get(), req, &resp);
    if (!status.ok()) return FromGrpcStatus(status);
    return resp.caller_identity();
  }

  std::unique_ptr<AdaptedEcho> echo_;
  std::unique_ptr<Server> server_;
};

TEST_P(AdaptedServerTest, AnUndeclaredRpcIsRefusedBeforeItsHandlerRuns) {
  // echo.proto declares nobody for Echo.
  Start(*v1::EchoRequest::descriptor()->file()->FindServiceByName("Echo"));
  for (const char* who : {"mtms", "admin:alice"}) {
    EXPECT_EQ(Call(TestPki::Get().Client(who)).status(),
              absl::PermissionDeniedError(absl::StrCat("caller '", who, "' may not call Echo")));
  }
  EXPECT_EQ(Call(TestPki::Get().AnonymousClient()).status(),
            absl::PermissionDeniedError("caller '(unauthenticated)' may not call Echo"));
  EXPECT_TRUE(echo_->methods().empty());  // no body ran
  EXPECT_EQ(echo_->refusals(),
            (std::vector<std::string>{"mtms Echo", "admin:alice Echo", " Echo"}));
}

TEST_P(AdaptedServerTest, ADeclaredRoleIsAdmittedAndTheBodysStatusConvertedOnce) {
  DeclaredPool pool(EchoFile(
      [](google::protobuf::MethodOptions& o) { o.AddExtension(v1::allowed_roles, "mtms"); }));
  Start(pool.Service("rkl.v1.Echo"));
  EXPECT_EQ(Call(TestPki::Get().Client("mtms")).value_or("(refused)"), "mtms");
  EXPECT_EQ(Call(TestPki::Get().Client("mtms"), "fail").status(),
            absl::FailedPreconditionError("payload: fail"));
  EXPECT_EQ(Call(TestPki::Get().Client("admin:alice")).status().code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(echo_->methods(), (std::vector<std::string>{"/rkl.v1.Echo/Echo", "/rkl.v1.Echo/Echo"}));
}

TEST_P(AdaptedServerTest, APublicRpcAdmitsCallersWithoutACertificate) {
  DeclaredPool pool(
      EchoFile([](google::protobuf::MethodOptions& o) { o.SetExtension(v1::public_rpc, true); }));
  Start(pool.Service("rkl.v1.Echo"));
  EXPECT_EQ(Call(TestPki::Get().AnonymousClient()).value_or("(refused)"), "");
  EXPECT_EQ(Call(TestPki::Get().Client("admin:alice")).value_or("(refused)"), "admin:alice");
}

TEST_P(AdaptedServerTest, TheMethodAClientClaimsInMetadataIsIgnored) {
  // Declared for mtms only; an admin claiming to call a method it may call gets nowhere.
  DeclaredPool pool(EchoFile(
      [](google::protobuf::MethodOptions& o) { o.AddExtension(v1::allowed_roles, "mtms"); }));
  Start(pool.Service("rkl.v1.Echo"));
  EXPECT_EQ(
      Call(TestPki::Get().Client("admin:alice"), "ping", "/rkl.v1.Kms/GetTerminal").status().code(),
      absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(
      Call(TestPki::Get().Client("mtms"), "ping", "/rkl.v1.Echo/Nothing").value_or("(refused)"),
      "mtms");
  EXPECT_EQ(echo_->methods(), (std::vector<std::string>{"/rkl.v1.Echo/Echo"}));
}

INSTANTIATE_TEST_SUITE_P(Dispatch, AdaptedServerTest, testing::AllDispatches(),
                         testing::DispatchTestName);

TEST(ServiceAdapter, ACallServedWithoutTheServersInterceptorIsRefused) {
  DeclaredPool pool(
      EchoFile([](google::protobuf::MethodOptions& o) { o.SetExtension(v1::public_rpc, true); }));
  ServiceAdapter adapter(pool.Service("rkl.v1.Echo"));
  grpc::ServerContext ctx;  // no call: no recorded method, no identity
  bool ran = false;
  grpc::Status status = adapter.Serve(ctx, [&](const std::string&) -> absl::Status {
    ran = true;
    return absl::OkStatus();
  });
  EXPECT_FALSE(ran);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(status.error_message(), "caller '(unauthenticated)' may not call (unknown)");
}

// ---- UnaryService::Bind checks each binding against the service's descriptor ---------------

// rkl.v1.Echo with one body bound to `method`.
class EchoBinding final : public UnaryService {
 public:
  template <typename Body>
  EchoBinding(std::string_view method, Body body, DispatchOptions dispatch = {})
      : UnaryService(ServiceAdapter::DescriptorOf<v1::Echo>(), {}, dispatch) {
    Bind(method, std::move(body));
  }
};

absl::Status EchoBody(const UnaryCall&, const v1::EchoRequest*, v1::EchoResponse*) {
  return absl::OkStatus();
}

absl::Status SwappedBody(const UnaryCall&, const v1::EchoResponse*, v1::EchoRequest*) {
  return absl::OkStatus();
}

TEST(UnaryService, BindsAMethodOfTheServiceWithItsOwnMessages) {
  EXPECT_NO_THROW(EchoBinding("Echo", &EchoBody));
}

TEST(UnaryService, RefusesAMethodTheServiceDoesNotHave) {
  EXPECT_THROW(EchoBinding("Ech0", &EchoBody), std::logic_error);
}

TEST(UnaryService, RefusesABodyForOtherMessagesThanTheMethods) {
  EXPECT_THROW(EchoBinding("Echo", &SwappedBody), std::logic_error);
  EXPECT_THROW(EchoBinding("Echo", &SwappedBody, {.dispatch = Dispatch::kCallbackInline}),
               std::logic_error);
}

TEST(UnaryService, APoolWithoutThreadsDoesNotStart) {
  EXPECT_THROW(
      EchoBinding("Echo", &EchoBody, {.dispatch = Dispatch::kCallbackPool, .pool_threads = 0}),
      std::invalid_argument);
  EXPECT_NO_THROW(
      EchoBinding("Echo", &EchoBody, {.dispatch = Dispatch::kCallbackPool, .pool_threads = 1}));
}

}  // namespace
}  // namespace rkl::rpc
