#include "rkl/metrics/metrics.h"

#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "prometheus/counter.h"
#include "prometheus/exposer.h"
#include "prometheus/family.h"
#include "prometheus/text_serializer.h"
#include "spdlog/spdlog.h"

namespace rkl::metrics {
namespace {

// This abseil's string_view is its own type, not std::string_view.
absl::string_view Absl(std::string_view s) { return absl::string_view(s.data(), s.size()); }

prometheus::MetricFamily OneValue(std::string name, std::string help, prometheus::MetricType type,
                                  double value) {
  prometheus::MetricFamily family{std::move(name), std::move(help), type, {}};
  prometheus::ClientMetric metric;
  if (type == prometheus::MetricType::Counter) {
    metric.counter.value = value;
  } else {
    metric.gauge.value = value;
  }
  family.metric.push_back(std::move(metric));
  return family;
}

// The standard process metrics (the names every Prometheus client library uses), from /proc.
// A field that cannot be read is left out of this scrape.
std::vector<prometheus::MetricFamily> ProcessFamilies() {
  using prometheus::MetricType;
  std::vector<prometheus::MetricFamily> out;
  const double ticks = static_cast<double>(sysconf(_SC_CLK_TCK));
  const double page = static_cast<double>(sysconf(_SC_PAGESIZE));

  std::ifstream stat_file("/proc/self/stat");
  std::string stat((std::istreambuf_iterator<char>(stat_file)), std::istreambuf_iterator<char>());
  // Fields after "(comm)": the comm may hold spaces, so split after the last ')'.
  if (size_t close = stat.rfind(')'); close != std::string::npos && ticks > 0) {
    std::vector<absl::string_view> f =
        absl::StrSplit(absl::string_view(stat).substr(close + 2), ' ', absl::SkipEmpty());
    // f[0] is field 3 (state): field n is f[n - 3].
    auto field = [&](size_t n) -> std::optional<double> {
      double v = 0;
      if (n < 3 || n - 3 >= f.size() || !absl::SimpleAtod(f[n - 3], &v)) return std::nullopt;
      return v;
    };
    if (auto utime = field(14), stime = field(15); utime && stime) {
      out.push_back(OneValue("process_cpu_seconds_total",
                             "Total user and system CPU time spent in seconds.",
                             MetricType::Counter, (*utime + *stime) / ticks));
    }
    if (auto threads = field(20)) {
      out.push_back(
          OneValue("process_threads", "Number of OS threads.", MetricType::Gauge, *threads));
    }
    if (auto vsize = field(23)) {
      out.push_back(OneValue("process_virtual_memory_bytes", "Virtual memory size in bytes.",
                             MetricType::Gauge, *vsize));
    }
    if (auto rss = field(24)) {
      out.push_back(OneValue("process_resident_memory_bytes", "Resident memory size in bytes.",
                             MetricType::Gauge, *rss * page));
    }
    std::ifstream proc_stat("/proc/stat");
    std::string line;
    while (std::getline(proc_stat, line)) {
      double btime = 0;
      if (line.starts_with("btime ") && absl::SimpleAtod(line.substr(6), &btime)) {
        if (auto start = field(22)) {
          out.push_back(OneValue("process_start_time_seconds",
                                 "Start time of the process since unix epoch in seconds.",
                                 MetricType::Gauge, btime + *start / ticks));
        }
        break;
      }
    }
  }
  std::error_code ec;
  double fds = 0;
  for (auto it = std::filesystem::directory_iterator("/proc/self/fd", ec);
       !ec && it != std::filesystem::directory_iterator(); it.increment(ec)) {
    ++fds;
  }
  if (!ec) {
    out.push_back(
        OneValue("process_open_fds", "Number of open file descriptors.", MetricType::Gauge, fds));
  }
  if (rlimit limit{}; getrlimit(RLIMIT_NOFILE, &limit) == 0) {
    out.push_back(OneValue("process_max_fds", "Maximum number of open file descriptors.",
                           MetricType::Gauge, static_cast<double>(limit.rlim_cur)));
  }
  return out;
}

}  // namespace

class Metrics::Impl final : public prometheus::Collectable {
 public:
  Impl()
      : registry_(std::make_shared<prometheus::Registry>()),
        refresh_errors_(prometheus::BuildCounter()
                            .Name("rkl_metrics_refresh_errors_total")
                            .Help("Scrapes at which reading a source of metric values failed "
                                  "(its previous values were served)")
                            .Register(*registry_)) {}

