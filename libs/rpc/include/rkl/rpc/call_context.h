#pragma once
// Request ids and per-call client contexts.
//
// Every RPC carries an `x-request-id` metadata entry so one operation can be followed
// through MTMS, KMS and the HSMs in the logs. A client sets it with MakeClientContext (the
// thread's current request id, so a call made while serving one carries the served call's
// id, or a new one); the server's logging interceptor keeps a
// well-formed incoming id, or replaces a missing or malformed one with a fresh id, makes it
// visible to the handler through RequestId(), and returns it to the client in the response
// initial metadata. Ids are random, not secret; they never carry user data.
// All functions are thread-safe.

#include <grpcpp/client_context.h>
#include <grpcpp/server_context.h>

#include <memory>
#include <string>
#include <string_view>

#include "absl/time/time.h"

namespace rkl::rpc {

inline constexpr char kRequestIdMetadataKey[] = "x-request-id";
// Where rkl::rpc::Server's interceptor records the method of the call being served; whatever
// a client sends under this key is discarded first.
inline constexpr char kMethodMetadataKey[] = "x-rkl-method";

// 32 lower-case hex characters from a per-thread CSPRNG-seeded generator.
std::string NewRequestId();

// Accepts 1..128 characters of [A-Za-z0-9._:-]; anything else could smuggle text into logs.
bool IsWellFormedRequestId(std::string_view id);

// The id of the call being served (as fixed by the server's interceptor); empty only when
// the server runs without rkl::rpc::Server's interceptor.
std::string RequestId(const grpc::ServerContextBase& ctx);

// The full method path of the call being served ("/rkl.v1.Kms/GetTerminal"), as
// rkl::rpc::Server's interceptor recorded it from gRPC's own call information; empty without
// that interceptor. ServiceAdapter authorizes by it (rkl/rpc/adapter.h).
std::string RpcMethod(const grpc::ServerContextBase& ctx);

// A client context with a deadline `timeout` from now and `x-request-id` set to
// `request_id`; when that is empty, to the thread's current request id
// (rkl/common/request_id.h: the id of the call being served, or of the flow a client runs),
// and to a new id only when there is none. ClientContext cannot move, hence the unique_ptr.
std::unique_ptr<grpc::ClientContext> MakeClientContext(absl::Duration timeout,
                                                       std::string request_id = "");

// The request id a server echoed back (response initial metadata); empty if none. Only
// valid once the call has received initial metadata (after a unary call completes).
std::string ResponseRequestId(const grpc::ClientContext& ctx);

}  // namespace rkl::rpc
