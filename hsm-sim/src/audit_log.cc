#include "audit_log.h"

#include "rkl/crypto/kdf.h"

namespace rkl::hsm {

const audit::ChainSpec& HsmAuditChain() {
  static const audit::ChainSpec* const spec = new audit::ChainSpec{
      .name = "hsm",
      .chain_table = "hsm_audit",
      .pending_table = "hsm_audit_pending",
      .pending_id_sequence = "hsm_audit_pending_id_seq",
      .lock_class = 0x524B4C48,  // "RKLH"
      .pending_id_block = 256,
  };
  return *spec;
}

absl::StatusOr<crypto::SecretBytes> DeriveAuditKey(const crypto::SecretBytes& lmk,
                                                   const std::string& hsm_id) {
  return crypto::KdfCounterCmac(crypto::CipherFamily::kAes, lmk, "RKL-HSM-AUDIT", hsm_id, 256);
}

}  // namespace rkl::hsm
