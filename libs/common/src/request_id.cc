#include "rkl/common/request_id.h"

#include <utility>

namespace rkl {
namespace {

std::string& Current() {
  thread_local std::string id;
  return id;
}

}  // namespace

std::string_view CurrentRequestId() { return Current(); }

ScopedRequestId::ScopedRequestId(std::string id)
    : previous_(std::exchange(Current(), std::move(id))) {}

ScopedRequestId::~ScopedRequestId() { Current() = std::move(previous_); }

}  // namespace rkl
