#pragma once
// TLS material for rkl's gRPC servers and channels, read from PEM files.
//
// Files are read and checked once, at start-up: a missing or unreadable file, a file that is
// not PEM, or a private key that does not match its certificate is reported naming the file,
// instead of surfacing later as an opaque handshake failure. The private key's bytes are
// handed to gRPC and never logged or put in an error message. Stateless; thread-safe.

#include <grpcpp/security/credentials.h>
#include <grpcpp/security/server_credentials.h>

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "rkl/common/config.h"

namespace rkl::rpc {

// Paths of the PEM files for one endpoint. For clients, cert_file and key_file are both set
// (mTLS) or both empty (server-authenticated TLS, as terminals use); ca_file is the trust
// anchor the peer's certificate must chain to (service-ca for inter-service traffic).
struct TlsFiles {
  std::string cert_file;  // certificate chain, leaf first
  std::string key_file;   // private key for cert_file
  std::string ca_file;    // trusted CA certificate(s)
};

// Contents of TlsFiles, checked.
struct TlsMaterial {
  std::string cert_chain_pem;  // empty when no client certificate
  std::string private_key_pem;
  std::string ca_pem;
};

// Does the server demand a client certificate?
enum class ClientCertMode {
  kRequireAndVerify,  // mTLS: every process-to-process connection (the default)
  kNone,              // server-authenticated only: the terminal-facing KMS endpoint
  // A certificate is optional but verified when presented: one port serves both terminals
  // (no certificate, identity empty) and services/admins (identity from the certificate).
  // Every RPC handler then authorizes by identity, so a missing certificate only reaches
  // the public RPCs.
  kOptionalVerified,
};

// Reads a PEM file; errors (NOT_FOUND when missing, FAILED_PRECONDITION when unreadable or
// not PEM) name `what`
// (e.g. "tls.cert_file") and the path.
absl::StatusOr<std::string> ReadPemFile(const std::string& path, const std::string& what);

// Reads and checks all files. `require_own_cert`: a server always needs cert+key; a client
// only for mTLS.
absl::StatusOr<TlsMaterial> LoadTlsMaterial(const TlsFiles& files, bool require_own_cert);

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(
    const TlsFiles& files, ClientCertMode mode);
absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> MakeChannelCredentials(
    const TlsFiles& files);

// Declares <prefix>.cert_file, <prefix>.key_file and <prefix>.ca_file as path keys, so
// every daemon spells its TLS settings the same way (RKL_KMS_TLS_CERT_FILE, ...).
// `own_cert_required`: false for a client that may run without a certificate (terminals).
void DeclareTlsConfig(ConfigSchema& schema, const std::string& prefix = "tls",
                      bool own_cert_required = true);
// Reads the keys DeclareTlsConfig declared; unset optional keys come back empty.
TlsFiles TlsFilesFromConfig(const Config& config, const std::string& prefix = "tls");

}  // namespace rkl::rpc
