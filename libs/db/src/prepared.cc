#include "rkl/db/prepared.h"

#include <cstdint>
#include <cstdio>

namespace rkl::db {

std::string PreparedName(std::string_view sql) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (unsigned char c : sql) {
    h ^= c;
    h *= 0x100000001b3ULL;
  }
  char out[4 + 16 + 1];
  std::snprintf(out, sizeof(out), "rkl_%016llx", static_cast<unsigned long long>(h));
  return out;
}

}  // namespace rkl::db
