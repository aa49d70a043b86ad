// Google Benchmark micro-benchmarks of rkl's hot cryptographic primitives, and the
// "crypto-only ceiling" of one terminal: every cryptographic operation one terminal's
// provisioning needs, on both sides (terminal, operator card, MTMS, HSM #1, HSM #2), in one
// process with no I/O. bench/run turns BM_TerminalCryptoOnly's time into terminals per second.
//
// Performance is reported here, never asserted. Every benchmark checks its own result
// (SkipWithError), so a broken primitive cannot produce a flattering number.

#include <benchmark/benchmark.h>
#include <openssl/evp.h>

#include <string>

#include "absl/strings/str_cat.h"
#include "rkl/common/hex.h"
#include "rkl/common/status_macros.h"
#include "rkl/crypto/aead.h"
#include "rkl/crypto/cmac.h"
#include "rkl/crypto/ecdsa.h"
#include "rkl/crypto/kcv.h"
#include "rkl/crypto/kdf.h"
#include "rkl/crypto/keys.h"
#include "rkl/crypto/kwp.h"
#include "rkl/crypto/random.h"
#include "rkl/crypto/rsa.h"
#include "rkl/crypto/x509.h"
#include "rkl/keyblock/tmk_block.h"
#include "rkl/protocol/auth.h"
#include "rkl/protocol/transport_key.h"

