#pragma once
// A secret key kept in a file of its own (the HSM's LMK, a service's audit MAC key).
//
// Guarantees of LoadKeyFile: it accepts only a regular file, not a symbolic link, that grants
// no permission to group or others (mode 0400/0600), holding exactly `size` raw bytes or
// 2*size hex digits (a trailing newline is allowed); anything else is FAILED_PRECONDITION
// naming the configuration key, the file and the rule, never its contents. Every
// intermediate buffer is wiped (SecretBytes).

#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "rkl/crypto/secret_bytes.h"

namespace rkl::crypto {

// `config_key` names the setting in messages ("lmk.file"), `what` the file ("LMK file").
absl::StatusOr<SecretBytes> LoadKeyFile(const std::string& path, std::string_view config_key,
                                        std::string_view what, size_t size);

}  // namespace rkl::crypto
