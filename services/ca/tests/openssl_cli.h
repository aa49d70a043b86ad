#pragma once
// Runs the `openssl` command-line tool (and other shell commands) from tests, so the CA's
// output is cross-checked by an implementation that is not rkl::crypto. Test-only.

#include <string>

#include "rkl/common/hex.h"

namespace rkl::ca::testing {

struct CommandResult {
  int exit_code = -1;
  std::string output;  // stdout and stderr together
};

// Runs `command` through /bin/sh (popen).
CommandResult RunCommand(const std::string& command);

// A scratch directory removed on destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }
  // Writes `content` to path()/name and returns the full path.
  std::string Write(const std::string& name, const std::string& content) const;

 private:
  std::string path_;
};

std::string ReadFileOrDie(const std::string& path);

}  // namespace rkl::ca::testing