namespace rkl::bench {
namespace {

using crypto::CipherFamily;
using crypto::KeyAlgorithm;
using crypto::SecretBytes;

constexpr char kSn[] = "BENCH-0000001";

// Keys shared by every benchmark: generated once (RSA generation is slow).
struct Keys {
  crypto::PrivateKey pr = *crypto::GenerateRsaKey(2048);
  crypto::PublicKey pu = pr.GetPublicKey();
  crypto::PrivateKey card = *crypto::GenerateEcP256Key();
  crypto::PublicKey card_pub = card.GetPublicKey();
  SecretBytes pk = crypto::RandomSecret(32);
  SecretBytes mak = crypto::RandomSecret(32);
  SecretBytes lmk = crypto::RandomSecret(32);
  SecretBytes audit_key = crypto::RandomSecret(32);
};

}  // namespace

Keys& K() {
  static Keys* keys = new Keys();
  return *keys;
}

namespace {

Bytes RecordAad(uint64_t index) {
  std::string aad = absl::StrCat("RKL-HSM-KEY-1/", index, "/", kSn);
  return Bytes(aad.begin(), aad.end());
}

// The HSM's audit chain: HMAC-SHA256 over the previous MAC and a ~200-byte record.
absl::Status AuditMac(const SecretBytes& key, std::string_view what) {
  std::string record(200, 'r');
  record.replace(0, what.size(), what);
  uint8_t out[32];
  size_t out_len = 0;
  auto k = key.RevealSecret();
  if (EVP_Q_mac(nullptr, "HMAC", nullptr, "SHA256", nullptr, k.data(), k.size(),
                reinterpret_cast<const uint8_t*>(record.data()), record.size(), out, sizeof out,
                &out_len) == nullptr) {
    return absl::InternalError("HMAC failed");
  }
  return absl::OkStatus();
}

protocol::TransportKey NewTk() {
  return {KeyAlgorithm::kAes128, crypto::GenerateKey(KeyAlgorithm::kAes128),
          crypto::GenerateKey(KeyAlgorithm::kAes128)};
}

const absl::Status& StatusOf(const absl::Status& s) { return s; }
template <typename T>
const absl::Status& StatusOf(const absl::StatusOr<T>& s) {
  return s.status();
}

// The timed loop of a benchmark: `op` once an iteration, its result kept from the optimizer;
// the first failure stops the benchmark with the status' message.
template <typename Op>
void TimeOk(benchmark::State& state, Op op) {
  for (auto _ : state) {
    auto result = op();
    if (const absl::Status& s = StatusOf(result); !s.ok()) {
      state.SkipWithError(std::string(s.message()).c_str());
      return;
    }
    benchmark::DoNotOptimize(result);
  }
}

// For the set-up of a benchmark.
#define BENCH_OK(expr)                    \
  if (!(expr).ok()) {                     \
    state.SkipWithError(#expr " failed"); \
    return;                               \
  }

void BM_RsaOaepEncrypt2048(benchmark::State& state) {
  SecretBytes p = *protocol::EncodeTkPayload(NewTk());
  Bytes label = protocol::OaepLabel(kSn);
  TimeOk(state, [&] { return crypto::RsaOaepEncrypt(K().pu, p, label); });
}
BENCHMARK(BM_RsaOaepEncrypt2048);

void BM_RsaOaepDecrypt2048(benchmark::State& state) {
  SecretBytes p = *protocol::EncodeTkPayload(NewTk());
  Bytes label = protocol::OaepLabel(kSn);
  Bytes c = *crypto::RsaOaepEncrypt(K().pu, p, label);
  TimeOk(state, [&] { return crypto::RsaOaepDecrypt(K().pr, c, label); });
}
BENCHMARK(BM_RsaOaepDecrypt2048)->ThreadRange(1, 2)->UseRealTime();

// What a translate would pay on top of the decryption if HSM #1 did not keep parsed keys
// (UnsealedKeyCache): the sealed Pr record parsed from PKCS#8 DER into a fresh EVP_PKEY,
// whose first private operation also builds its Montgomery and blinding state (see
// docs/performance.md).
void BM_RsaPkcs8ParseThenDecrypt2048(benchmark::State& state) {
  SecretBytes der = *K().pr.ExportPkcs8DerSecret();
  SecretBytes p = *protocol::EncodeTkPayload(NewTk());
  Bytes label = protocol::OaepLabel(kSn);
  Bytes c = *crypto::RsaOaepEncrypt(K().pu, p, label);
  TimeOk(state, [&]() -> decltype(crypto::RsaOaepDecrypt(K().pr, c, label)) {
    RKL_ASSIGN_OR_RETURN(crypto::PrivateKey key, crypto::PrivateKey::FromPkcs8DerSecret(der));
    return crypto::RsaOaepDecrypt(key, c, label);
  });
}
BENCHMARK(BM_RsaPkcs8ParseThenDecrypt2048);

void BM_RsaPkcs8Parse2048(benchmark::State& state) {
  SecretBytes der = *K().pr.ExportPkcs8DerSecret();
  TimeOk(state, [&] { return crypto::PrivateKey::FromPkcs8DerSecret(der); });
}
BENCHMARK(BM_RsaPkcs8Parse2048);

void BM_KwpWrapTkPayload(benchmark::State& state) {
  SecretBytes p = *protocol::EncodeTkPayload(NewTk());
  TimeOk(state, [&] { return crypto::KwpWrap(K().pk, p); });
}
BENCHMARK(BM_KwpWrapTkPayload);

void BM_KwpUnwrapTkPayload(benchmark::State& state) {
  SecretBytes p = *protocol::EncodeTkPayload(NewTk());
  Bytes w = *crypto::KwpWrap(K().pk, p);
  TimeOk(state, [&] { return crypto::KwpUnwrap(K().pk, w); });
}
BENCHMARK(BM_KwpUnwrapTkPayload);

void BM_CmacAes256(benchmark::State& state) {
  Bytes data = crypto::RandomBytes(static_cast<size_t>(state.range(0)));
  TimeOk(state, [&] { return crypto::Cmac(CipherFamily::kAes, K().mak, data); });
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * state.range(0));
}
BENCHMARK(BM_CmacAes256)->Arg(64)->Arg(1024);

void BM_KdfAuthKeys(benchmark::State& state) {
  SecretBytes auk = crypto::GenerateKey(KeyAlgorithm::kAes128);
  TimeOk(state, [&] { return protocol::DeriveAuthKeys(KeyAlgorithm::kAes128, auk, kSn); });
}
BENCHMARK(BM_KdfAuthKeys);

void BM_Tr31BuildTmkBlock(benchmark::State& state) {
  SecretBytes tek = crypto::GenerateKey(KeyAlgorithm::kAes128);
  SecretBytes tmk = crypto::GenerateKey(KeyAlgorithm::kAes128);
  TimeOk(state, [&] {
    return keyblock::BuildTmkBlock(tek, KeyAlgorithm::kAes128, tmk, KeyAlgorithm::kAes128);
  });
}
BENCHMARK(BM_Tr31BuildTmkBlock);

void BM_Tr31ParseTmkBlock(benchmark::State& state) {
  SecretBytes tek = crypto::GenerateKey(KeyAlgorithm::kAes128);
  SecretBytes tmk = crypto::GenerateKey(KeyAlgorithm::kAes128);
  std::string block =
      *keyblock::BuildTmkBlock(tek, KeyAlgorithm::kAes128, tmk, KeyAlgorithm::kAes128);
  TimeOk(state, [&] { return keyblock::ParseTmkBlock(tek, KeyAlgorithm::kAes128, block); });
}
BENCHMARK(BM_Tr31ParseTmkBlock);

// A key record as the HSM seals it under its LMK: AES-256-GCM over the key, AAD binding
// index, type, usage and SN.
void BM_GcmSealKeyRecord(benchmark::State& state) {
  SecretBytes key = crypto::GenerateKey(KeyAlgorithm::kAes128);
  Bytes aad = RecordAad(42);
  TimeOk(state, [&] { return crypto::AeadSeal(K().lmk, key, aad); });
}
BENCHMARK(BM_GcmSealKeyRecord);

void BM_GcmOpenKeyRecord(benchmark::State& state) {
  SecretBytes key = crypto::GenerateKey(KeyAlgorithm::kAes128);
  Bytes aad = RecordAad(42);
  Bytes sealed = *crypto::AeadSeal(K().lmk, key, aad);
  TimeOk(state, [&] { return crypto::AeadOpen(K().lmk, sealed, aad); });
}
BENCHMARK(BM_GcmOpenKeyRecord);

void BM_EcdsaP256Sign(benchmark::State& state) {
  Bytes msg = crypto::RandomBytes(400);
  TimeOk(state, [&] { return crypto::EcdsaSign(K().card, msg); });
}
BENCHMARK(BM_EcdsaP256Sign);

void BM_EcdsaP256Verify(benchmark::State& state) {
  Bytes msg = crypto::RandomBytes(400);
  Bytes sig = *crypto::EcdsaSign(K().card, msg);
  TimeOk(state, [&] { return crypto::EcdsaVerify(K().card_pub, msg, sig); });
}
BENCHMARK(BM_EcdsaP256Verify);

// Parsing an X.509 certificate (an HsmWCRT-like one: RSA-2048 subject key). OpenSSL 3.0
// decodes the subject key through its provider decoder registry, under a global lock; the
// cost a simulated terminal avoids by keeping its parsed certificates (CertificateMemo).
void BM_CertificateParseRsa2048(benchmark::State& state) {
  auto issuer_key = *crypto::GenerateEcP256Key();
  auto issuer = crypto::CertificateBuilder()
                    .SetSubjectCommonName("bench-root")
                    .SetSerial({1})
                    .SetValidity(0, 4102444800)
                    .SetBasicConstraints(true, std::nullopt)
                    .SelfSign(issuer_key);
  BENCH_OK(issuer);
  auto work = crypto::CertificateBuilder()
                  .SetSubjectCommonName("hsm-work:bench:1")
                  .SetSerial({2})
                  .SetValidity(0, 4102444800)
                  .SetPublicKey(K().pu)
                  .SetBasicConstraints(false, std::nullopt)
                  .SetKeyUsage(crypto::KeyUsage::kKeyEncipherment)
                  .Sign(*issuer, issuer_key);
  BENCH_OK(work);
  const Bytes der = work->ToDer();
  TimeOk(state, [&] { return crypto::Certificate::FromDer(der); });
}
BENCHMARK(BM_CertificateParseRsa2048);

// ---- One terminal, every cryptographic operation, both sides ------------------------------
//
// Mirrors the flow of ARCHITECTURE.md step by step, with keys already loaded (a real HSM
// keeps Pr, PK and MAK resident) and no I/O:
//   terminal   TK generation, OAEP encrypt under Pu
//   operator   ECDSA sign of the package
//   MTMS       ECDSA verify at intake, ECDSA verify again before re-wrapping (claim 4)
//   HSM #1     OAEP decrypt, KCVs, KWP wrap + CMAC (Ctk_pk), audit HMAC
//   HSM #2     CMAC verify + KWP unwrap, GCM seals of TEK and AUK, TMK generation + GCM
//              seal, auth KDF + Crnd1, Crnd2 verify, TR-31 build, install-proof verify,
//              a GCM open per key use and an audit HMAC per command
//   terminal   auth KDF, Crnd1 verify, Crnd2, TR-31 parse, KCV, install proof
absl::Status OneTerminal(int64_t n) {
  Keys& k = K();
  const std::string sn = absl::StrCat("BENCH-", n);
  const KeyAlgorithm alg = KeyAlgorithm::kAes128;
  auto hmac = [&](std::string_view what) { return AuditMac(k.audit_key, what); };
  // Terminal: TK and Ctk_Pu.
  protocol::TransportKey tk = NewTk();
  RKL_ASSIGN_OR_RETURN(SecretBytes payload, protocol::EncodeTkPayload(tk));
  const Bytes label = protocol::OaepLabel(sn);
  RKL_ASSIGN_OR_RETURN(Bytes ctk_pu, crypto::RsaOaepEncrypt(k.pu, payload, label));
  // Operator card signs the package (ctk_pu + header fields ≈ 330 bytes).
  Bytes package = ctk_pu;
  package.insert(package.end(), sn.begin(), sn.end());
  RKL_ASSIGN_OR_RETURN(Bytes signature, crypto::EcdsaSign(k.card, package));
  // MTMS: intake verify, forwarder re-verify.
  RKL_RETURN_IF_ERROR(crypto::EcdsaVerify(k.card_pub, package, signature));
  RKL_RETURN_IF_ERROR(crypto::EcdsaVerify(k.card_pub, package, signature));
  // HSM #1: translate.
  RKL_ASSIGN_OR_RETURN(SecretBytes p, crypto::RsaOaepDecrypt(k.pr, ctk_pu, label));
  RKL_ASSIGN_OR_RETURN(protocol::TransportKey parsed_tk, protocol::ParseTkPayload(p));
  protocol::CtkPkHeader header{.algorithm = alg, .sn = sn, .created_at_unix_ms = 1};
  RKL_ASSIGN_OR_RETURN(Bytes pk_kcv, crypto::Kcv(CipherFamily::kAes, k.pk));
  RKL_ASSIGN_OR_RETURN(Bytes mak_kcv, crypto::Kcv(CipherFamily::kAes, k.mak));
  std::copy_n(pk_kcv.begin(), 3, header.pk_kcv.begin());
  std::copy_n(mak_kcv.begin(), 3, header.mak_kcv.begin());
  RKL_ASSIGN_OR_RETURN(Bytes ctk_pk, protocol::BuildCtkPk(header, p, k.pk, k.mak));
  RKL_RETURN_IF_ERROR(crypto::KcvHex(alg, parsed_tk.tek).status());
  RKL_RETURN_IF_ERROR(crypto::KcvHex(alg, parsed_tk.auk).status());
  RKL_RETURN_IF_ERROR(hmac("translate"));
  // HSM #2: import.
  RKL_ASSIGN_OR_RETURN(protocol::ParsedCtkPk parsed, protocol::ParseCtkPk(ctk_pk));
  RKL_ASSIGN_OR_RETURN(protocol::TransportKey kms_tk, protocol::OpenCtkPk(parsed, k.pk, k.mak));
  RKL_ASSIGN_OR_RETURN(Bytes sealed_tek, crypto::AeadSeal(k.lmk, kms_tk.tek, RecordAad(1)));
  RKL_ASSIGN_OR_RETURN(Bytes sealed_auk, crypto::AeadSeal(k.lmk, kms_tk.auk, RecordAad(2)));
  RKL_RETURN_IF_ERROR(crypto::KcvHex(alg, kms_tk.tek).status());
  RKL_RETURN_IF_ERROR(crypto::KcvHex(alg, kms_tk.auk).status());
  RKL_RETURN_IF_ERROR(hmac("import"));
  // HSM #2: TMK.
  SecretBytes tmk = crypto::GenerateKey(alg);
  RKL_ASSIGN_OR_RETURN(std::string tmk_kcv, crypto::KcvHex(alg, tmk));
  RKL_ASSIGN_OR_RETURN(Bytes sealed_tmk, crypto::AeadSeal(k.lmk, tmk, RecordAad(3)));
  RKL_RETURN_IF_ERROR(hmac("tmk"));
  // Mutual authentication (PROTOCOL §7).
  Bytes rnd1 = crypto::RandomBytes(16), rnd2 = crypto::RandomBytes(16);
  RKL_ASSIGN_OR_RETURN(SecretBytes hsm_auk, crypto::AeadOpen(k.lmk, sealed_auk, RecordAad(2)));
  RKL_ASSIGN_OR_RETURN(protocol::AuthKeys hsm_keys, protocol::DeriveAuthKeys(alg, hsm_auk, sn));
  RKL_ASSIGN_OR_RETURN(Bytes crnd1, protocol::MakeCrnd1(hsm_keys, rnd1, rnd2));
  RKL_RETURN_IF_ERROR(hmac("challenge"));
  RKL_ASSIGN_OR_RETURN(protocol::AuthKeys pos_keys, protocol::DeriveAuthKeys(alg, tk.auk, sn));
  RKL_RETURN_IF_ERROR(protocol::VerifyCrnd1(pos_keys, rnd1, rnd2, crnd1));
  RKL_ASSIGN_OR_RETURN(Bytes crnd2, protocol::MakeCrnd2(pos_keys, rnd1, rnd2));
  RKL_ASSIGN_OR_RETURN(hsm_auk, crypto::AeadOpen(k.lmk, sealed_auk, RecordAad(2)));
  RKL_ASSIGN_OR_RETURN(hsm_keys, protocol::DeriveAuthKeys(alg, hsm_auk, sn));
  RKL_RETURN_IF_ERROR(protocol::VerifyCrnd2(hsm_keys, rnd1, rnd2, crnd2));
  RKL_RETURN_IF_ERROR(hmac("verify"));
  // Delivery: TR-31 under TEK.
  RKL_ASSIGN_OR_RETURN(SecretBytes hsm_tek, crypto::AeadOpen(k.lmk, sealed_tek, RecordAad(1)));
  RKL_ASSIGN_OR_RETURN(SecretBytes hsm_tmk, crypto::AeadOpen(k.lmk, sealed_tmk, RecordAad(3)));
  RKL_ASSIGN_OR_RETURN(std::string block, keyblock::BuildTmkBlock(hsm_tek, alg, hsm_tmk, alg));
  RKL_RETURN_IF_ERROR(hmac("export"));
  RKL_ASSIGN_OR_RETURN(keyblock::TmkDelivery delivery, keyblock::ParseTmkBlock(tk.tek, alg, block));
  RKL_ASSIGN_OR_RETURN(Bytes kcv, crypto::Kcv(alg, delivery.tmk));
  if (ToHex(kcv) != tmk_kcv) return absl::InternalError("TMK KCV mismatch");
  // Install proof.
  RKL_ASSIGN_OR_RETURN(Bytes proof, protocol::MakeInstallProof(pos_keys, sn, kcv, rnd1, rnd2));
  RKL_ASSIGN_OR_RETURN(hsm_auk, crypto::AeadOpen(k.lmk, sealed_auk, RecordAad(2)));
  RKL_ASSIGN_OR_RETURN(hsm_keys, protocol::DeriveAuthKeys(alg, hsm_auk, sn));
  RKL_RETURN_IF_ERROR(protocol::VerifyInstallProof(hsm_keys, sn, kcv, rnd1, rnd2, proof));
  return hmac("installed");
}

void BM_TerminalCryptoOnly(benchmark::State& state) {
  int64_t n = 0;
  TimeOk(state, [&] { return OneTerminal(n++); });
}
BENCHMARK(BM_TerminalCryptoOnly)->ThreadRange(1, 2)->UseRealTime();

}  // namespace
}  // namespace rkl::bench

// Keys are generated before the first benchmark, so no benchmark's time includes them.
// With threads:N and real time, Google Benchmark reports the wall time per iteration of one
// thread: the machine's rate is N / real_time (bench/report.py computes it that way).
int main(int argc, char** argv) {
  rkl::bench::K();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
