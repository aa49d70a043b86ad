#include "rkl/common/parallel.h"

#include <algorithm>
#include <atomic>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "rkl/common/request_id.h"
#include "spdlog/spdlog.h"

namespace rkl {

void ParallelFor(size_t n, int threads, const std::function<void(size_t)>& fn) {
  if (n == 0) return;
  std::atomic<size_t> next{0};
  // The helpers work for the caller's request: their log lines carry its id.
  const std::string request_id(CurrentRequestId());
  auto work = [&] {
    const ScopedRequestId scope(request_id);
    for (size_t i = next++; i < n; i = next++) fn(i);
  };
  const size_t helpers = std::min(static_cast<size_t>(std::max(threads, 1)), n) - 1;
  std::vector<std::thread> pool;
  pool.reserve(helpers);
  for (size_t t = 0; t < helpers; ++t) {
    try {
      pool.emplace_back(work);
    } catch (const std::system_error& e) {
      // Fewer threads only means less parallelism: the ones we have take every index.
      spdlog::warn("could not start a worker thread ({}); continuing with {}", e.what(),
                   pool.size() + 1);
      break;
    }
  }
  work();
  for (std::thread& thread : pool) thread.join();
}

}  // namespace rkl
