#include "rkl/protocol/transport_key.h"

#include <algorithm>

#include "rkl/common/status_macros.h"
#include "rkl/crypto/cmac.h"
#include "rkl/crypto/kwp.h"
#include "rkl/crypto/random.h"
#include "rkl/protocol/sn.h"

namespace rkl::protocol {
namespace {

void PutBigEndian(Bytes& out, uint64_t v, int bytes) {
  for (int i = bytes - 1; i >= 0; --i) out.push_back(static_cast<uint8_t>(v >> (8 * i)));
}

uint64_t GetBigEndian(std::span<const uint8_t> in) {
  uint64_t v = 0;
  for (uint8_t b : in) v = v << 8 | b;
  return v;
}

}  // namespace

Bytes OaepLabel(std::string_view sn) {
  // Sized once, then filled (appending with insert() draws a false -Warray-bounds from g++ 12).
  Bytes label(kOaepLabelPrefix.size() + sn.size());
  std::copy(sn.begin(), sn.end(),
            std::copy(kOaepLabelPrefix.begin(), kOaepLabelPrefix.end(), label.begin()));
  return label;
}

absl::StatusOr<SecretBytes> EncodeTkPayload(const TransportKey& tk) {
  size_t n = crypto::KeyLength(tk.algorithm);
  if (tk.tek.size() != n || tk.auk.size() != n) {
    return absl::InvalidArgumentError("transport key: TEK and AUK must be " + std::to_string(n) +
                                      " bytes for " +
                                      std::string(crypto::KeyAlgorithmName(tk.algorithm)));
  }
  SecretBytes p(2 + 2 * n);
  auto out = p.RevealSecretMutable();
  out[0] = kTkPayloadFormat;
  out[1] = crypto::KeyAlgorithmCode(tk.algorithm);
  std::ranges::copy(tk.tek.RevealSecret(), out.begin() + 2);
  std::ranges::copy(tk.auk.RevealSecret(), out.begin() + 2 + n);
  return p;
}

absl::StatusOr<TransportKey> ParseTkPayload(const SecretBytes& payload) {
  auto p = payload.RevealSecret();
  if (p.size() < 2) return absl::InvalidArgumentError("transport key payload: too short");
  if (p[0] != kTkPayloadFormat) {
    return absl::InvalidArgumentError("transport key payload: unknown format");
  }
  auto algorithm = crypto::KeyAlgorithmFromCode(p[1]);
  if (!algorithm.ok()) {
    return absl::InvalidArgumentError("transport key payload: unknown algorithm code");
  }
  size_t n = crypto::KeyLength(*algorithm);
  if (p.size() != 2 + 2 * n) {
    return absl::InvalidArgumentError("transport key payload: wrong length for its algorithm");
  }
  TransportKey tk{*algorithm, payload.Sub(2, n), payload.Sub(2 + n, n)};
  if (*algorithm == KeyAlgorithm::kTdes2 &&
      (!crypto::HasOddParity(tk.tek) || !crypto::HasOddParity(tk.auk))) {
    return absl::InvalidArgumentError("transport key payload: TDES key without odd parity");
  }
  return tk;
}

Bytes EncodeCtkPkHeader(const CtkPkHeader& h) {
  Bytes out(kCtkPkMagic.begin(), kCtkPkMagic.end());
  out.push_back(crypto::KeyAlgorithmCode(h.algorithm));
  out.push_back(static_cast<uint8_t>(h.sn.size()));
  out.insert(out.end(), h.sn.begin(), h.sn.end());
  PutBigEndian(out, static_cast<uint64_t>(h.created_at_unix_ms), 8);
  out.insert(out.end(), h.pk_kcv.begin(), h.pk_kcv.end());
  out.insert(out.end(), h.mak_kcv.begin(), h.mak_kcv.end());
  return out;
}

absl::StatusOr<ParsedCtkPk> ParseCtkPk(std::span<const uint8_t> in) {
  auto bad = [](const std::string& what) { return absl::InvalidArgumentError("ctk_pk: " + what); };
  if (in.size() > kMaxCtkPkSize) return bad("longer than any valid Ctk_pk");
  if (in.size() < 6 || !std::equal(kCtkPkMagic.begin(), kCtkPkMagic.end(), in.begin())) {
    return bad("does not start with RKL1");
  }
  ParsedCtkPk out;
  auto algorithm = crypto::KeyAlgorithmFromCode(in[4]);
  if (!algorithm.ok()) return bad("unknown algorithm code");
  out.header.algorithm = *algorithm;
  size_t sn_len = in[5];
  size_t pos = 6;
  // SN, created_at, two KCVs, length of W.
  if (in.size() < pos + sn_len + 8 + 3 + 3 + 2) return bad("truncated header");
  out.header.sn.assign(reinterpret_cast<const char*>(in.data() + pos), sn_len);
  RKL_RETURN_IF_ERROR(ValidateSn(out.header.sn));
  pos += sn_len;
  uint64_t created = GetBigEndian(in.subspan(pos, 8));
  if (created > static_cast<uint64_t>(INT64_MAX)) return bad("created_at out of range");
  out.header.created_at_unix_ms = static_cast<int64_t>(created);
  pos += 8;
  std::copy_n(in.begin() + pos, 3, out.header.pk_kcv.begin());
  pos += 3;
  std::copy_n(in.begin() + pos, 3, out.header.mak_kcv.begin());
  pos += 3;
  size_t w_len = GetBigEndian(in.subspan(pos, 2));
  pos += 2;
  if (w_len < 16 || w_len % 8 != 0)
    return bad("wrapped key length must be a multiple of 8, at least 16");
  if (in.size() != pos + w_len + kCtkPkMacSize) return bad("length does not match its fields");
  out.wrapped.assign(in.begin() + pos, in.begin() + pos + w_len);
  out.authenticated.assign(in.begin(), in.begin() + pos + w_len);
  out.mac.assign(in.begin() + pos + w_len, in.end());
  return out;
}

absl::StatusOr<Bytes> BuildCtkPk(const CtkPkHeader& header, const SecretBytes& payload,
                                 const SecretBytes& pk, const SecretBytes& mak) {
  RKL_RETURN_IF_ERROR(ValidateSn(header.sn));
  RKL_ASSIGN_OR_RETURN(Bytes w, crypto::KwpWrap(pk, payload));
  Bytes out = EncodeCtkPkHeader(header);
  PutBigEndian(out, w.size(), 2);
  out.insert(out.end(), w.begin(), w.end());
  RKL_ASSIGN_OR_RETURN(Bytes m, crypto::Cmac(crypto::CipherFamily::kAes, mak, out));
  out.insert(out.end(), m.begin(), m.end());
  return out;
}

absl::StatusOr<TransportKey> OpenCtkPk(const ParsedCtkPk& parsed, const SecretBytes& pk,
                                       const SecretBytes& mak) {
  if (!crypto::CmacVerify(crypto::CipherFamily::kAes, mak, parsed.authenticated, parsed.mac)) {
    return absl::UnauthenticatedError("ctk_pk: MAC does not verify");
  }
  auto payload = crypto::KwpUnwrap(pk, parsed.wrapped);
  if (!payload.ok()) return absl::UnauthenticatedError("ctk_pk: wrapped key does not unwrap");
  RKL_ASSIGN_OR_RETURN(TransportKey tk, ParseTkPayload(*payload));
  if (tk.algorithm != parsed.header.algorithm) {
    return absl::InvalidArgumentError("ctk_pk: payload algorithm differs from the header");
  }
  return tk;
}

}  // namespace rkl::protocol
