// rkl-pos: the POS terminal and operator terminal simulator. See `rkl-pos --help` and
// docs/pos-sim.md.

#include "cli.h"

int main(int argc, char** argv) {
  return rkl::pos::RunPosCli(argc, argv, rkl::pos::ProcessCliIo());
}
