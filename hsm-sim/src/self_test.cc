#include "self_test.h"

#include <functional>

#include "absl/status/statusor.h"
#include "audit_log.h"
#include "rkl/common/hex.h"
#include "rkl/crypto/aead.h"
#include "rkl/crypto/cmac.h"
#include "rkl/crypto/kcv.h"
#include "rkl/crypto/kdf.h"
#include "rkl/crypto/kwp.h"
#include "rkl/crypto/random.h"
#include "rkl/crypto/rsa.h"
#include "rkl/keyblock/tmk_block.h"
#include "rkl/keyblock/tr31.h"
#include "rkl/protocol/auth.h"

namespace rkl::hsm {
namespace {

using crypto::CipherFamily;
using crypto::SecretBytes;

// Known answers: shared/vectors/public-vectors.json (RFC 4493, RFC 5649, TR-31:2018 A.7, KCV),
// NIST SP 800-38B D.4, the GCM specification's test cases, RFC 4231; the KDF and the
// two-key TDES-CMAC answers were computed with an independent implementation (pyca/OpenSSL).
struct Kats {
  std::string aes_cmac_mac = "070a16b46b4d4144f79bdd9dd04a287c";
};

SecretBytes Key(std::string_view hex) {
  auto b = FromHex(hex);
  return b.ok() ? SecretBytes::CopyOf(*b) : SecretBytes();
}

Bytes Hex(std::string_view hex) { return FromHex(hex).value_or(Bytes{}); }

bool Eq(const absl::StatusOr<Bytes>& got, std::string_view want_hex) {
  return got.ok() && *got == Hex(want_hex);
}

bool SecretEq(const absl::StatusOr<SecretBytes>& got, std::string_view want_hex) {
  return got.ok() && *got == Key(want_hex);
}

bool AesCmac(const Kats& k) {
  SecretBytes key = Key("2b7e151628aed2a6abf7158809cf4f3c");
  return Eq(crypto::Cmac(CipherFamily::kAes, key, Bytes{}), "bb1d6929e95937287fa37d129b756746") &&
         Eq(crypto::Cmac(CipherFamily::kAes, key, Hex("6bc1bee22e409f96e93d7e117393172a")),
            k.aes_cmac_mac);
}

bool TdesCmac() {
  SecretBytes three = Key("8aa83bf8cbda10620bc1bf19fbb6cd58bc313d4a371ca8b5");
  SecretBytes two = Key("E8BC63E5479455E26577F715D587FE68");
  Bytes msg = Hex("6bc1bee22e409f96e93d7e117393172a");
  return Eq(crypto::Cmac(CipherFamily::kTdes, three, Bytes{}), "b7a688e122ffaf95") &&
         Eq(crypto::Cmac(CipherFamily::kTdes, three, msg), "286d394673448197") &&
         Eq(crypto::Cmac(CipherFamily::kTdes, two, msg), "529ac20f89ef3f8f");
}

bool Kwp() {
  SecretBytes kek = Key("5840df6e29b02af1ab493b705bf16ea1ae8338f4dcc176a8");
  SecretBytes key = Key("c37b7e6492584340bed12207808941155068f738");
  const char* wrapped = "138bdeaa9b8fa7fc61f97742e72248ee5ae6ae5360d1ae6a5f54f373fa543b6a";
  if (!Eq(crypto::KwpWrap(kek, key), wrapped)) return false;
  if (!SecretEq(crypto::KwpUnwrap(kek, Hex(wrapped)), "c37b7e6492584340bed12207808941155068f738")) {
    return false;
  }
  Bytes altered = Hex(wrapped);
  altered[5] ^= 1;
  return !crypto::KwpUnwrap(kek, altered).ok();
}

bool Kcv() {
  auto tdes = crypto::KcvHex(CipherFamily::kTdes, Key("E8BC63E5479455E26577F715D587FE68"));
  auto aes = crypto::KcvHex(CipherFamily::kAes, Key("3F419E1CB7079442AA37474C2EFBF8B8"));
  return tdes.ok() && *tdes == "9A4212" && aes.ok() && *aes == "08793E";
}

bool Tr31() {
  auto b =
      keyblock::Parse(Key("1D22BF32387C600AD97F9B97A51311AC"),
                      "B0104B0TX12S0100KS1800604B120F9292800000BB68BE8680A400D9191AD4ECE45B6E6C0D"
                      "21C4738A52190E248719E24B433627");
  auto d = keyblock::Parse(
      Key("88E1AB2A2E3DD38C1FA039A536500CC8A87AB9D62DC92C01058FA79F44657DE6"),
      "D0112P0AE00E0000B82679114F470F540165EDFBF7E250FCEA43F810D215F8D207E2E417C07156A27E8E31DA0"
      "5F7425509593D03A457DC34");
  if (!b.ok() || !(b->key == Key("E8BC63E5479455E26577F715D587FE68"))) return false;
  if (!d.ok() || !(d->key == Key("3F419E1CB7079442AA37474C2EFBF8B8"))) return false;
  // The rkl TMK profile, both versions, with fixed keys.
  SecretBytes aes_tek = Key("000102030405060708090A0B0C0D0E0F");
  SecretBytes aes_tmk = Key("F0E0D0C0B0A090807060504030201000");
  SecretBytes tdes_tek = Key("E8BC63E5479455E26577F715D587FE68");
  SecretBytes tdes_tmk = Key("1D22BF32387C600AD97F9B97A51311AC");
  for (auto [tek, tmk, alg] : {std::tuple{&aes_tek, &aes_tmk, crypto::KeyAlgorithm::kAes128},
                               std::tuple{&tdes_tek, &tdes_tmk, crypto::KeyAlgorithm::kTdes2}}) {
    auto block = keyblock::BuildTmkBlock(*tek, alg, *tmk, alg);
    if (!block.ok()) return false;
    auto parsed = keyblock::ParseTmkBlock(*tek, alg, *block);
    if (!parsed.ok() || !(parsed->tmk == *tmk)) return false;
  }
  return true;
}

bool Gcm() {
  // GCM test case 14 (no AAD) and 16 (with AAD, 60-byte plaintext).
  Bytes zero_nonce(12, 0);
  auto tc14 =
      crypto::AeadSealWithNonceForSelfTest(SecretBytes(32), zero_nonce, SecretBytes(16), Bytes{});
  if (!Eq(tc14,
          "000000000000000000000000cea7403d4d606b6e074ec5d3baf39d18d0d1c8a799996bf0265b98b5d"
          "48ab919")) {
    return false;
  }
  SecretBytes key = Key("feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308");
  Bytes nonce = Hex("cafebabefacedbaddecaf888");
  const char* plain =
      "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a721c3c0c95956809532fcf0e24"
      "49a6b525b16aedf5aa0de657ba637b39";
  Bytes aad = Hex("feedfacedeadbeeffeedfacedeadbeefabaddad2");
  auto tc16 = crypto::AeadSealWithNonceForSelfTest(key, nonce, Key(plain), aad);
  const char* sealed =
      "cafebabefacedbaddecaf888522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa8c"
      "b08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f66276fc6ece0f4e1768cddf8853bb2d551b";
  if (!Eq(tc16, sealed)) return false;
  if (!SecretEq(crypto::AeadOpen(key, Hex(sealed), aad), plain)) return false;
  Bytes altered = Hex(sealed);
  altered.back() ^= 1;
  return !crypto::AeadOpen(key, altered, aad).ok();
}

bool Kdf() {
  auto a = crypto::KdfCounterCmac(CipherFamily::kAes, Key("2b7e151628aed2a6abf7158809cf4f3c"),
                                  "RKL-AUTH-K2P", "SN-0001", 128);
  auto b = crypto::KdfCounterCmac(
      CipherFamily::kAes, Key("88E1AB2A2E3DD38C1FA039A536500CC8A87AB9D62DC92C01058FA79F44657DE6"),
      "RKL-AUTH-P2K", "SN-0001", 256);
  auto t = crypto::KdfCounterCmac(CipherFamily::kTdes, Key("E8BC63E5479455E26577F715D587FE68"),
                                  "RKL-AUTH-K2P", "SN-0001", 128);
  return SecretEq(a, "b877f72ffca9ff4acde6f259a02939be") &&
         SecretEq(b, "5c40518c04e78744c41f06ea66131c485b93222188e6cacc891ab76603408c44") &&
         SecretEq(t, "3ff8816653557e73ca7d8329dd9aeffd");
}

bool AuthTokens() {
  // Both sides of §7 with a fixed AUK: the HSM side's tokens must verify on the terminal side
  // and a reflected token must not.
  SecretBytes auk = Key("2b7e151628aed2a6abf7158809cf4f3c");
  auto keys = protocol::DeriveAuthKeys(crypto::KeyAlgorithm::kAes128, auk, "SN-0001");
  if (!keys.ok()) return false;
  Bytes rnd1(16, 0x11), rnd2(16, 0x22);
  auto crnd1 = protocol::MakeCrnd1(*keys, rnd1, rnd2);
  auto crnd2 = protocol::MakeCrnd2(*keys, rnd1, rnd2);
  return crnd1.ok() && crnd2.ok() && protocol::VerifyCrnd1(*keys, rnd1, rnd2, *crnd1).ok() &&
         protocol::VerifyCrnd2(*keys, rnd1, rnd2, *crnd2).ok() &&
         !protocol::VerifyCrnd2(*keys, rnd1, rnd2, *crnd1).ok();
}

bool Hmac() {
  auto key = SecretBytes::CopyOf(AsBytes("Jefe"));
  return Eq(HmacSha256(key, AsBytes("what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
}

bool RsaOaep() {
  auto key = crypto::GenerateRsaKey(2048);
  if (!key.ok()) return false;
  SecretBytes message = Key("0102030405060708090a0b0c0d0e0f10");
  Bytes label = crypto::TransportKeyOaepLabel("SELFTEST");
  auto ct = crypto::RsaOaepEncrypt(key->GetPublicKey(), message, label);
  if (!ct.ok()) return false;
  auto pt = crypto::RsaOaepDecrypt(*key, *ct, label);
  if (!pt.ok() || !(*pt == message)) return false;
  // A different label must not decrypt.
  return !crypto::RsaOaepDecrypt(*key, *ct, crypto::TransportKeyOaepLabel("OTHER")).ok();
}

}  // namespace

SelfTestResult RunSelfTests(bool force_failure) {
  Kats kats;
  if (force_failure) kats.aes_cmac_mac[0] = kats.aes_cmac_mac[0] == '0' ? '1' : '0';
  const std::pair<const char*, std::function<bool()>> tests[] = {
      {"AES-CMAC", [&] { return AesCmac(kats); }},
      {"TDES-CMAC", TdesCmac},
      {"AES-KWP", Kwp},
      {"KCV", Kcv},
      {"TR-31", Tr31},
      {"AES-256-GCM", Gcm},
      {"KDF (PROTOCOL 7)", Kdf},
      {"auth tokens (PROTOCOL 7)", AuthTokens},
      {"HMAC-SHA256", Hmac},
      {"RSA-OAEP", RsaOaep},
  };
  SelfTestResult result;
  for (const auto& [name, test] : tests) {
    if (!test()) {
      result.passed = false;
      result.failures.push_back(name);
    }
  }
  return result;
}

}  // namespace rkl::hsm
