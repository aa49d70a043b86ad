#pragma once
// FakeHsm: an in-memory HSM #2 for tests of rkl-kms, implementing HsmPort with the real
// rkl::protocol / rkl::keyblock crypto, so a test terminal built from PROTOCOL.md talks to
// it exactly as it would to rkl-hsm. It enforces what the KMS relies on: the MAC over
// Ctk_pk (§6), keys bound to one SN and one usage, one live TMK per SN, bound to the TEK it
// was made for, superseded by a new transport key, destroyed by DestroyTerminalKeys. Test-only: it
// keeps keys in process memory. Failure injection lets tests simulate an unreachable HSM.
// Thread-safe.

#include <functional>
#include <map>
#include <optional>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "hsm_port.h"
#include "rkl/crypto/keys.h"
#include "rkl/crypto/secret_bytes.h"
#include "rkl/crypto/x509.h"

namespace rkl::kms::testing {

// PK and MAK as the key ceremony would have put them in both HSMs.
struct TransportKeys {
  crypto::SecretBytes pk;
  crypto::SecretBytes mak;
  static TransportKeys Generate();
};

class FakeHsm final : public HsmPort {
 public:
  static constexpr uint64_t kPkIndex = 1;
  static constexpr uint64_t kMakIndex = 2;

  explicit FakeHsm(const TransportKeys& keys);

  absl::StatusOr<ImportedAndChallenged> ImportAndChallenge(uint64_t pk_index, uint64_t mak_index,
                                                           const std::string& sn,
                                                           std::span<const uint8_t> ctk_pk,
                                                           std::span<const uint8_t> rnd1) override;
  absl::StatusOr<AuthenticatedDelivery> AuthenticateAndDeliver(
      uint64_t auk_index, const std::string& sn, std::span<const uint8_t> rnd1,
      std::span<const uint8_t> rnd2, std::span<const uint8_t> crnd2, crypto::KeyAlgorithm algorithm,
      bool replace_existing, uint64_t tek_index) override;
  absl::StatusOr<AuthChallengeResult> AuthChallenge(uint64_t auk_index, const std::string& sn,
                                                    std::span<const uint8_t> rnd1) override;
  absl::Status VerifyInstallProof(uint64_t auk_index, const std::string& sn,
                                  const std::string& tmk_kcv, std::span<const uint8_t> rnd1,
                                  std::span<const uint8_t> rnd2,
                                  std::span<const uint8_t> proof) override;
  absl::StatusOr<std::vector<uint64_t>> DestroyTerminalKeys(const std::string& sn,
                                                            const std::string& reason) override;
  // TR-34, with the libs/tr34 builders: the KDH key is an RSA key kept here, the token real.
  absl::StatusOr<GeneratedKdhKey> GenerateKdhKey(uint32_t bits, const std::string& label) override;
  absl::StatusOr<BuiltKeyToken> BuildKeyToken(const KeyTokenOrder& order) override;
  absl::Status VerifyKeyTokenInstallProof(uint64_t tmk_index, const std::string& sn,
                                          std::span<const uint8_t> krd_nonce,
                                          std::span<const uint8_t> proof) override;
  // The KRD CAs BuildKeyToken trusts (as HSM #2's tr34.krd_ca_files).
  void SetTrustedKrdCas(std::vector<crypto::Certificate> cas);
  // The KDH key generated last, for tests that build the KDH certificate themselves.
  int kdh_keys() const;

  // The next `n` calls fail with UNAVAILABLE (an unreachable HSM).
  void FailNextCalls(int n);
  // Runs `fn` once, when `method` is next called, after it did its work and before it
  // answers: a concurrent change made while KMS waits on the HSM. fn may call this fake.
  void OnNextCall(const std::string& method, std::function<void()> fn);
  int calls(const std::string& method) const;
  // Live TMK KCV of an SN, for tests ("" if none).
  std::string LiveTmkKcv(const std::string& sn) const;
  // Keys of an SN not yet destroyed (live or superseded), for tests.
  int UndestroyedKeys(const std::string& sn) const;

 private:
  enum class Type { kPk, kMak, kTek, kAuk, kTmk, kKdh };
  struct Key {
    Type type;
    std::string sn;
    crypto::KeyAlgorithm algorithm;
    crypto::SecretBytes bytes;
    std::string kcv;
    bool live = true;
    uint64_t kek_index = 0;  // TMK: its TEK
    bool destroyed = false;
    std::string bound_krd = {};                            // TR-34 TMK: the only KRD it goes to
    std::optional<crypto::PrivateKey> rsa = std::nullopt;  // KDH key
  };
  // AuthChallenge's work, under mu_.
  absl::StatusOr<AuthChallengeResult> Challenge(uint64_t auk_index, const std::string& sn,
                                                std::span<const uint8_t> rnd1)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // Declared before the lock in each method: runs the method's hook after the lock is gone.
  struct PendingHook {
    std::function<void()> fn;
    ~PendingHook() {
      if (fn) fn();
    }
  };
  absl::Status Enter(const std::string& method, PendingHook& hook)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<const Key*> Find(uint64_t index, Type type, const std::string& sn) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  uint64_t Store(Key key) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  mutable absl::Mutex mu_;
  std::map<uint64_t, Key> keys_ ABSL_GUARDED_BY(mu_);
  uint64_t next_index_ ABSL_GUARDED_BY(mu_) = 100;
  int fail_next_ ABSL_GUARDED_BY(mu_) = 0;
  std::map<std::string, int> calls_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, std::function<void()>> on_next_call_ ABSL_GUARDED_BY(mu_);
  std::vector<crypto::Certificate> krd_cas_ ABSL_GUARDED_BY(mu_);
};

}  // namespace rkl::kms::testing
