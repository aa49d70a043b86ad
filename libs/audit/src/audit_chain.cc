#include "rkl/audit/audit_chain.h"

#include <openssl/core_names.h>
#include <openssl/evp.h>

#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "rkl/common/request_id.h"
#include "rkl/crypto/openssl_ptr.h"

namespace rkl::audit {
namespace {

// The domain a chain's MACs and anchors are bound to: "RKL-HSM-AUDIT-PENDING-1",
// "RKL-HSM-AUDIT-ANCHOR-1" and "rkl-hsm-audit-anchor v1" for the HSM's.
std::string PendingTag(const ChainSpec& spec) {
  return absl::StrCat("RKL-", absl::AsciiStrToUpper(spec.name), "-AUDIT-PENDING-1");
}
std::string AnchorTag(const ChainSpec& spec) {
  return absl::StrCat("RKL-", absl::AsciiStrToUpper(spec.name), "-AUDIT-ANCHOR-1");
}
std::string AnchorFormat(const ChainSpec& spec) {
  return absl::StrCat("rkl-", spec.name, "-audit-anchor v1");
}

void PutBigEndian(Bytes& out, uint64_t v, int bytes) {
  for (int i = bytes - 1; i >= 0; --i) out.push_back(static_cast<uint8_t>(v >> (8 * i)));
}

void PutText(Bytes& out, const std::string& s) {
  PutBigEndian(out, s.size(), 4);
  out.insert(out.end(), s.begin(), s.end());
}

bool IsAnchorInstanceId(std::string_view id) {
  if (id.empty() || id.size() > 64) return false;
  for (char c : id) {
    if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '_' && c != '.' &&
        c != '@' && c != ':') {
      return false;
    }
  }
  return true;
}

}  // namespace

std::string FormatAuditAnchor(const ChainSpec& spec, const AuditAnchor& a) {
  return absl::StrCat(AnchorFormat(spec), " ", spec.name, "=", a.instance_id, " seq=", a.seq,
                      " head=", ToHex(a.head_mac), " at_ms=", a.at_ms, " mac=", ToHex(a.mac));
}

absl::StatusOr<AuditAnchor> ParseAuditAnchor(const ChainSpec& spec, std::string_view text) {
  const std::string format = AnchorFormat(spec);
  if (text.size() > kMaxAuditAnchorText) {
    return absl::InvalidArgumentError(
        absl::StrCat("anchor: longer than ", kMaxAuditAnchorText, " bytes: not an audit anchor"));
  }
  absl::string_view line = absl::StripAsciiWhitespace(absl::string_view(text.data(), text.size()));
  if (!absl::ConsumePrefix(&line, format) || !absl::ConsumePrefix(&line, " ")) {
    return absl::InvalidArgumentError(absl::StrCat("anchor: must start with '", format, "'"));
  }
  std::vector<absl::string_view> fields = absl::StrSplit(line, ' ');
  const char* const kNames[] = {spec.name.c_str(), "seq", "head", "at_ms", "mac"};
  if (fields.size() != 5) {
    return absl::InvalidArgumentError(
        absl::StrCat("anchor: must have the fields ", spec.name, ", seq, head, at_ms, mac"));
  }
  std::string value[5];
  for (int i = 0; i < 5; ++i) {
    absl::string_view f = fields[i];
    if (!absl::ConsumePrefix(&f, kNames[i]) || !absl::ConsumePrefix(&f, "=")) {
      return absl::InvalidArgumentError(
          absl::StrCat("anchor: field ", i + 1, " must be ", kNames[i], "=..."));
    }
    value[i] = std::string(f);
  }
  AuditAnchor a;
  a.instance_id = value[0];
  if (!IsAnchorInstanceId(a.instance_id)) {
    return absl::InvalidArgumentError(absl::StrCat("anchor: ", spec.name, " must be an ",
                                                   absl::AsciiStrToUpper(spec.name),
                                                   " id (letters, digits, -_.:@)"));
  }
  if (!absl::SimpleAtoi(value[1], &a.seq) || value[1].empty() || value[1][0] == '+') {
    return absl::InvalidArgumentError("anchor: seq must be a record number");
  }
  if (!absl::SimpleAtoi(value[3], &a.at_ms) || a.at_ms < 0) {
    return absl::InvalidArgumentError("anchor: at_ms must be Unix milliseconds");
  }
  for (auto [index, out] : {std::pair<int, Bytes*>{2, &a.head_mac}, {4, &a.mac}}) {
    absl::StatusOr<Bytes> bytes = FromHex(value[index]);
    if (!bytes.ok() || bytes->size() != kAuditMacSize) {
      return absl::InvalidArgumentError(
          absl::StrCat("anchor: ", kNames[index], " must be 64 hex digits"));
    }
    *out = *std::move(bytes);
  }
  return a;
}

