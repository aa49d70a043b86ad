#include "rkl/rpc/unary_service.h"

#include <condition_variable>
#include <deque>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "google/protobuf/descriptor.h"

namespace rkl::rpc {

// Fixed threads taking work in arrival order; each arrival wakes one idle thread. The
// destructor lets queued work finish.
class UnaryService::Pool {
 public:
  explicit Pool(int threads) {
    for (int i = 0; i < threads; ++i) threads_.emplace_back([this] { Work(); });
  }
  ~Pool() {
    {
      std::lock_guard lock(mu_);
      stopping_ = true;
    }
    ready_.notify_all();
    for (std::thread& t : threads_) t.join();
  }
  void Run(std::function<void()> work) {
    {
      std::lock_guard lock(mu_);
      queue_.push_back(std::move(work));
    }
    ready_.notify_one();
  }

 private:
  void Work() {
    for (;;) {
      std::function<void()> work;
      {
        std::unique_lock lock(mu_);
        ready_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
        if (queue_.empty()) return;  // stopping, nothing left
        work = std::move(queue_.front());
        queue_.pop_front();
      }
      work();
    }
  }

  std::mutex mu_;
  std::condition_variable ready_;
  std::deque<std::function<void()>> queue_;  // guarded by mu_
  bool stopping_ = false;                    // guarded by mu_
  std::vector<std::thread> threads_;
};

const char* DispatchName(Dispatch dispatch) {
  switch (dispatch) {
    case Dispatch::kSync:
      return "sync";
    case Dispatch::kCallbackInline:
      return "callback-inline";
    case Dispatch::kCallbackPool:
      return "callback-pool";
  }
  return "unknown";
}

std::optional<Dispatch> DispatchFromName(std::string_view name) {
  for (Dispatch d : {Dispatch::kSync, Dispatch::kCallbackInline, Dispatch::kCallbackPool}) {
    if (name == DispatchName(d)) return d;
  }
  return std::nullopt;
}

UnaryService::UnaryService(const google::protobuf::ServiceDescriptor& service,
                           ServiceAdapter::Options options, DispatchOptions dispatch)
    : service_(service), adapter_(service, std::move(options)), dispatch_(dispatch) {
  if (dispatch_.dispatch == Dispatch::kCallbackPool) {
    if (dispatch_.pool_threads < 1) throw std::invalid_argument("pool_threads: at least 1");
    pool_ = std::make_unique<Pool>(dispatch_.pool_threads);
  }
}

UnaryService::~UnaryService() = default;

void UnaryService::RunOnPool(std::function<void()> work) { pool_->Run(std::move(work)); }

const char* UnaryService::MethodPath(std::string_view method, const std::string& request_type,
                                     const std::string& response_type) {
  const std::string name(method);
  const google::protobuf::MethodDescriptor* found = service_.FindMethodByName(name);
  if (found == nullptr) {
    throw std::logic_error(absl::StrCat(service_.full_name(), " has no method ", name));
  }
  if (found->client_streaming() || found->server_streaming()) {
    throw std::logic_error(absl::StrCat(found->full_name(), " is not unary"));
  }
  if (found->input_type()->full_name() != request_type ||
      found->output_type()->full_name() != response_type) {
    throw std::logic_error(absl::StrCat(
        found->full_name(), " takes ", found->input_type()->full_name(), " and returns ",
        found->output_type()->full_name(), ", not ", request_type, " and ", response_type));
  }
  return paths_.emplace_back(absl::StrCat("/", service_.full_name(), "/", name)).c_str();
}

}  // namespace rkl::rpc
