#pragma once
// A file descriptor closed when it goes out of scope, so that every early return of a
// function that opened it closes it.

#include <unistd.h>

namespace rkl {

class UniqueFd {
 public:
  // Takes `fd` as returned by ::open (negative on failure, which get() then reports).
  explicit UniqueFd(int fd) : fd_(fd) {}
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  ~UniqueFd() {
    if (fd_ >= 0) ::close(fd_);
  }
  int get() const { return fd_; }

 private:
  int fd_;
};

}  // namespace rkl
