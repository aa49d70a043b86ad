#pragma once
// Cryptographically secure randomness (OpenSSL RAND_bytes, seeded from the OS) and the TDES
// parity rules that fresh TDES keys must follow.
//
// Guarantees: every byte comes from the OpenSSL CSPRNG. If the CSPRNG ever fails, the process
// aborts rather than return predictable bytes: no caller could handle that error safely, and a
// key made from a zeroed buffer is worse than a crash. All functions are thread-safe.
// GenerateKey returns TDES keys with odd parity on every byte and K1 != K2 (so the key is never
// a degenerate single-DES key).

#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>

#include "rkl/common/hex.h"
#include "rkl/crypto/key_algorithm.h"
#include "rkl/crypto/secret_bytes.h"

namespace rkl::crypto {

// Fills `out` completely. Injected where tests need determinism (e.g. TR-31 padding);
// production code passes FillRandom.
using RandomSource = std::function<void(std::span<uint8_t> out)>;

// The CSPRNG as a RandomSource.
void FillRandom(std::span<uint8_t> out);

// Public random values: nonces, challenges, identifiers.
Bytes RandomBytes(size_t n);
// The same, drawn from `random` (service code draws from its injected source).
Bytes RandomBytes(const RandomSource& random, size_t n);
// Random bytes that will be (or become part of) key material.
SecretBytes RandomSecret(size_t n);
// A fresh key of `algorithm` (TDES: odd parity, K1 != K2).
SecretBytes GenerateKey(KeyAlgorithm algorithm);

// TDES parity: the low bit of each byte is chosen so that the byte has an odd number of ones.
void SetOddParity(std::span<uint8_t> key);
void SetOddParity(SecretBytes& key);
bool HasOddParity(std::span<const uint8_t> key);
bool HasOddParity(const SecretBytes& key);

}  // namespace rkl::crypto
