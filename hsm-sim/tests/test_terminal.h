#pragma once
// The terminal side of the protocol, for tests: a secure module that makes TK, encrypts it to
// Pu (PROTOCOL §3), answers the §7 challenge, opens the TR-31 block (§8) and makes the install
// proof — built only from rkl::protocol, rkl::keyblock and rkl::crypto, never from HSM code.
// Also the custodian side of a ceremony (component encryption).

#include <string>

#include "rkl/common/hex.h"
#include "rkl/crypto/kcv.h"
#include "rkl/crypto/keys.h"
#include "rkl/crypto/random.h"
#include "rkl/crypto/rsa.h"
#include "rkl/keyblock/tmk_block.h"
#include "rkl/protocol/auth.h"
#include "rkl/protocol/transport_key.h"

namespace rkl::hsm::testing {

struct TestTerminal {
  std::string sn;
  protocol::TransportKey tk;

  static TestTerminal Create(std::string sn,
                             crypto::KeyAlgorithm algorithm = crypto::KeyAlgorithm::kAes128) {
    return TestTerminal{
        std::move(sn), {algorithm, crypto::GenerateKey(algorithm), crypto::GenerateKey(algorithm)}};
  }

  // Ctk_Pu under the HSM work key `pu_der`, bound to `label_sn` (normally this SN).
  Bytes CtkPu(const Bytes& pu_der, const std::string& label_sn = "") const {
    auto pu = crypto::PublicKey::FromDer(pu_der).value();
    auto payload = protocol::EncodeTkPayload(tk).value();
    return crypto::RsaOaepEncrypt(pu, payload,
                                  protocol::OaepLabel(label_sn.empty() ? sn : label_sn))
        .value();
  }
  std::string TekKcv() const { return crypto::KcvHex(tk.algorithm, tk.tek).value(); }
  std::string AukKcv() const { return crypto::KcvHex(tk.algorithm, tk.auk).value(); }
  protocol::AuthKeys AuthKeys() const {
    return protocol::DeriveAuthKeys(tk.algorithm, tk.auk, sn).value();
  }
};

// What a custodian's tool sends: the component OAEP-encrypted to the ceremony key.
inline Bytes EncryptComponent(const Bytes& ceremony_key_der, const std::string& ceremony_id,
                              const crypto::SecretBytes& component) {
  auto key = crypto::PublicKey::FromDer(ceremony_key_der).value();
  std::string label = "RKL-COMPONENT:" + ceremony_id;
  return crypto::RsaOaepEncrypt(key, component, AsBytes(label)).value();
}

inline crypto::SecretBytes Xor(const crypto::SecretBytes& a, const crypto::SecretBytes& b) {
  crypto::SecretBytes out(a.size());
  for (size_t i = 0; i < a.size(); ++i) {
    out.RevealSecretMutable()[i] = a.RevealSecret()[i] ^ b.RevealSecret()[i];
  }
  return out;
}

}  // namespace rkl::hsm::testing
