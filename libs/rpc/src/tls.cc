#include "rkl/rpc/tls.h"

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "openssl_owners.h"
#include "rkl/common/status_macros.h"

namespace rkl::rpc {
namespace {

// Counts the certificates in a PEM bundle and returns the first.
X509Ptr FirstCertificate(const std::string& pem, int* count) {
  BioPtr bio = MemBio(pem);
  X509Ptr first;
  *count = 0;
  while (X509* cert = PEM_read_bio_X509(bio.get(), nullptr, NoPassphrase, nullptr)) {
    if (*count == 0) {
      first.reset(cert);
    } else {
      X509_free(cert);
    }
    ++*count;
  }
  ERR_clear_error();  // the loop always ends on a "no start line" error
  return first;
}

absl::Status NotPem(const std::string& what, const std::string& path, const char* expected) {
  return absl::FailedPreconditionError(
      absl::StrCat(what, " ", path, ": does not contain a PEM ", expected));
}

}  // namespace

absl::StatusOr<std::string> ReadPemFile(const std::string& path, const std::string& what) {
  if (path.empty()) return absl::InvalidArgumentError(absl::StrCat(what, ": no file given"));
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) {
    return absl::NotFoundError(absl::StrCat(what, " ", path, ": file does not exist"));
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::FailedPreconditionError(absl::StrCat(what, " ", path, ": cannot read file"));
  }
  std::ostringstream text;
  text << in.rdbuf();
  if (text.str().empty()) {
    return absl::FailedPreconditionError(absl::StrCat(what, " ", path, ": file is empty"));
  }
  return text.str();
}

absl::StatusOr<TlsMaterial> LoadTlsMaterial(const TlsFiles& files, bool require_own_cert) {
  TlsMaterial m;
  RKL_ASSIGN_OR_RETURN(m.ca_pem, ReadPemFile(files.ca_file, "tls.ca_file"));
  int count = 0;
  if (!FirstCertificate(m.ca_pem, &count)) {
    return NotPem("tls.ca_file", files.ca_file, "certificate");
  }
  if (files.cert_file.empty() != files.key_file.empty()) {
    return absl::InvalidArgumentError(
        "tls.cert_file and tls.key_file must be given together (or both left empty)");
  }
  if (files.cert_file.empty()) {
    if (require_own_cert) {
      return absl::InvalidArgumentError("tls.cert_file and tls.key_file are required");
    }
    return m;
  }
  RKL_ASSIGN_OR_RETURN(m.cert_chain_pem, ReadPemFile(files.cert_file, "tls.cert_file"));
  RKL_ASSIGN_OR_RETURN(m.private_key_pem, ReadPemFile(files.key_file, "tls.key_file"));
  X509Ptr leaf = FirstCertificate(m.cert_chain_pem, &count);
  if (!leaf) return NotPem("tls.cert_file", files.cert_file, "certificate");
  BioPtr key_bio = MemBio(m.private_key_pem);
  EvpPkeyPtr key(PEM_read_bio_PrivateKey(key_bio.get(), nullptr, NoPassphrase, nullptr));
  ERR_clear_error();
  if (!key) return NotPem("tls.key_file", files.key_file, "unencrypted private key");
  if (X509_check_private_key(leaf.get(), key.get()) != 1) {
    ERR_clear_error();
    return absl::FailedPreconditionError(absl::StrCat(
        "tls.key_file ", files.key_file, ": does not match the certificate in ", files.cert_file));
  }
  return m;
}

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(
    const TlsFiles& files, ClientCertMode mode) {
  RKL_ASSIGN_OR_RETURN(TlsMaterial m, LoadTlsMaterial(files, /*require_own_cert=*/true));
  grpc::SslServerCredentialsOptions options(
      mode == ClientCertMode::kRequireAndVerify
          ? GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY
      : mode == ClientCertMode::kOptionalVerified ? GRPC_SSL_REQUEST_CLIENT_CERTIFICATE_AND_VERIFY
                                                  : GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
  options.pem_root_certs = m.ca_pem;
  options.pem_key_cert_pairs.push_back({m.private_key_pem, m.cert_chain_pem});
  return grpc::SslServerCredentials(options);
}

absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> MakeChannelCredentials(
    const TlsFiles& files) {
  RKL_ASSIGN_OR_RETURN(TlsMaterial m, LoadTlsMaterial(files, /*require_own_cert=*/false));
  grpc::SslCredentialsOptions options;
  options.pem_root_certs = m.ca_pem;
  options.pem_private_key = m.private_key_pem;
  options.pem_cert_chain = m.cert_chain_pem;
  return grpc::SslCredentials(options);
}

void DeclareTlsConfig(ConfigSchema& schema, const std::string& prefix, bool own_cert_required) {
  ConfigKey& cert = schema.Path(prefix + ".cert_file",
                                "certificate chain (PEM) presented to peers, issued by service-ca");
  ConfigKey& key = schema.Path(prefix + ".key_file", "private key (PEM) for cert_file");
  if (own_cert_required) {
    cert.Required();
    key.Required();
  }
  schema.Path(prefix + ".ca_file", "CA certificate(s) (PEM) that peers must chain to").Required();
}

TlsFiles TlsFilesFromConfig(const Config& config, const std::string& prefix) {
  auto get = [&](const std::string& key) {
    return config.Has(key) ? config.GetPath(key) : std::string();
  };
  return {get(prefix + ".cert_file"), get(prefix + ".key_file"), get(prefix + ".ca_file")};
}

}  // namespace rkl::rpc
