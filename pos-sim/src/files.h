#pragma once
// Small POSIX file helpers for the simulator's state directory and its inputs.
//
// Guarantees: WriteFileAtomically never leaves a partially written file under `path`: it
// writes a uniquely named temporary file in the same directory with `mode`, fsyncs it,
// renames it over `path` and fsyncs the directory; on any error the temporary file is
// removed and `path` is untouched. ReadSecretFile reads straight into SecretBytes, so a key
// file's bytes never pass through an ordinary buffer. Errors name the path and the rule.
// Thread-safe; the only shared state is the process-wide durability switch below.

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

// Whether writes are forced to disk (fsync of the file and of its directory). On unless
// turned off; `rkl-pos fleet --no-fsync` turns it off for a load run: a fleet stands for
// thousands of devices, each syncing its own flash, not this machine's disk. Atomicity
// (temporary file, then rename) holds either way; only durability across a crash of this
// machine is given up.
void SetDurableWrites(bool durable);
bool DurableWrites();

absl::Status WriteFileAtomically(const std::string& path, const Bytes& data, mode_t mode);
// Creates `path` with O_EXCL (ALREADY_EXISTS if present), writes and fsyncs it.
absl::Status CreateSecretFile(const std::string& path, const crypto::SecretBytes& data,
                              mode_t mode);

// Creates `path` and missing parents with `mode` (existing directories are kept).
absl::Status MakeDirectories(const std::string& path, mode_t mode);
bool PathExists(const std::string& path);

}  // namespace rkl::pos
