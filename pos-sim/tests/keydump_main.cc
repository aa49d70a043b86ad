// rkl-pos-keydump — TEST ONLY. Prints the clear TEK, AUK and TMK of simulated terminals (and
// of a TR-34 terminal its TMK and its KRD private key, as PKCS#1 RSAPrivateKey DER) so
// the end-to-end leakage sweep (tests/e2e) can search databases, logs and outputs for them.
//
// It reads each secure module through SecureModuleTestPeer, the same test-only hook
// pos_test's LeakageTest uses (tests/fakes.cc); the production binary rkl-pos has no way to
// reveal a key. Built only with RKL_BUILD_TESTS, never installed. Its output is key
// material: the sweep keeps it in memory/scratch files it deletes, never in a log.
//
// Usage: rkl-pos-keydump --state-dir DIR [SN ...]   (no SN: every terminal in DIR)
// Output: one line per key, "<SN> <TEK|AUK|TMK|KRDKEY> <upper-case hex>" (absent keys
// skipped; a TR-34 terminal has no TEK or AUK).
// Exit status: 0 success, 1 a terminal could not be opened, 2 usage error.
#include <dirent.h>

#include <algorithm>
#include <cstdio>
#include <iostream>
#include <string>
#include <vector>

#include "fakes.h"
#include "rkl/common/hex.h"
#include "rkl/protocol/sn.h"
#include "secure_module.h"

namespace {

int Usage() {
  std::cerr << "usage: rkl-pos-keydump --state-dir DIR [SN ...]  (TEST ONLY: prints clear keys)\n";
  return 2;
}

std::vector<std::string> AllTerminals(const std::string& state_dir) {
  std::vector<std::string> sns;
  if (DIR* dir = ::opendir(state_dir.c_str()); dir != nullptr) {
    while (dirent* e = ::readdir(dir)) {
      std::string name = e->d_name;
      if (name != "." && name != ".." && rkl::protocol::ValidateSn(name).ok()) {
        sns.push_back(name);
      }
    }
    ::closedir(dir);
  }
  std::sort(sns.begin(), sns.end());
  return sns;
}

}  // namespace

int main(int argc, char** argv) {
  std::string state_dir;
  std::vector<std::string> sns;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--state-dir" && i + 1 < argc) {
      state_dir = argv[++i];
    } else if (arg == "--help" || arg == "-h") {
      Usage();
      return 0;
    } else if (!arg.empty() && arg[0] == '-') {
      return Usage();
    } else {
      sns.push_back(arg);
    }
  }
  if (state_dir.empty()) return Usage();
  if (sns.empty()) sns = AllTerminals(state_dir);

  int failures = 0;
  for (const std::string& sn : sns) {
    absl::StatusOr<rkl::pos::SecureModule> module = rkl::pos::SecureModule::Open(state_dir, sn);
    if (!module.ok()) {
      std::cerr << "rkl-pos-keydump: " << sn << ": " << module.status().ToString() << "\n";
      ++failures;
      continue;
    }
    const rkl::pos::testing::RevealedKeys keys =
        rkl::pos::SecureModuleTestPeer::RevealKeysForTest(*module);
    const std::pair<const char*, const rkl::Bytes*> named[] = {{"TEK", &keys.tek},
                                                               {"AUK", &keys.auk},
                                                               {"TMK", &keys.tmk},
                                                               {"KRDKEY", &keys.krd_private_key}};
    for (const auto& [name, bytes] : named) {
      if (!bytes->empty()) std::cout << sn << " " << name << " " << rkl::ToHex(*bytes) << "\n";
    }
  }
  return failures == 0 ? 0 : 1;
}
