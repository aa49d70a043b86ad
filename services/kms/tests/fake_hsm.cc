#include "fake_hsm.h"

#include "absl/strings/str_cat.h"
#include "rkl/common/status_macros.h"
#include "rkl/crypto/kcv.h"
#include "rkl/crypto/random.h"
#include "rkl/keyblock/tmk_block.h"
#include "rkl/protocol/auth.h"
#include "rkl/protocol/transport_key.h"

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

absl::Status FakeHsm::Enter(const std::string& method) {
  ++calls_[method];
  if (auto it = on_next_call_.find(method); it != on_next_call_.end()) {
    std::function<void()> fn = std::move(it->second);
    on_next_call_.erase(it);
    fn();
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

absl::StatusOr<ImportedTransportKey> FakeHsm::ImportTransportKey(uint64_t pk_index,
                                                                 uint64_t mak_index,
                                                                 const std::string& sn,
                                                                 std::span<const uint8_t> ctk_pk) {
  absl::MutexLock lock(&mu_);
  RKL_RETURN_IF_ERROR(Enter("ImportTransportKey"));
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
  ImportedTransportKey out;
  out.algorithm = tk->algorithm;
  out.tek_kcv = KcvText(tk->algorithm, tk->tek);
  out.auk_kcv = KcvText(tk->algorithm, tk->auk);
  out.tek_index = Store({Type::kTek, sn, tk->algorithm, tk->tek, out.tek_kcv});
  out.auk_index = Store({Type::kAuk, sn, tk->algorithm, tk->auk, out.auk_kcv});
  return out;
}

absl::StatusOr<GeneratedTmk> FakeHsm::GenerateTmk(const std::string& sn, KeyAlgorithm algorithm,
                                                  bool replace_existing) {
  absl::MutexLock lock(&mu_);
  RKL_RETURN_IF_ERROR(Enter("GenerateTmk"));
  for (auto& [index, key] : keys_) {
    if (key.type != Type::kTmk || key.sn != sn || !key.live) continue;
    if (!replace_existing) {
      if (key.algorithm != algorithm) {
        return absl::FailedPreconditionError("algorithm: differs from the live TMK");
      }
      return GeneratedTmk{index, key.kcv, false};
    }
    key.live = false;  // superseded
  }
  SecretBytes tmk = crypto::GenerateKey(algorithm);
  std::string kcv = KcvText(algorithm, tmk);
  uint64_t index = Store({Type::kTmk, sn, algorithm, std::move(tmk), kcv});
  return GeneratedTmk{index, kcv, true};
}

absl::StatusOr<AuthChallengeResult> FakeHsm::AuthChallenge(uint64_t auk_index,
                                                           const std::string& sn,
                                                           std::span<const uint8_t> rnd1) {
  absl::MutexLock lock(&mu_);
  RKL_RETURN_IF_ERROR(Enter("AuthChallenge"));
  RKL_ASSIGN_OR_RETURN(const Key* auk, Find(auk_index, Type::kAuk, sn));
  RKL_RETURN_IF_ERROR(protocol::CheckNonce(auk->algorithm, rnd1, "rnd1"));
  RKL_ASSIGN_OR_RETURN(protocol::AuthKeys keys,
                       protocol::DeriveAuthKeys(auk->algorithm, auk->bytes, sn));
  Bytes rnd2 = crypto::RandomBytes(rnd1.size());
  RKL_ASSIGN_OR_RETURN(Bytes crnd1, protocol::MakeCrnd1(keys, rnd1, rnd2));
  return AuthChallengeResult{std::move(rnd2), std::move(crnd1)};
}

absl::Status FakeHsm::AuthVerify(uint64_t auk_index, const std::string& sn,
                                 std::span<const uint8_t> rnd1, std::span<const uint8_t> rnd2,
                                 std::span<const uint8_t> crnd2) {
  absl::MutexLock lock(&mu_);
  RKL_RETURN_IF_ERROR(Enter("AuthVerify"));
  RKL_ASSIGN_OR_RETURN(const Key* auk, Find(auk_index, Type::kAuk, sn));
  RKL_ASSIGN_OR_RETURN(protocol::AuthKeys keys,
                       protocol::DeriveAuthKeys(auk->algorithm, auk->bytes, sn));
  return protocol::VerifyCrnd2(keys, rnd1, rnd2, crnd2);
}

absl::StatusOr<ExportedKeyBlock> FakeHsm::ExportKeyBlock(uint64_t key_index, uint64_t kek_index,
                                                         const std::string& sn) {
  absl::MutexLock lock(&mu_);
  RKL_RETURN_IF_ERROR(Enter("ExportKeyBlock"));
  RKL_ASSIGN_OR_RETURN(const Key* tmk, Find(key_index, Type::kTmk, sn));
  RKL_ASSIGN_OR_RETURN(const Key* tek, Find(kek_index, Type::kTek, sn));
  RKL_ASSIGN_OR_RETURN(std::string block, keyblock::BuildTmkBlock(tek->bytes, tek->algorithm,
                                                                  tmk->bytes, tmk->algorithm));
  return ExportedKeyBlock{std::move(block), tmk->kcv, tek->kcv};
}

absl::Status FakeHsm::VerifyInstallProof(uint64_t auk_index, const std::string& sn,
                                         const std::string& tmk_kcv, std::span<const uint8_t> rnd1,
                                         std::span<const uint8_t> rnd2,
                                         std::span<const uint8_t> proof) {
  absl::MutexLock lock(&mu_);
  RKL_RETURN_IF_ERROR(Enter("VerifyInstallProof"));
  RKL_ASSIGN_OR_RETURN(const Key* auk, Find(auk_index, Type::kAuk, sn));
  RKL_ASSIGN_OR_RETURN(Bytes kcv, FromHex(tmk_kcv, "tmk_kcv"));
  RKL_ASSIGN_OR_RETURN(protocol::AuthKeys keys,
                       protocol::DeriveAuthKeys(auk->algorithm, auk->bytes, sn));
  return protocol::VerifyInstallProof(keys, sn, kcv, rnd1, rnd2, proof);
}

}  // namespace rkl::kms::testing
