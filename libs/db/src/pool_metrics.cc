#include "rkl/db/pool_metrics.h"

#include <memory>
#include <utility>

#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"

namespace rkl::db {
namespace {

// A prometheus counter that follows a running total kept elsewhere: at each scrape it is
// increased by what the total grew since the last one.
class FollowingCounter {
 public:
  explicit FollowingCounter(prometheus::Counter& counter) : counter_(counter) {}
  void Follow(double total) {
    if (total > last_) counter_.Increment(total - last_);
    last_ = total;
  }

 private:
  prometheus::Counter& counter_;
  double last_ = 0;
};

prometheus::Family<prometheus::Counter>& CounterFamily(metrics::Metrics& metrics,
                                                       const std::string& name,
                                                       const std::string& help) {
  return prometheus::BuildCounter().Name(name).Help(help).Register(metrics.registry());
}

}  // namespace

void RegisterPoolMetrics(metrics::Metrics& metrics, const ConnectionPool& pool,
                         std::string pool_name) {
  auto& connections = prometheus::BuildGauge()
                          .Name("rkl_db_pool_connections")
                          .Help("Open database connections of the pool, by state")
                          .Register(metrics.registry());
  auto& size = prometheus::BuildGauge()
                   .Name("rkl_db_pool_size")
                   .Help("Connections the pool opens at most")
                   .Register(metrics.registry());
  struct Series {
    prometheus::Gauge& in_use;
    prometheus::Gauge& idle;
    prometheus::Gauge& size;
    FollowingCounter acquisitions;
    FollowingCounter waits;
    FollowingCounter wait_seconds;
    FollowingCounter errors;
  };
  const prometheus::Labels pool_label{{"pool", pool_name}};
  auto series = std::make_shared<Series>(Series{
      .in_use = connections.Add({{"pool", pool_name}, {"state", "in_use"}}),
      .idle = connections.Add({{"pool", pool_name}, {"state", "idle"}}),
      .size = size.Add(pool_label),
      .acquisitions = FollowingCounter(
          CounterFamily(metrics, "rkl_db_pool_acquisitions_total", "Connections lent")
              .Add(pool_label)),
      .waits =
          FollowingCounter(CounterFamily(metrics, "rkl_db_pool_waits_total",
                                         "Borrows that found every connection leased and waited")
                               .Add(pool_label)),
      .wait_seconds = FollowingCounter(CounterFamily(metrics, "rkl_db_pool_wait_seconds_total",
                                                     "Time borrows waited for a connection")
                                           .Add(pool_label)),
      .errors =
          FollowingCounter(CounterFamily(metrics, "rkl_db_errors_total",
                                         "Database connections that could not be opened or broke")
                               .Add(pool_label)),
  });
  metrics.OnCollect("db_pool_" + pool_name, [&pool, series] {
    const PoolStats stats = pool.stats();
    series->in_use.Set(stats.in_use);
    series->idle.Set(stats.idle);
    series->size.Set(stats.max_size);
    series->acquisitions.Follow(static_cast<double>(stats.acquisitions));
    series->waits.Follow(static_cast<double>(stats.waits));
    series->wait_seconds.Follow(stats.wait_seconds);
    series->errors.Follow(static_cast<double>(stats.errors));
    return absl::OkStatus();
  });
}

}  // namespace rkl::db
