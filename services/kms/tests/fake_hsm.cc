#include "fake_hsm.h"

#include "absl/strings/str_cat.h"
#include "rkl/common/status_macros.h"
#include "rkl/crypto/kcv.h"
#include "rkl/crypto/random.h"
#include "rkl/crypto/rsa.h"
#include "rkl/keyblock/tmk_block.h"
#include "rkl/protocol/auth.h"
#include "rkl/protocol/transport_key.h"
#include "rkl/tr34/profile.h"
#include "rkl/tr34/tokens.h"

namespace rkl::kms::testing {
namespace {

using crypto::KeyAlgorithm;
using crypto::SecretBytes;

std::string KcvText(KeyAlgorithm a, const SecretBytes& k) { return *crypto::KcvHex(a, k); }

std::string AesKcv(const SecretBytes& k) { return *crypto::KcvHex(crypto::CipherFamily::kAes, k); }

}  // namespace

TransportKeys TransportKeys::Generate() {
  return {crypto::GenerateKey(KeyAlgorithm::kAes256), crypto::GenerateKey(KeyAlgorithm::kAes256)};
}

FakeHsm::FakeHsm(const TransportKeys& keys) {
  absl::MutexLock lock(&mu_);
  keys_.emplace(kPkIndex, Key{Type::kPk, "", KeyAlgorithm::kAes256, keys.pk, AesKcv(keys.pk)});
  keys_.emplace(kMakIndex, Key{Type::kMak, "", KeyAlgorithm::kAes256, keys.mak, AesKcv(keys.mak)});
}

absl::Status FakeHsm::Enter(const std::string& method, PendingHook& hook) {
  ++calls_[method];
  if (auto it = on_next_call_.find(method); it != on_next_call_.end()) {
    hook.fn = std::move(it->second);
    on_next_call_.erase(it);
  }
  if (fail_next_ > 0) {
    --fail_next_;
    return absl::UnavailableError("fake HSM: unreachable (injected)");
  }
  return absl::OkStatus();
}

void FakeHsm::OnNextCall(const std::string& method, std::function<void()> fn) {
  absl::MutexLock lock(&mu_);
  on_next_call_[method] = std::move(fn);
}

void FakeHsm::FailNextCalls(int n) {
  absl::MutexLock lock(&mu_);
  fail_next_ = n;
}

int FakeHsm::calls(const std::string& method) const {
  absl::MutexLock lock(&mu_);
  auto it = calls_.find(method);
  return it == calls_.end() ? 0 : it->second;
}

std::string FakeHsm::LiveTmkKcv(const std::string& sn) const {
  absl::MutexLock lock(&mu_);
  for (const auto& [i, k] : keys_) {
    if (k.type == Type::kTmk && k.sn == sn && k.live) return k.kcv;
  }
  return "";
}

absl::StatusOr<const FakeHsm::Key*> FakeHsm::Find(uint64_t index, Type type,
                                                  const std::string& sn) const {
  auto it = keys_.find(index);
  if (it == keys_.end() || !it->second.live) {
    return absl::NotFoundError(absl::StrCat("key_index: no live key ", index));
  }
  if (it->second.type != type || it->second.sn != sn) {
    return absl::PermissionDeniedError(
        absl::StrCat("key_index: key ", index, " may not be used for this"));
  }
  return &it->second;
}

uint64_t FakeHsm::Store(Key key) {
  uint64_t index = next_index_++;
  keys_.emplace(index, std::move(key));
  return index;
}

absl::StatusOr<ImportedAndChallenged> FakeHsm::ImportAndChallenge(uint64_t pk_index,
                                                                  uint64_t mak_index,
                                                                  const std::string& sn,
                                                                  std::span<const uint8_t> ctk_pk,
                                                                  std::span<const uint8_t> rnd1) {
  PendingHook hook;
  absl::MutexLock lock(&mu_);
  RKL_RETURN_IF_ERROR(Enter("ImportAndChallenge", hook));
  RKL_ASSIGN_OR_RETURN(const Key* pk, Find(pk_index, Type::kPk, ""));
  RKL_ASSIGN_OR_RETURN(const Key* mak, Find(mak_index, Type::kMak, ""));
  RKL_ASSIGN_OR_RETURN(protocol::ParsedCtkPk parsed, protocol::ParseCtkPk(ctk_pk));
  // §6: MAC first; any failure of the opening is one uniform error.
  absl::StatusOr<protocol::TransportKey> tk = protocol::OpenCtkPk(parsed, pk->bytes, mak->bytes);
  if (!tk.ok()) return absl::UnauthenticatedError("transport key rejected");
  if (parsed.header.sn != sn || ToHex(parsed.header.pk_kcv) != pk->kcv ||
      ToHex(parsed.header.mak_kcv) != mak->kcv) {
    return absl::UnauthenticatedError("transport key rejected");
  }
  RKL_RETURN_IF_ERROR(protocol::CheckNonce(tk->algorithm, rnd1, "rnd1"));
  ImportedAndChallenged out;
  ImportedTransportKey& imported = out.imported;
  imported.algorithm = tk->algorithm;
  imported.tek_kcv = KcvText(tk->algorithm, tk->tek);
  imported.auk_kcv = KcvText(tk->algorithm, tk->auk);
  // The same transport key again: the keys it made. A new one supersedes the SN's live
  // TEK, AUK and TMK, as rkl-hsm does.
  uint64_t live_tek = 0, live_auk = 0;
  for (const auto& [index, key] : keys_) {
    if (key.sn != sn || !key.live) continue;
    if (key.type == Type::kTek && key.bytes == tk->tek) live_tek = index;
    if (key.type == Type::kAuk && key.bytes == tk->auk) live_auk = index;
  }
  if (live_tek != 0 && live_auk != 0) {
    imported.tek_index = live_tek;
    imported.auk_index = live_auk;
  } else {
    for (auto& [index, key] : keys_) {
      if (key.sn == sn) key.live = false;
    }
    imported.tek_index = Store({Type::kTek, sn, tk->algorithm, tk->tek, imported.tek_kcv});
    imported.auk_index = Store({Type::kAuk, sn, tk->algorithm, tk->auk, imported.auk_kcv});
  }
  RKL_ASSIGN_OR_RETURN(out.challenge, Challenge(imported.auk_index, sn, rnd1));
  return out;
}

absl::StatusOr<AuthenticatedDelivery> FakeHsm::AuthenticateAndDeliver(
    uint64_t auk_index, const std::string& sn, std::span<const uint8_t> rnd1,
    std::span<const uint8_t> rnd2, std::span<const uint8_t> crnd2, KeyAlgorithm algorithm,
    bool replace_existing, uint64_t tek_index) {
  PendingHook hook;
  absl::MutexLock lock(&mu_);
  RKL_RETURN_IF_ERROR(Enter("AuthenticateAndDeliver", hook));
  RKL_ASSIGN_OR_RETURN(const Key* auk, Find(auk_index, Type::kAuk, sn));
  RKL_ASSIGN_OR_RETURN(protocol::AuthKeys keys,
                       protocol::DeriveAuthKeys(auk->algorithm, auk->bytes, sn));
  RKL_RETURN_IF_ERROR(protocol::VerifyCrnd2(keys, rnd1, rnd2, crnd2));
  RKL_ASSIGN_OR_RETURN(const Key* tek, Find(tek_index, Type::kTek, sn));
  AuthenticatedDelivery out;
  const Key* tmk = nullptr;
  for (auto& [index, key] : keys_) {
    if (key.type != Type::kTmk || key.sn != sn || !key.live) continue;
    if (replace_existing) {
      key.live = false;  // superseded
      continue;
    }
    if (key.algorithm != algorithm) {
      return absl::FailedPreconditionError("algorithm: differs from the live TMK");
    }
    out.tmk = GeneratedTmk{index, key.kcv, false};
    tmk = &key;
  }
  if (tmk == nullptr) {
    SecretBytes bytes = crypto::GenerateKey(algorithm);
    std::string kcv = KcvText(algorithm, bytes);
    Key key{Type::kTmk, sn, algorithm, std::move(bytes), kcv};
    key.kek_index = tek_index;
    uint64_t index = Store(std::move(key));
    out.tmk = GeneratedTmk{index, kcv, true};
    tmk = &keys_.at(index);
  }
  if (tmk->kek_index != tek_index) {
    return absl::PermissionDeniedError("key_index: the TMK is bound to another TEK");
  }
  RKL_ASSIGN_OR_RETURN(std::string block, keyblock::BuildTmkBlock(tek->bytes, tek->algorithm,
                                                                  tmk->bytes, tmk->algorithm));
  out.block = ExportedKeyBlock{std::move(block), tmk->kcv, tek->kcv};
  return out;
}

absl::StatusOr<AuthChallengeResult> FakeHsm::AuthChallenge(uint64_t auk_index,
                                                           const std::string& sn,
                                                           std::span<const uint8_t> rnd1) {
  PendingHook hook;
  absl::MutexLock lock(&mu_);
  RKL_RETURN_IF_ERROR(Enter("AuthChallenge", hook));
  return Challenge(auk_index, sn, rnd1);
}

absl::StatusOr<AuthChallengeResult> FakeHsm::Challenge(uint64_t auk_index, const std::string& sn,
                                                       std::span<const uint8_t> rnd1) {
  RKL_ASSIGN_OR_RETURN(const Key* auk, Find(auk_index, Type::kAuk, sn));
  RKL_RETURN_IF_ERROR(protocol::CheckNonce(auk->algorithm, rnd1, "rnd1"));
  RKL_ASSIGN_OR_RETURN(protocol::AuthKeys keys,
                       protocol::DeriveAuthKeys(auk->algorithm, auk->bytes, sn));
  Bytes rnd2 = crypto::RandomBytes(rnd1.size());
  RKL_ASSIGN_OR_RETURN(Bytes crnd1, protocol::MakeCrnd1(keys, rnd1, rnd2));
  return AuthChallengeResult{std::move(rnd2), std::move(crnd1)};
}

absl::StatusOr<std::vector<uint64_t>> FakeHsm::DestroyTerminalKeys(const std::string& sn,
                                                                   const std::string&) {
  PendingHook hook;
  absl::MutexLock lock(&mu_);
  RKL_RETURN_IF_ERROR(Enter("DestroyTerminalKeys", hook));
  std::vector<uint64_t> destroyed;
  for (auto& [index, key] : keys_) {
    if (key.sn != sn || key.sn.empty() || key.destroyed) continue;
    key.live = false;
    key.destroyed = true;
    key.bytes = SecretBytes();
    destroyed.push_back(index);
  }
  return destroyed;
}

int FakeHsm::UndestroyedKeys(const std::string& sn) const {
  absl::MutexLock lock(&mu_);
  int n = 0;
  for (const auto& [index, key] : keys_) n += key.sn == sn && !key.destroyed;
  return n;
}

absl::Status FakeHsm::VerifyInstallProof(uint64_t auk_index, const std::string& sn,
                                         const std::string& tmk_kcv, std::span<const uint8_t> rnd1,
                                         std::span<const uint8_t> rnd2,
                                         std::span<const uint8_t> proof) {
  PendingHook hook;
  absl::MutexLock lock(&mu_);
  RKL_RETURN_IF_ERROR(Enter("VerifyInstallProof", hook));
  RKL_ASSIGN_OR_RETURN(const Key* auk, Find(auk_index, Type::kAuk, sn));
  RKL_ASSIGN_OR_RETURN(Bytes kcv, FromHex(tmk_kcv, "tmk_kcv"));
  RKL_ASSIGN_OR_RETURN(protocol::AuthKeys keys,
                       protocol::DeriveAuthKeys(auk->algorithm, auk->bytes, sn));
  return protocol::VerifyInstallProof(keys, sn, kcv, rnd1, rnd2, proof);
}

void FakeHsm::SetTrustedKrdCas(std::vector<crypto::Certificate> cas) {
  absl::MutexLock lock(&mu_);
  krd_cas_ = std::move(cas);
}

int FakeHsm::kdh_keys() const {
  absl::MutexLock lock(&mu_);
  int n = 0;
  for (const auto& [index, key] : keys_) n += key.type == Type::kKdh;
  return n;
}

absl::StatusOr<GeneratedKdhKey> FakeHsm::GenerateKdhKey(uint32_t bits, const std::string&) {
  PendingHook hook;
  absl::MutexLock lock(&mu_);
  RKL_RETURN_IF_ERROR(Enter("GenerateKdhKey", hook));
  if (bits != 2048 && bits != 3072) return absl::InvalidArgumentError("bits: 2048 or 3072");
  RKL_ASSIGN_OR_RETURN(crypto::PrivateKey rsa, crypto::GenerateRsaKey(static_cast<int>(bits)));
  Bytes public_der = rsa.GetPublicKey().ToDer();
  Key key{Type::kKdh, "", KeyAlgorithm::kAes128, SecretBytes(), ""};
  key.rsa = std::move(rsa);
  return GeneratedKdhKey{Store(std::move(key)), std::move(public_der)};
}

absl::StatusOr<BuiltKeyToken> FakeHsm::BuildKeyToken(const KeyTokenOrder& order) {
  PendingHook hook;
  absl::MutexLock lock(&mu_);
  RKL_RETURN_IF_ERROR(Enter("BuildKeyToken", hook));
  // The KRD: trusted CA, role KRD, CN = SN.
  RKL_ASSIGN_OR_RETURN(crypto::Certificate krd_cert,
                       crypto::Certificate::FromDer(order.krd_certificate_der));
  std::optional<tr34::PeerKey> krd;
  for (const crypto::Certificate& ca : krd_cas_) {
    absl::StatusOr<tr34::PeerKey> peer = tr34::PeerFromCertificate(krd_cert, tr34::Role::kKrd, ca);
    if (peer.ok()) {
      krd = *std::move(peer);
      break;
    }
  }
  if (!krd) return absl::FailedPreconditionError("krd_certificate_der: not a trusted KRD");
  RKL_ASSIGN_OR_RETURN(std::string cn, tr34::SnOfKrdCertificate(krd_cert));
  if (cn != order.sn) return absl::InvalidArgumentError("krd_certificate_der: CN is not sn");
  const std::string krd_id = tr34::KrdIdOf(krd->id);
  // The KDH key and its certificate.
  auto kdh = keys_.find(order.kdh_key_index);
  if (kdh == keys_.end() || kdh->second.type != Type::kKdh || !kdh->second.rsa) {
    return absl::PermissionDeniedError("kdh_key_index: not a KDH signing key");
  }
  RKL_ASSIGN_OR_RETURN(crypto::Certificate kdh_cert,
                       crypto::Certificate::FromDer(order.kdh_certificate_der));
  RKL_ASSIGN_OR_RETURN(crypto::PublicKey kdh_public, kdh_cert.GetPublicKey());
  if (kdh_public.ToDer() != kdh->second.rsa->GetPublicKey().ToDer()) {
    return absl::InvalidArgumentError("kdh_certificate_der: not the key of kdh_key_index");
  }
  RKL_ASSIGN_OR_RETURN(tr34::CertId kdh_id, tr34::CertIdOf(kdh_cert));
  RKL_ASSIGN_OR_RETURN(std::string header, tr34::TmkHeader(order.algorithm));
  // The SN's TMK: the live one bound to this KRD, else a new one superseding any other.
  std::optional<uint64_t> tmk_index;
  for (auto& [index, key] : keys_) {
    if (key.type != Type::kTmk || key.sn != order.sn || !key.live) continue;
    if (!order.replace_existing && key.bound_krd == krd_id && key.algorithm == order.algorithm) {
      tmk_index = index;
    } else {
      key.live = false;
    }
  }
  bool created = false;
  if (!tmk_index) {
    SecretBytes bytes = crypto::GenerateKey(order.algorithm);
    Key key{Type::kTmk, order.sn, order.algorithm, bytes, KcvText(order.algorithm, bytes)};
    key.bound_krd = krd_id;
    tmk_index = Store(std::move(key));
    created = true;
  }
  const Key& tmk = keys_.at(*tmk_index);
  RKL_ASSIGN_OR_RETURN(Bytes token, tr34::BuildKeyToken(tr34::KeyTokenRequest{
                                        .kdh_id = kdh_id,
                                        .kdh_key = &*kdh->second.rsa,
                                        .krd = *krd,
                                        .tmk_family = crypto::FamilyOf(order.algorithm),
                                        .tmk = &tmk.bytes,
                                        .header = header,
                                        .krd_nonce = order.krd_nonce,
                                        .signing_time = std::nullopt,
                                        .crls = order.crls}));
  return BuiltKeyToken{std::move(token), *tmk_index, tmk.kcv, created, krd_id};
}

absl::Status FakeHsm::VerifyKeyTokenInstallProof(uint64_t tmk_index, const std::string& sn,
                                                 std::span<const uint8_t> krd_nonce,
                                                 std::span<const uint8_t> proof) {
  PendingHook hook;
  absl::MutexLock lock(&mu_);
  RKL_RETURN_IF_ERROR(Enter("VerifyKeyTokenInstallProof", hook));
  RKL_ASSIGN_OR_RETURN(const Key* tmk, Find(tmk_index, Type::kTmk, sn));
  if (tmk->bound_krd.empty()) {
    return absl::PermissionDeniedError("tmk_index: not a TR-34 TMK");
  }
  if (!tr34::VerifyInstallProof(tmk->algorithm, tmk->bytes, sn, krd_nonce, proof)) {
    return absl::UnauthenticatedError("proof: does not verify");
  }
  return absl::OkStatus();
}

}  // namespace rkl::kms::testing
