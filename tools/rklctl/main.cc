// rklctl — administration of an rkl deployment: PKI bootstrap, key ceremony, work keys,
// terminals, audit. Run `rklctl --help` or `rklctl <area> --help`.

#include <CLI/CLI.hpp>

#include "commands.h"

int main(int argc, char** argv) {
  CLI::App app{"rklctl — administer an rkl deployment (PKI, key ceremony, work keys, terminals)"};
  app.require_subcommand(1);
  rkl::rklctl::RegisterPkiCommands(app);
  rkl::rklctl::RegisterHsmCommands(app);
  rkl::rklctl::RegisterMtmsCommands(app);
  rkl::rklctl::RegisterKmsCommands(app);
  rkl::rklctl::RegisterHealthCommands(app);
  CLI11_PARSE(app, argc, argv);
  return 0;
}
