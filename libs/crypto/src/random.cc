#include "rkl/crypto/random.h"

#include <openssl/crypto.h>
#include <openssl/rand.h>

#include <bit>
#include <climits>
#include <cstdio>
#include <cstdlib>

namespace rkl::crypto {

void FillRandom(std::span<uint8_t> out) {
  // RAND_bytes takes an int length; draw in chunks so any span size is honoured.
  size_t done = 0;
  while (done < out.size()) {
    const size_t chunk = std::min<size_t>(out.size() - done, INT_MAX);
    if (RAND_bytes(out.data() + done, static_cast<int>(chunk)) != 1) {
      std::fputs("rkl: RAND_bytes failed; refusing to continue without a working CSPRNG\n", stderr);
      std::abort();
    }
    done += chunk;
  }
}

Bytes RandomBytes(const RandomSource& random, size_t n) {
  Bytes out(n);
  random(out);
  return out;
}

Bytes RandomBytes(size_t n) {
  Bytes out(n);
  FillRandom(out);
  return out;
}

SecretBytes RandomSecret(size_t n) {
  SecretBytes out(n);
  FillRandom(out.RevealSecretMutable());
  return out;
}

SecretBytes GenerateKey(KeyAlgorithm algorithm) {
  SecretBytes key = RandomSecret(KeyLength(algorithm));
  if (FamilyOf(algorithm) != CipherFamily::kTdes) return key;
  for (;;) {
    SetOddParity(key);
    const auto k = key.RevealSecret();
    // K1 == K2 would make 2-key TDES collapse to single DES (probability 2^-56, but cheap to
    // rule out).
    if (CRYPTO_memcmp(k.data(), k.data() + 8, 8) != 0) return key;
    FillRandom(key.RevealSecretMutable());
  }
}

void SetOddParity(std::span<uint8_t> key) {
  for (uint8_t& b : key) {
    const uint8_t high = b & 0xFE;
    b = high | ((std::popcount(static_cast<unsigned>(high)) % 2 == 0) ? 1 : 0);
  }
}

void SetOddParity(SecretBytes& key) { SetOddParity(key.RevealSecretMutable()); }

bool HasOddParity(std::span<const uint8_t> key) {
  for (uint8_t b : key) {
    if (std::popcount(static_cast<unsigned>(b)) % 2 == 0) return false;
  }
  return true;
}

bool HasOddParity(const SecretBytes& key) { return HasOddParity(key.RevealSecret()); }

}  // namespace rkl::crypto
