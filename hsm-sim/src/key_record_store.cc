#include "key_record_store.h"

namespace rkl::hsm {

std::string KeyTypeName(KeyType type) {
  switch (type) {
    case KeyType::kRsaPrivate:
      return "RSA_PRIVATE";
    case KeyType::kPk:
      return "PK";
    case KeyType::kMak:
      return "MAK";
    case KeyType::kTek:
      return "TEK";
    case KeyType::kAuk:
      return "AUK";
    case KeyType::kTmk:
      return "TMK";
  }
  return "UNKNOWN";
}

std::string KeyUsageName(KeyUsage usage) {
  switch (usage) {
    case KeyUsage::kTransportDecrypt:
      return "TRANSPORT_DECRYPT";
    case KeyUsage::kTkWrap:
      return "TK_WRAP";
    case KeyUsage::kTkMac:
      return "TK_MAC";
    case KeyUsage::kExportKek:
      return "EXPORT_KEK";
    case KeyUsage::kTerminalAuth:
      return "TERMINAL_AUTH";
    case KeyUsage::kTerminalMaster:
      return "TERMINAL_MASTER";
    case KeyUsage::kCeremonyDecrypt:
      return "CEREMONY_DECRYPT";
    case KeyUsage::kKdhSign:
      return "KDH_SIGN";
  }
  return "UNKNOWN";
}

std::string KeyStateName(KeyState state) {
  switch (state) {
    case KeyState::kActive:
      return "ACTIVE";
    case KeyState::kSuperseded:
      return "SUPERSEDED";
    case KeyState::kDeleted:
      return "DELETED";
  }
  return "UNKNOWN";
}

}  // namespace rkl::hsm
