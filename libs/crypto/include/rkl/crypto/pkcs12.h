#pragma once
// PKCS#12 files: the PIN-protected operator card (PROTOCOL.md §1) and any other key +
// certificate bundle rkl writes or reads.
//
// Guarantees:
//  - written files use PBES2 (PBKDF2-HMAC-SHA256 + AES-256-CBC) for both the key bag and the
//    certificate bag and an HMAC-SHA256 integrity MAC; legacy RC2/3DES/SHA-1 MACs are never
//    produced, and the private key never appears in clear in the output;
//  - PINs are secrets: they are taken as SecretBytes, copied only into wiped buffers, and
//    never appear in messages;
//  - reading: wrong PIN and corruption give the one message UNAUTHENTICATED "wrong PIN or
//    corrupted PKCS#12" (which of the two is not revealed); input that is not PKCS#12 at all,
//    or a file without an integrity MAC, is INVALID_ARGUMENT.
// Thread safety: free functions.

#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "rkl/common/hex.h"
#include "rkl/crypto/keys.h"
#include "rkl/crypto/secret_bytes.h"
#include "rkl/crypto/x509.h"

namespace rkl::crypto {

struct Pkcs12WriteOptions {
  // PBKDF2 iterations for the key and certificate bags and for the MAC key. Every unlock of
  // the card pays them once; 200k keeps a low-entropy PIN expensive to brute-force offline
  // while unlocking stays well under a second. Tests may lower it.
  int iterations = 200'000;
};

struct Pkcs12Contents {
  PrivateKey private_key;
  Certificate certificate;
  std::vector<Certificate> chain;  // CA certificates, as stored
};

// `pin`: 1-128 bytes, no NUL byte. `certificate` must match `private_key`.
absl::StatusOr<Bytes> WritePkcs12(const PrivateKey& private_key, const Certificate& certificate,
                                  std::span<const Certificate> chain,
                                  std::string_view friendly_name, const SecretBytes& pin,
                                  const Pkcs12WriteOptions& options = {});

absl::StatusOr<Pkcs12Contents> ReadPkcs12(std::span<const uint8_t> pkcs12_der,
                                          const SecretBytes& pin);

}  // namespace rkl::crypto
