#include "rkl/db/listener.h"

#include <fcntl.h>
#include <poll.h>
#include <unistd.h>

#include <memory>
#include <pqxx/connection>
#include <pqxx/notification>
#include <stdexcept>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "rkl/db/dsn.h"
#include "spdlog/spdlog.h"

namespace rkl::db {
namespace {

std::string FirstLine(absl::string_view text) {
  text = absl::StripAsciiWhitespace(text);
  return std::string(absl::StripAsciiWhitespace(text.substr(0, text.find('\n'))));
}

class Receiver final : public pqxx::notification_receiver {
 public:
  Receiver(pqxx::connection_base& conn, const std::string& channel,
           std::function<void(const std::string&)> deliver)
      : pqxx::notification_receiver(conn, channel), deliver_(std::move(deliver)) {}
  void operator()(const std::string& payload, int /*backend_pid*/) override { deliver_(payload); }

 private:
  std::function<void(const std::string&)> deliver_;
};

}  // namespace

Listener::Subscription::Subscription(Subscription&& other) noexcept
    : listener_(std::exchange(other.listener_, nullptr)), id_(other.id_) {}

Listener::Subscription& Listener::Subscription::operator=(Subscription&& other) noexcept {
  if (this != &other) {
    Release();
    listener_ = std::exchange(other.listener_, nullptr);
    id_ = other.id_;
  }
  return *this;
}

Listener::Subscription::~Subscription() { Release(); }

void Listener::Subscription::Release() noexcept {
  if (listener_ != nullptr) listener_->Unsubscribe(id_);
  listener_ = nullptr;
}

Listener::Listener(ListenerOptions options) : options_(std::move(options)) {
  if (::pipe2(wake_, O_CLOEXEC | O_NONBLOCK) != 0) {
    throw std::runtime_error("db listener: cannot create its wake-up pipe");
  }
}

Listener::~Listener() {
  Stop();
  ::close(wake_[0]);
  ::close(wake_[1]);
}

void Listener::Start() {
  if (started_.exchange(true)) return;
  thread_ = std::thread([this] { Run(); });
}

void Listener::Stop() {
  if (stopping_.exchange(true)) return;
  const char byte = 1;
  // The pipe holds at most this one byte's worth of news; a full pipe wakes as well.
  [[maybe_unused]] ssize_t n = ::write(wake_[1], &byte, 1);
  if (thread_.joinable()) thread_.join();
}

Listener::Subscription Listener::Subscribe(Callbacks callbacks) {
  absl::MutexLock lock(&mu_);
  const uint64_t id = next_id_++;
  subscribers_.emplace(id, std::move(callbacks));
  return Subscription(this, id);
}

void Listener::Unsubscribe(uint64_t id) {
  absl::MutexLock lock(&mu_);
  subscribers_.erase(id);
}

void Listener::Dispatch(const std::string& payload) {
  absl::MutexLock lock(&mu_);
  for (auto& [id, callbacks] : subscribers_) {
    if (callbacks.notified) callbacks.notified(payload);
  }
}

void Listener::DispatchReset() {
  absl::MutexLock lock(&mu_);
  for (auto& [id, callbacks] : subscribers_) {
    if (callbacks.reset) callbacks.reset();
  }
}

bool Listener::WaitReadable(int fd, absl::Duration timeout) {
  std::vector<pollfd> fds = {{.fd = wake_[0], .events = POLLIN, .revents = 0}};
  if (fd >= 0) fds.push_back({.fd = fd, .events = POLLIN, .revents = 0});
  const int ms = timeout == absl::InfiniteDuration()
                     ? -1
                     : static_cast<int>(absl::ToInt64Milliseconds(timeout));
  if (::poll(fds.data(), fds.size(), ms) <= 0 || stopping_.load()) return false;
  // A hang-up or error is "readable" too: libpq then reports the broken connection.
  return fds.size() > 1 && fds[1].revents != 0;
}

std::string Listener::ListenOnce() {
  std::unique_ptr<pqxx::connection> conn;
  std::unique_ptr<Receiver> receiver;
  std::string error;
  try {
    conn = std::make_unique<pqxx::connection>(options_.dsn);
    // A silent reconnection would drop the LISTEN; the loop in Run reconnects instead and
    // tells the subscribers.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
    conn->inhibit_reactivation(true);
#pragma GCC diagnostic pop
    // Issues LISTEN (quoting the channel) before it returns.
    receiver = std::make_unique<Receiver>(*conn, options_.channel,
                                          [this](const std::string& p) { Dispatch(p); });
    listening_ = true;
    ++listens_;
    DispatchReset();
    while (!stopping_.load()) {
      const int fd = conn->sock();
      if (fd < 0) throw pqxx::broken_connection("connection closed");
      if (!WaitReadable(fd, absl::InfiniteDuration())) continue;
      conn->get_notifs();  // throws when the server has gone
      // A connection libpq has given up on reports no error above: never poll it again.
      if (!conn->is_open()) throw pqxx::broken_connection("connection closed");
    }
  } catch (const std::exception& e) {
    error = ScrubPassword(FirstLine(e.what()), options_.dsn);
    if (error.empty()) error = "connection lost";
  }
  listening_ = false;
  // Closed first, so the receiver's removal does not try to UNLISTEN on a dead connection.
  if (conn != nullptr) conn->disconnect();
  receiver.reset();
  return error;
}

void Listener::Run() {
  absl::Duration backoff = options_.initial_backoff;
  while (!stopping_.load()) {
    const uint64_t before = listens_.load();
    std::string error = ListenOnce();
    if (stopping_.load()) break;
    // A connection that listened starts the back-off afresh.
    if (listens_.load() != before) backoff = options_.initial_backoff;
    spdlog::warn("db listener on {} ({}): {}; reconnecting in {}", options_.channel,
                 DescribeDsnTarget(options_.dsn), error, absl::FormatDuration(backoff));
    WaitReadable(-1, backoff);
    backoff = std::min(backoff * 2, options_.max_backoff);
  }
}

}  // namespace rkl::db
