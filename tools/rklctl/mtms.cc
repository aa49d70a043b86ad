#include "commands.h"

namespace rkl::rklctl {

void RegisterMtmsCommands(CLI::App& app) {
  // Filled in by the MTMS work.
  (void)app;
}

}  // namespace rkl::rklctl
