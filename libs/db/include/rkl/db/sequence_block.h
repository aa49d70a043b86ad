#pragma once
// SequenceBlock: values of a PostgreSQL sequence, fetched `block` at a time and handed out
// from memory, so a row whose key must be known before it is written (because it is bound
// into a MAC or an AEAD's associated data) costs no round trip of its own for the key.
//
// Guarantees:
//  - every value handed out came from nextval() of the sequence, and no value is handed out
//    twice — by this object, by another SequenceBlock on the same sequence (another thread
//    or replica), or by nextval() itself;
//  - one process hands its values out in increasing order; across replicas the values
//    interleave by block, and a process that ends leaves its unused values as gaps — as a
//    rolled-back nextval() would;
//  - a block is fetched on the caller's connection (the transaction it is in, or
//    autocommit): nextval() is not transactional, so a rollback does not give values back
//    and they stay usable. Thread-safe; a fetch holds the lock for its one round trip.
// The sequence name is an identifier we control, spliced into the statement text.

#include <cstdint>
#include <deque>
#include <pqxx/transaction_base>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace rkl::db {

class SequenceBlock {
 public:
  SequenceBlock(std::string sequence, int block);
  SequenceBlock(const SequenceBlock&) = delete;
  SequenceBlock& operator=(const SequenceBlock&) = delete;

  // One value; fetches a block when none is left. Throws as libpqxx does (a caller inside
  // RunInTransaction gets its usual error handling).
  uint64_t Next(pqxx::transaction_base& tx);
  // n values in increasing order, fetching at least n when fewer are left.
  std::vector<uint64_t> Take(pqxx::transaction_base& tx, size_t n);

  // Statements sent to PostgreSQL so far, for tests and metrics.
  uint64_t fetches() const;

 private:
  void Fetch(pqxx::transaction_base& tx, size_t at_least) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const std::string sql_;
  const int block_;
  mutable absl::Mutex mu_;
  std::deque<uint64_t> free_ ABSL_GUARDED_BY(mu_);
  uint64_t fetches_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace rkl::db
