#include "commands.h"

namespace rkl::rklctl {

void RegisterHsmCommands(CLI::App& app) {
  // Filled in by the HSM work.
  (void)app;
}

}  // namespace rkl::rklctl
