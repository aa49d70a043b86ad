#pragma once
// ParallelFor: run fn(0) … fn(n-1) on up to `threads` threads, the calling thread being one
// of them; the others live for this call only. Each thread takes the next index until none
// is left, so every index runs exactly once, in no particular order. If a thread cannot be
// started, fewer threads do all the work (logged). Returns when every fn has returned.
// fn must be safe to call from several threads at once. Every thread runs fn under the
// caller's current request id (rkl/common/request_id.h).

#include <cstddef>
#include <functional>

namespace rkl {

void ParallelFor(size_t n, int threads, const std::function<void(size_t)>& fn);

}  // namespace rkl
