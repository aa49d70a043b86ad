#pragma once
// Small POSIX file helpers for the simulator's state directory and its inputs.
//
// Guarantees: WriteFileAtomically never leaves a partially written file under `path`: it
// writes a uniquely named temporary file in the same directory with `mode`, fsyncs it,
// renames it over `path` and fsyncs the directory; on any error the temporary file is
// removed and `path` is untouched. ReadSecretFile reads straight into SecretBytes, so a key
// file's bytes never pass through an ordinary buffer. Errors name the path and the rule.
// Thread-safe (no shared state).

#include <sys/types.h>

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "rkl/common/hex.h"
#include "rkl/crypto/secret_bytes.h"

namespace rkl::pos {

// NOT_FOUND when missing, FAILED_PRECONDITION when unreadable.
absl::StatusOr<Bytes> ReadFileBytes(const std::string& path);
absl::StatusOr<std::string> ReadFileText(const std::string& path);
absl::StatusOr<crypto::SecretBytes> ReadSecretFile(const std::string& path);

absl::Status WriteFileAtomically(const std::string& path, const Bytes& data, mode_t mode);
// Creates `path` with O_EXCL (ALREADY_EXISTS if present), writes and fsyncs it.
absl::Status CreateSecretFile(const std::string& path, const crypto::SecretBytes& data,
                              mode_t mode);

// Creates `path` and missing parents with `mode` (existing directories are kept).
absl::Status MakeDirectories(const std::string& path, mode_t mode);
bool PathExists(const std::string& path);

}  // namespace rkl::pos
