#include <netdb.h>
#include <sys/socket.h>
#include <unistd.h>

#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "rkl/metrics/metrics.h"

namespace rkl::metrics {

absl::StatusOr<std::string> ScrapeOnce(const std::string& address) {
  size_t colon = address.rfind(':');
  if (colon == std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat("address: not host:port: ", address));
  }
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  if (getaddrinfo(address.substr(0, colon).c_str(), address.substr(colon + 1).c_str(), &hints,
                  &found) != 0) {
    return absl::UnavailableError(absl::StrCat("cannot resolve ", address));
  }
  int fd = socket(found->ai_family, found->ai_socktype, found->ai_protocol);
  bool connected = fd >= 0 && connect(fd, found->ai_addr, found->ai_addrlen) == 0;
  freeaddrinfo(found);
  if (!connected) {
    if (fd >= 0) close(fd);
    return absl::UnavailableError(absl::StrCat("nothing answers on ", address));
  }
  const std::string request = "GET /metrics HTTP/1.0\r\nHost: " + address + "\r\n\r\n";
  bool sent = write(fd, request.data(), request.size()) == static_cast<ssize_t>(request.size());
  std::string response;
  char buf[8192];
  for (ssize_t n; sent && (n = read(fd, buf, sizeof buf)) > 0;) response.append(buf, n);
  close(fd);
  size_t body = response.find("\r\n\r\n");
  if (!absl::StartsWith(response, "HTTP/1.1 200") && !absl::StartsWith(response, "HTTP/1.0 200")) {
    return absl::InternalError(
        absl::StrCat(address, " answered '", response.substr(0, response.find('\r')), "'"));
  }
  return body == std::string::npos ? std::string() : response.substr(body + 4);
}

}  // namespace rkl::metrics
