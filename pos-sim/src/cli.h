#pragma once
// The rkl-pos command line: manufacture, install-cert, generate-tk, submit, download-tmk,
// provision, status and fleet (docs/pos-sim.md). main() is a one-line call to RunPosCli, so
// tests drive exactly the code users run, with their own streams.
//
// Guarantees: user output (stdout) and errors (stderr) carry SNs, states, algorithms, KCVs,
// serials, receipts and statistics only, never key material; the operator PIN is read from
// a file, RKL_POS_OPERATOR_PIN or a no-echo prompt, held as SecretBytes, never echoed.
// Exit status: 0 success, 1 a step failed (or fleet verification fell short), 2 usage.

#include <functional>
#include <iosfwd>

#include "absl/status/statusor.h"
#include "rkl/crypto/secret_bytes.h"

namespace rkl::pos {

struct CliIo {
  std::ostream* out = nullptr;
  std::ostream* err = nullptr;
  // Set up spdlog from --log-level/--log-format (main); tests keep their own sinks.
  bool init_logging = true;
  // Draw the fleet progress bar (stderr is a terminal); otherwise plain lines.
  bool err_is_tty = false;
  // Asks for the operator PIN without echo; null when there is no terminal to ask on.
  std::function<absl::StatusOr<crypto::SecretBytes>()> prompt_pin;
};

int RunPosCli(int argc, const char* const* argv, const CliIo& io);

// The production CliIo: std::cout/std::cerr, isatty checks and a /dev/tty PIN prompt.
CliIo ProcessCliIo();

}  // namespace rkl::pos
