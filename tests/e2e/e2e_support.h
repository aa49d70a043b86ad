#pragma once
// What the test programs the e2e case scripts run share: the deployment the script started,
// as its environment variables, and channels to that deployment's services as one of the
// identities of its PKI.

#include <gtest/gtest.h>

#include <cctype>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <string>

#include "absl/strings/str_cat.h"
#include "rkl/rpc/channel.h"

namespace rkl::e2e {

// A variable the case script sets. Unset or empty is a test failure (and "").
inline std::string Env(const char* name) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') {
    ADD_FAILURE() << "environment variable " << name
                  << " is not set (run this program through its e2e case script)";
    return "";
  }
  return v;
}

// A number the case script sets (0 when it is missing, which Env reports).
inline uint64_t EnvIndex(const char* name) {
  const std::string v = Env(name);
  return v.empty() ? 0 : std::stoull(v);
}

inline std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// The deployment's identities, from its own PKI; kNone presents no certificate (as a
// terminal does).
enum class Who { kNone, kAdmin, kCustodian, kMtms, kKms, kCa };

// Channel options to `service` (its name in the servers' certificates) as `who`.
inline rpc::ChannelOptions ChannelOptionsAs(const std::string& service, Who who) {
  const std::string pki = Env("E2E_PKI");
  rpc::ChannelOptions options;
  options.tls.ca_file = pki + "/ca-bundle.pem";
  const char* dir = who == Who::kAdmin       ? "admin-alice"
                    : who == Who::kCustodian ? "custodian-carol"
                    : who == Who::kMtms      ? "mtms"
                    : who == Who::kKms       ? "kms"
                    : who == Who::kCa        ? "ca"
                                             : nullptr;
  if (dir != nullptr) {
    options.tls.cert_file = absl::StrCat(pki, "/", dir, "/cert.pem");
    options.tls.key_file = absl::StrCat(pki, "/", dir, "/key.pem");
  }
  options.authority = service;
  return options;
}

// Where the case script serves `service`: E2E_<SERVICE>_ADDR, '-' written as '_'.
inline std::string ServiceAddress(const std::string& service) {
  std::string env = "E2E_" + service + "_ADDR";
  for (char& c : env) c = c == '-' ? '_' : static_cast<char>(std::toupper(c));
  return Env(env.c_str());
}

}  // namespace rkl::e2e
