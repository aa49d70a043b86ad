#pragma once
// The one mapping of rkl's enums to the protos' (proto/rkl/v1): the protos reuse the wire
// codes (KEY_ALGORITHM_AES128 = 0x11 is the Ctk_pk / TR-31 algorithm byte), and the
// static_asserts below fail the build if either side changes alone.

#include "rkl/crypto/key_algorithm.h"
#include "rkl/v1/common.pb.h"

namespace rkl::protocol {

static_assert(v1::KEY_ALGORITHM_TDES2 == static_cast<int>(crypto::KeyAlgorithm::kTdes2));
static_assert(v1::KEY_ALGORITHM_AES128 == static_cast<int>(crypto::KeyAlgorithm::kAes128));
static_assert(v1::KEY_ALGORITHM_AES256 == static_cast<int>(crypto::KeyAlgorithm::kAes256));

constexpr v1::KeyAlgorithm ToProto(crypto::KeyAlgorithm algorithm) {
  return static_cast<v1::KeyAlgorithm>(static_cast<int>(algorithm));
}

}  // namespace rkl::protocol
