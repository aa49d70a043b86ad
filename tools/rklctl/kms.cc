#include "commands.h"

namespace rkl::rklctl {

void RegisterKmsCommands(CLI::App& app) {
  // Filled in by the KMS work.
  (void)app;
}

}  // namespace rkl::rklctl
