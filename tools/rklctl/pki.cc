#include "commands.h"

namespace rkl::rklctl {

void RegisterPkiCommands(CLI::App& app) {
  // Filled in by the CA work.
  (void)app;
}

}  // namespace rkl::rklctl
