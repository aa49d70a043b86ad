// Must NOT compile: formatting clear key material is a build error (see secret_bytes.h).
#include <fmt/format.h>

#include "rkl/crypto/secret_bytes.h"

int main() {
  rkl::crypto::SecretBytes key(16);
  return static_cast<int>(fmt::format("{}", key).size());
}
