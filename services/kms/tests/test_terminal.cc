#include "test_terminal.h"

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "rkl/common/status_macros.h"
#include "rkl/crypto/cipher.h"
#include "rkl/crypto/cmac.h"
#include "rkl/crypto/kcv.h"
#include "rkl/crypto/random.h"
#include "rkl/keyblock/tmk_block.h"
#include "rkl/keyblock/tr31.h"
#include "rkl/protocol/auth.h"
#include "rkl/protocol/transport_key.h"

namespace rkl::kms::testing {
namespace {

using crypto::CipherFamily;
using crypto::KeyAlgorithm;

absl::Status Reject(const std::string& what) {
  return absl::FailedPreconditionError(absl::StrCat("terminal rejects key block: ", what));
}

// "00" ‖ KCV for TDES keys (legacy method), "01" ‖ KCV for AES keys (CMAC method).
absl::StatusOr<std::string> KcvField(KeyAlgorithm a, const crypto::SecretBytes& key) {
  RKL_ASSIGN_OR_RETURN(std::string kcv, crypto::KcvHex(a, key));
  return absl::StrCat(crypto::FamilyOf(a) == CipherFamily::kTdes ? "00" : "01", kcv);
}

}  // namespace

TestTerminal::TestTerminal(std::string sn, KeyAlgorithm algorithm)
    : sn_(std::move(sn)), algorithm_(algorithm) {
  RegenerateTransportKey();
}

void TestTerminal::RegenerateTransportKey() {
  tek_ = crypto::GenerateKey(algorithm_);
  auk_ = crypto::GenerateKey(algorithm_);
  // A new TK travels in a later package (KMS keeps only the newest, by created_at).
  if (!tek_created_at_ms_set_) {
    tek_created_at_ms_set_ = true;
  } else {
    tk_created_at_ms_ += 1000;
  }
}

absl::StatusOr<Bytes> TestTerminal::MakeCtkPk(const crypto::SecretBytes& pk,
                                              const crypto::SecretBytes& mak,
                                              std::optional<int64_t> created_at_ms) const {
  protocol::TransportKey tk{algorithm_, tek_, auk_};
  RKL_ASSIGN_OR_RETURN(crypto::SecretBytes payload, protocol::EncodeTkPayload(tk));
  protocol::CtkPkHeader h;
  h.algorithm = algorithm_;
  h.sn = sn_;
  h.created_at_unix_ms = created_at_ms.value_or(tk_created_at_ms_);
  RKL_ASSIGN_OR_RETURN(Bytes pk_kcv, crypto::Kcv(CipherFamily::kAes, pk));
  RKL_ASSIGN_OR_RETURN(Bytes mak_kcv, crypto::Kcv(CipherFamily::kAes, mak));
  std::copy(pk_kcv.begin(), pk_kcv.end(), h.pk_kcv.begin());
  std::copy(mak_kcv.begin(), mak_kcv.end(), h.mak_kcv.begin());
  return protocol::BuildCtkPk(h, payload, pk, mak);
}

Bytes TestTerminal::NewRnd1() {
  rnd1_ = crypto::RandomBytes(crypto::BlockSize(algorithm_));
  rnd2_.clear();
  return rnd1_;
}

absl::StatusOr<Bytes> TestTerminal::AnswerChallenge(std::span<const uint8_t> crnd1,
                                                    std::span<const uint8_t> rnd2) {
  RKL_ASSIGN_OR_RETURN(protocol::AuthKeys keys, protocol::DeriveAuthKeys(algorithm_, auk_, sn_));
  RKL_RETURN_IF_ERROR(protocol::CheckNonce(algorithm_, rnd2, "rnd2"));
  // Abort unless KMS proved AUK (step 3).
  RKL_RETURN_IF_ERROR(protocol::VerifyCrnd1(keys, rnd1_, rnd2, crnd1));
  rnd2_.assign(rnd2.begin(), rnd2.end());
  return protocol::MakeCrnd2(keys, rnd1_, rnd2_);
}

absl::Status TestTerminal::AcceptKeyBlock(const std::string& block, const std::string& kcv) {
  const bool tdes = crypto::FamilyOf(algorithm_) == CipherFamily::kTdes;
  // The clear header, field by field (TR-31 / X9.143 layout), before any cryptography.
  if (block.size() < 16) return Reject("shorter than a header");
  if (block[0] != (tdes ? 'B' : 'D')) return Reject("version");
  int length = 0;
  if (!absl::SimpleAtoi(block.substr(1, 4), &length) || length != static_cast<int>(block.size())) {
    return Reject("key block length field");
  }
  if (block.substr(5, 2) != "K0") return Reject("key usage");
  if (block[7] != (tdes ? 'T' : 'A')) return Reject("algorithm");
  if (block[8] != 'D') return Reject("mode of use");
  if (block.substr(9, 2) != "00") return Reject("key version number");
  if (block[11] != 'N') return Reject("exportability");
  const std::string count = block.substr(12, 2);
  if (count != "02" && count != "03") return Reject("number of optional blocks");
  if (block.substr(14, 2) != "00") return Reject("reserved field");

  // Authenticate and decrypt under TEK, then compare the header with what we expect.
  RKL_ASSIGN_OR_RETURN(keyblock::ParsedKeyBlock parsed, keyblock::Parse(tek_, block));
  const keyblock::KeyBlockHeader& h = parsed.header;
  if (h.version != (tdes ? keyblock::KeyBlockVersion::kB : keyblock::KeyBlockVersion::kD) ||
      h.key_usage != "K0" || h.algorithm != (tdes ? 'T' : 'A') || h.mode_of_use != 'D' ||
      h.key_version != "00" || h.exportability != 'N') {
    return Reject("parsed header");
  }
  if (parsed.key.size() != crypto::KeyLength(algorithm_)) return Reject("TMK length");
  RKL_ASSIGN_OR_RETURN(std::string want_kc, KcvField(algorithm_, parsed.key));
  RKL_ASSIGN_OR_RETURN(std::string want_kp, KcvField(algorithm_, tek_));
  const auto& opt = h.optional_blocks;
  if (opt.size() < 2 || opt[0].id != "KC" || opt[0].data != want_kc) return Reject("KC block");
  if (opt[1].id != "KP" || opt[1].data != want_kp) return Reject("KP block");
  if (opt.size() == 3 && opt[2].id != "PB") return Reject("third optional block is not PB");
  if (opt.size() > 3) return Reject("unexpected optional blocks");
  if (want_kc.substr(2) != kcv) return Reject("KCV sent beside the block");
  if (tdes && !crypto::HasOddParity(parsed.key)) return Reject("TDES parity");

  // The library's own profile check must agree.
  RKL_ASSIGN_OR_RETURN(keyblock::TmkDelivery delivery,
                       keyblock::ParseTmkBlock(tek_, algorithm_, block));
  if (delivery.tmk_algorithm != algorithm_ || delivery.tmk_kcv != kcv ||
      !(delivery.tmk == parsed.key)) {
    return Reject("profile parse disagrees");
  }
  tmk_ = std::move(parsed.key);
  tmk_kcv_ = kcv;
  return absl::OkStatus();
}

absl::StatusOr<Bytes> TestTerminal::InstallProof() const {
  if (tmk_.empty()) return absl::FailedPreconditionError("terminal has no TMK");
  RKL_ASSIGN_OR_RETURN(protocol::AuthKeys keys, protocol::DeriveAuthKeys(algorithm_, auk_, sn_));
  RKL_ASSIGN_OR_RETURN(Bytes kcv, FromHex(tmk_kcv_, "tmk_kcv"));
  return protocol::MakeInstallProof(keys, sn_, kcv, rnd1_, rnd2_);
}

absl::StatusOr<Bytes> TestTerminal::TmkFingerprint() const {
  if (tmk_.empty()) return absl::FailedPreconditionError("terminal has no TMK");
  CipherFamily family = crypto::FamilyOf(algorithm_);
  if (family == CipherFamily::kAes) return crypto::Cmac(family, tmk_, Bytes(16, 0));
  return crypto::Encrypt(family, crypto::BlockMode::kEcb, tmk_, {}, Bytes(8, 0));
}

std::vector<std::string> TestTerminal::SecretHexForLeakChecks() const {
  std::vector<std::string> out{ToHex(tek_.RevealSecret()), ToHex(auk_.RevealSecret())};
  if (!tmk_.empty()) out.push_back(ToHex(tmk_.RevealSecret()));
  return out;
}

}  // namespace rkl::kms::testing