absl::StatusOr<Bytes> AuditAnchorMac(const ChainSpec& spec, const crypto::SecretBytes& key,
                                     const AuditAnchor& a) {
  const std::string tag = AnchorTag(spec);
  Bytes data(tag.begin(), tag.end());
  PutText(data, a.instance_id);
  PutBigEndian(data, a.seq, 8);
  data.insert(data.end(), a.head_mac.begin(), a.head_mac.end());
  PutBigEndian(data, static_cast<uint64_t>(a.at_ms), 8);
  return HmacSha256(key, data);
}

namespace {

// An HMAC context with its digest (SHA-256) set, copied for every MAC: fetching HMAC and
// SHA-256 by name takes a lock on OpenSSL's provider store each time. Only read (copied)
// after it is made, so it is safe to share between threads. Null if OpenSSL lacks either.
const EVP_MAC_CTX* HmacSha256Template() {
  static EVP_MAC_CTX* const ctx = [] {
    EVP_MAC* mac = EVP_MAC_fetch(nullptr, "HMAC", nullptr);
    EVP_MAC_CTX* made = mac != nullptr ? EVP_MAC_CTX_new(mac) : nullptr;
    EVP_MAC_free(mac);  // the context holds its own reference
    char digest[] = "SHA256";
    OSSL_PARAM params[] = {OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest, 0),
                           OSSL_PARAM_construct_end()};
    if (made != nullptr && EVP_MAC_CTX_set_params(made, params) != 1) {
      EVP_MAC_CTX_free(made);
      made = nullptr;
    }
    return made;
  }();
  return ctx;
}

}  // namespace

absl::StatusOr<Bytes> HmacSha256(const crypto::SecretBytes& key, std::span<const uint8_t> data) {
  const EVP_MAC_CTX* tmpl = HmacSha256Template();
  if (tmpl == nullptr) return absl::InternalError("HMAC unavailable");
  crypto::EvpMacCtxPtr ctx(EVP_MAC_CTX_dup(tmpl));
  auto k = key.RevealSecret();
  Bytes out(kAuditMacSize);
  size_t out_len = 0;
  if (!ctx || EVP_MAC_init(ctx.get(), k.data(), k.size(), nullptr) != 1 ||
      EVP_MAC_update(ctx.get(), data.data(), data.size()) != 1 ||
      EVP_MAC_final(ctx.get(), out.data(), &out_len, out.size()) != 1 || out_len != kAuditMacSize) {
    return absl::InternalError("HMAC-SHA256 failed");
  }
  return out;
}

absl::StatusOr<Bytes> PendingAuditMac(const ChainSpec& spec, const crypto::SecretBytes& key,
                                      uint64_t id, const AuditEvent& event) {
  const std::string tag = PendingTag(spec);
  Bytes data(tag.begin(), tag.end());
  PutBigEndian(data, id, 8);
  Bytes record = CanonicalAuditRecord(0, event);
  data.insert(data.end(), record.begin(), record.end());
  return HmacSha256(key, data);
}

Bytes CanonicalAuditRecord(uint64_t seq, const AuditEvent& e) {
  Bytes out;
  PutBigEndian(out, seq, 8);
  PutBigEndian(out, static_cast<uint64_t>(e.at_ms), 8);
  PutText(out, e.actor);
  PutText(out, e.action);
  PutText(out, e.sn);
  PutText(out, e.detail);
  PutText(out, e.result);
  if (!e.request_id.empty()) PutText(out, e.request_id);
  return out;
}

AuditEvent WithCurrentRequestId(AuditEvent event) {
  if (event.request_id.empty()) event.request_id = std::string(CurrentRequestId());
  return event;
}

}  // namespace rkl::audit
