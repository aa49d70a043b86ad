#pragma once
// Building a command line for std::system or popen in a test.

#include <string>

namespace rkl::testing {

// `s` as one single-quoted sh word, whatever it contains (a DSN with spaces, a path).
inline std::string ShellQuote(const std::string& s) {
  std::string out = "'";
  for (char c : s) {
    if (c == '\'') {
      out += "'\\''";
    } else {
      out += c;
    }
  }
  return out + "'";
}

}  // namespace rkl::testing
