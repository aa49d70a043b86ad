#pragma once
// One rkl-mtms "process" for the PostgreSQL tests that reach MTMS over gRPC, wired as main()
// wires it: its own pool, gRPC ports to HSM #1, the CA and KMS (mTLS with the `mtms`
// certificate), operator trust, core, forwarder (not started: tests drive it) and the gRPC
// service on 127.0.0.1:0. Header only: the unit tests that share test_support.cc link no
// database.

#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <utility>

#include "absl/time/time.h"
#include "mtms_batchers.h"
#include "mtms_core.h"
#include "mtms_forwarder.h"
#include "mtms_grpc_ports.h"
#include "mtms_grpc_service.h"
#include "mtms_operator_trust.h"
#include "mtms_pg_repository.h"
#include "rkl/common/clock.h"
#include "rkl/crypto/secret_bytes.h"
#include "rkl/db/connection_pool.h"
#include "rkl/rpc/server.h"
#include "rkl/testing/loopback_channel.h"

namespace rkl::mtms::testing {

struct MtmsProcessOptions {
  std::string dsn;
  rpc::TlsFiles tls;  // MTMS's own certificate, as the peers' client and as a server
  int hsm_port = 0;
  int ca_port = 0;
  int kms_port = 0;
  // The names in the peers' certificates.
  std::string hsm_name = "localhost";
  std::string ca_name = "localhost";
  std::string kms_name = "localhost";
  absl::Duration rpc_timeout = absl::Seconds(10);
  absl::Duration crl_refresh = absl::Minutes(5);  // ca.crl_refresh default
  MtmsCoreOptions core{};
  ForwarderOptions forwarder{};
  rpc::PublicCallLimits limits{};
};

struct MtmsProcess {
  MtmsProcess(const Clock& clock, MtmsProcessOptions o)
      : pool({.dsn = o.dsn, .max_size = 4}),
        repository(pool, crypto::SecretBytes(32)),
        hsm_rpc(rkl::testing::LoopbackChannel(o.hsm_port, o.tls, o.hsm_name), o.rpc_timeout),
        hsm(hsm_rpc, TranslateBatcherOptions{}),
        ca(rkl::testing::LoopbackChannel(o.ca_port, o.tls, o.ca_name), o.rpc_timeout),
        kms_rpc(rkl::testing::LoopbackChannel(o.kms_port, o.tls, o.kms_name), o.rpc_timeout),
        kms(kms_rpc, KmsSubmitBatcherOptions{}),
        trust(ca, clock, o.crl_refresh),
        core(repository, hsm, ca, trust, clock, o.core),
        forwarder(repository, hsm, kms, trust, clock, o.forwarder),
        service(core, forwarder, repository.audit_log(), std::move(o.limits)) {
    auto started = rpc::Server::Start({.listen_address = "127.0.0.1:0",
                                       .tls = o.tls,
                                       .client_cert_mode = rpc::ClientCertMode::kOptionalVerified},
                                      {&service});
    EXPECT_TRUE(started.ok()) << started.status();
    if (started.ok()) server = *std::move(started);
  }
  ~MtmsProcess() {
    forwarder.Stop();
    if (server) server->Shutdown(absl::Seconds(1));
  }
  int port() const { return server->port(); }

  db::ConnectionPool pool;
  PgMtmsRepository repository;
  GrpcHsmPort hsm_rpc;
  // As in main(): translations go out as TranslateTransportKeys. A peer without that RPC
  // (the test HSM, TestHsmService, like an older rkl-hsm) answers UNIMPLEMENTED over the
  // wire and the batcher falls back to one call per package.
  TranslateBatcher hsm;
  GrpcCaPort ca;
  GrpcKmsPort kms_rpc;
  // And submissions go out as SubmitTransportKeys; a KMS without it (the test KMS) answers
  // UNIMPLEMENTED and the batcher falls back the same way.
  KmsSubmitBatcher kms;
  OperatorTrust trust;
  MtmsCore core;
  Forwarder forwarder;
  MtmsGrpcService service;
  std::unique_ptr<rpc::Server> server;
};

}  // namespace rkl::mtms::testing
