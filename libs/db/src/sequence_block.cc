#include "rkl/db/sequence_block.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "rkl/db/prepared.h"

namespace rkl::db {

SequenceBlock::SequenceBlock(std::string sequence, int block)
    : sql_(absl::StrCat("SELECT nextval('", sequence, "') FROM generate_series(1, $1)")),
      block_(std::max(1, block)) {}

void SequenceBlock::Fetch(pqxx::transaction_base& tx, size_t at_least) {
  const int64_t n = std::max<int64_t>(block_, static_cast<int64_t>(at_least));
  ++fetches_;
  std::vector<uint64_t> fetched;
  fetched.reserve(static_cast<size_t>(n));
  for (const auto& row : Exec(tx, sql_, n)) fetched.push_back(row[0].as<uint64_t>());
  // nextval() in one statement yields increasing values (unless the sequence cycles, which
  // ours do not); sorted anyway, so the order handed out never depends on it.
  std::sort(fetched.begin(), fetched.end());
  free_.insert(free_.end(), fetched.begin(), fetched.end());
}

uint64_t SequenceBlock::Next(pqxx::transaction_base& tx) {
  absl::MutexLock lock(&mu_);
  if (free_.empty()) Fetch(tx, 1);
  const uint64_t v = free_.front();
  free_.pop_front();
  return v;
}

std::vector<uint64_t> SequenceBlock::Take(pqxx::transaction_base& tx, size_t n) {
  absl::MutexLock lock(&mu_);
  if (free_.size() < n) Fetch(tx, n - free_.size());
  std::vector<uint64_t> out(free_.begin(), free_.begin() + static_cast<std::ptrdiff_t>(n));
  free_.erase(free_.begin(), free_.begin() + static_cast<std::ptrdiff_t>(n));
  return out;
}

uint64_t SequenceBlock::fetches() const {
  absl::MutexLock lock(&mu_);
  return fetches_;
}

}  // namespace rkl::db
