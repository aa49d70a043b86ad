#pragma once
// FakeHsmKeySource: HSMs as the CA core sees them, scripted by tests. An HSM is known once
// Add() or Down() names it; a key it was not told about is NOT_FOUND, as the HSM says.

#include <map>
#include <string>
#include <string_view>
#include <utility>

#include "hsm_key_source.h"
#include "rkl/crypto/keys.h"

namespace rkl::ca {

class FakeHsmKeySource final : public HsmKeySource {
 public:
  // HSM `hsm_id` holds `key` at `index` with `usage`.
  void Put(const std::string& hsm_id, uint64_t index, const crypto::PublicKey& key,
           HsmKeyUsage usage = HsmKeyUsage::kKdhSign) {
    Put(hsm_id, index, CertifiableKey{key.ToDer(), usage, hsm_id});
  }
  void Put(const std::string& hsm_id, uint64_t index, CertifiableKey answer) {
    hsms_[hsm_id].answers[index] = std::move(answer);
  }
  // The HSM answers this status for `index`.
  void Refuse(const std::string& hsm_id, uint64_t index, absl::Status status) {
    hsms_[hsm_id].answers[index] = std::move(status);
  }
  // The HSM is configured but does not answer.
  void Down(const std::string& hsm_id) { hsms_[hsm_id].down = true; }
  int calls() const { return calls_; }

  bool Knows(std::string_view hsm_id) const override { return hsms_.find(hsm_id) != hsms_.end(); }
  absl::StatusOr<CertifiableKey> Get(const std::string& hsm_id, uint64_t key_index) override {
    ++calls_;
    auto hsm = hsms_.find(hsm_id);
    if (hsm == hsms_.end()) return absl::FailedPreconditionError("not configured");
    if (hsm->second.down) return absl::UnavailableError(hsm_id + " unavailable: connect failed");
    auto it = hsm->second.answers.find(key_index);
    if (it == hsm->second.answers.end()) return absl::NotFoundError("key_index: key not found");
    return it->second;
  }

 private:
  struct Hsm {
    std::map<uint64_t, absl::StatusOr<CertifiableKey>> answers;
    bool down = false;
  };
  std::map<std::string, Hsm, std::less<>> hsms_;
  int calls_ = 0;
};

}  // namespace rkl::ca
