#include "rkl/rpc/call_context.h"

#include <random>

#include "absl/strings/ascii.h"
#include "rkl/common/request_id.h"

namespace rkl::rpc {

std::string NewRequestId() {
  // Uniqueness, not secrecy, is what matters: a per-thread Mersenne Twister seeded from the
  // OS avoids a lock and a syscall per RPC.
  thread_local std::mt19937_64 gen{[] {
    std::random_device rd;
    std::seed_seq seq{rd(), rd(), rd(), rd(), rd(), rd(), rd(), rd()};
    return std::mt19937_64(seq);
  }()};
  static constexpr char kHex[] = "0123456789abcdef";
  std::string id(32, '0');
  for (int half = 0; half < 2; ++half) {
    uint64_t r = gen();
    for (int i = 0; i < 16; ++i) id[half * 16 + i] = kHex[(r >> (4 * i)) & 0xF];
  }
  return id;
}

bool IsWellFormedRequestId(std::string_view id) {
  if (id.empty() || id.size() > 128) return false;
  for (char c : id) {
    if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '_' && c != ':' &&
        c != '-') {
      return false;
    }
  }
  return true;
}

namespace {

// client_metadata() is on the concrete context types; both share the lookup below.
std::string ClientMetadata(const grpc::ServerContextBase& ctx, const char* key) {
  const std::multimap<grpc::string_ref, grpc::string_ref>* md = nullptr;
  if (auto* sync = dynamic_cast<const grpc::ServerContext*>(&ctx)) {
    md = &sync->client_metadata();
  } else if (auto* cb = dynamic_cast<const grpc::CallbackServerContext*>(&ctx)) {
    md = &cb->client_metadata();
  }
  if (md == nullptr) return {};
  auto it = md->find(key);
  if (it == md->end()) return {};
  return std::string(it->second.data(), it->second.size());
}

}  // namespace

std::string RequestId(const grpc::ServerContextBase& ctx) {
  return ClientMetadata(ctx, kRequestIdMetadataKey);
}

std::string RpcMethod(const grpc::ServerContextBase& ctx) {
  return ClientMetadata(ctx, kMethodMetadataKey);
}

std::unique_ptr<grpc::ClientContext> MakeClientContext(absl::Duration timeout,
                                                       std::string request_id) {
  auto ctx = std::make_unique<grpc::ClientContext>();
  ctx->set_deadline(absl::ToChronoTime(absl::Now() + timeout));  // wall time: gRPC deadline
  if (request_id.empty()) request_id = std::string(CurrentRequestId());
  ctx->AddMetadata(kRequestIdMetadataKey, request_id.empty() ? NewRequestId() : request_id);
  return ctx;
}

std::string ResponseRequestId(const grpc::ClientContext& ctx) {
  const auto& md = ctx.GetServerInitialMetadata();
  auto it = md.find(kRequestIdMetadataKey);
  if (it == md.end()) return {};
  return std::string(it->second.data(), it->second.size());
}

}  // namespace rkl::rpc
