#pragma once
// Early-return helpers for absl::Status / absl::StatusOr, as Tink and Abseil-based code use.

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define RKL_STATUS_CONCAT_INNER_(a, b) a##b
#define RKL_STATUS_CONCAT_(a, b) RKL_STATUS_CONCAT_INNER_(a, b)

#define RKL_RETURN_IF_ERROR(expr)                                                   \
  do {                                                                              \
    if (::absl::Status rkl_status_ = (expr); !rkl_status_.ok()) return rkl_status_; \
  } while (0)

#define RKL_ASSIGN_OR_RETURN(lhs, expr) \
  RKL_ASSIGN_OR_RETURN_IMPL_(RKL_STATUS_CONCAT_(rkl_statusor_, __LINE__), lhs, expr)

#define RKL_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                               \
  if (!tmp.ok()) return std::move(tmp).status();   \
  lhs = std::move(tmp).value()