  prometheus::Registry& registry() { return *registry_; }

  void OnCollect(std::string source, std::function<absl::Status()> refresh) {
    absl::MutexLock lock(&mu_);
    refreshers_.emplace_back(std::move(source), std::move(refresh));
  }

  std::vector<prometheus::MetricFamily> Collect() const override {
    {
      absl::MutexLock lock(&mu_);
      for (const auto& [source, refresh] : refreshers_) {
        absl::Status s;
        try {
          s = refresh();
        } catch (const std::exception& e) {
          s = absl::InternalError(e.what());
        }
        if (!s.ok()) {
          refresh_errors_.Add({{"source", source}}).Increment();
          spdlog::warn("metrics: {} not refreshed (previous values served): {}", source,
                       s.ToString());
        }
      }
    }
    std::vector<prometheus::MetricFamily> families = registry_->Collect();
    std::vector<prometheus::MetricFamily> process = ProcessFamilies();
    families.insert(families.end(), std::make_move_iterator(process.begin()),
                    std::make_move_iterator(process.end()));
    return families;
  }

 private:
  const std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Family<prometheus::Counter>& refresh_errors_;
  mutable absl::Mutex mu_;
  std::vector<std::pair<std::string, std::function<absl::Status()>>> refreshers_
      ABSL_GUARDED_BY(mu_);
};

Metrics::Metrics() : impl_(std::make_shared<Impl>()) {}
Metrics::~Metrics() = default;

prometheus::Registry& Metrics::registry() { return impl_->registry(); }

void Metrics::OnCollect(std::string source, std::function<absl::Status()> refresh) {
  impl_->OnCollect(std::move(source), std::move(refresh));
}

std::vector<prometheus::MetricFamily> Metrics::Collect() const { return impl_->Collect(); }

std::string Metrics::Render() const { return prometheus::TextSerializer().Serialize(Collect()); }

std::shared_ptr<prometheus::Collectable> Metrics::collectable() const { return impl_; }

std::optional<double> SampleValue(const std::vector<prometheus::MetricFamily>& families,
                                  std::string_view name,
                                  const std::map<std::string, std::string>& labels) {
  for (const prometheus::MetricFamily& family : families) {
    if (family.name != name) continue;
    for (const prometheus::ClientMetric& metric : family.metric) {
      std::map<std::string, std::string> have;
      for (const auto& label : metric.label) have[label.name] = label.value;
      if (have != labels) continue;
      switch (family.type) {
        case prometheus::MetricType::Counter:
          return metric.counter.value;
        case prometheus::MetricType::Gauge:
          return metric.gauge.value;
        case prometheus::MetricType::Histogram:
          return static_cast<double>(metric.histogram.sample_count);
        case prometheus::MetricType::Summary:
          return static_cast<double>(metric.summary.sample_count);
        case prometheus::MetricType::Untyped:
          return metric.untyped.value;
      }
    }
  }
  return std::nullopt;
}

std::string SeriesKey(std::string_view name, const std::map<std::string, std::string>& labels) {
  std::string key(name);
  if (labels.empty()) return key;
  key += '{';
  bool first = true;
  for (const auto& [label, value] : labels) {
    absl::StrAppend(&key, first ? "" : ",", label, "=\"", value, "\"");
    first = false;
  }
  key += '}';
  return key;
}

std::map<std::string, double> ParseExposition(std::string_view text) {
  std::map<std::string, double> out;
  for (absl::string_view absl_line : absl::StrSplit(Absl(text), '\n', absl::SkipEmpty())) {
    std::string_view line(absl_line.data(), absl_line.size());
    if (line.starts_with('#')) continue;
    // name{labels} value [timestamp]; label values here never hold '}' or '"' escapes
    // (rkl's values are methods, codes and enum names).
    size_t brace = line.find('{');
    size_t space = line.find(' ');
    std::string_view name;
    std::map<std::string, std::string> labels;
    std::string_view rest;
    if (brace != std::string_view::npos && brace < space) {
      size_t close = line.find('}', brace);
      if (close == std::string_view::npos) continue;
      name = line.substr(0, brace);
      for (absl::string_view pair : absl::StrSplit(Absl(line.substr(brace + 1, close - brace - 1)),
                                                   ',', absl::SkipEmpty())) {
        size_t eq = pair.find('=');
        if (eq == absl::string_view::npos || pair.size() < eq + 3) continue;
        labels[std::string(pair.substr(0, eq))] =
            std::string(pair.substr(eq + 2, pair.size() - eq - 3));
      }
      rest = line.substr(close + 1);
    } else {
      if (space == std::string_view::npos) continue;
      name = line.substr(0, space);
      rest = line.substr(space);
    }
    std::vector<absl::string_view> fields = absl::StrSplit(Absl(rest), ' ', absl::SkipEmpty());
    double value = 0;
    if (fields.empty()) continue;
    if (fields[0] == "+Inf") {
      value = std::numeric_limits<double>::infinity();
    } else if (!absl::SimpleAtod(fields[0], &value)) {
      continue;
    }
    out[SeriesKey(name, labels)] = value;
  }
  return out;
}

void DeclareMetricsConfig(ConfigSchema& schema) {
  schema
      .String("metrics.listen",
              "host:port of the Prometheus /metrics endpoint (plain HTTP, its own port; no key "
              "material or SN in any metric); empty: no endpoint")
      .Default("");
}

class Endpoint::Server {
 public:
  explicit Server(std::unique_ptr<prometheus::Exposer> exposer) : exposer(std::move(exposer)) {}
  std::unique_ptr<prometheus::Exposer> exposer;
};

Endpoint::Endpoint(std::unique_ptr<Server> server, int port)
    : server_(std::move(server)), port_(port) {}
Endpoint::~Endpoint() = default;

absl::StatusOr<std::unique_ptr<Endpoint>> Endpoint::Start(const std::string& listen,
                                                          Metrics& metrics) {
  std::unique_ptr<prometheus::Exposer> exposer;
  try {
    // Two threads: Prometheus scrapes one at a time; the second serves a curl meanwhile.
    exposer = std::make_unique<prometheus::Exposer>(listen, 2);
  } catch (const std::exception& e) {
    return absl::UnavailableError(
        absl::StrCat("metrics.listen: cannot serve /metrics on ", listen,
                     " (address in use, or not a valid host:port?): ", e.what()));
  }
  std::vector<int> ports = exposer->GetListeningPorts();
  if (ports.empty() || ports[0] <= 0) {
    return absl::UnavailableError(
        absl::StrCat("metrics.listen: cannot serve /metrics on ", listen));
  }
  exposer->RegisterCollectable(metrics.collectable());
  int port = ports[0];
  return std::unique_ptr<Endpoint>(
      new Endpoint(std::make_unique<Server>(std::move(exposer)), port));
}

absl::StatusOr<std::unique_ptr<Endpoint>> StartEndpoint(const Config& config, Metrics& metrics) {
  const std::string& listen = config.GetString("metrics.listen");
  if (listen.empty()) {
    spdlog::info("metrics: no /metrics endpoint (metrics.listen is empty)");
    return std::unique_ptr<Endpoint>();
  }
  absl::StatusOr<std::unique_ptr<Endpoint>> endpoint = Endpoint::Start(listen, metrics);
  if (endpoint.ok()) {
    spdlog::info("metrics: serving /metrics on {} (port {})", listen, (*endpoint)->port());
  }
  return endpoint;
}

}  // namespace rkl::metrics
