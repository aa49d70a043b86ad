#include "rkl/tr34/tokens.h"

#include <openssl/cms.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/objects.h>
#include <openssl/x509.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <ctime>
#include <string>
#include <string_view>
#include <utility>

#include "absl/strings/str_cat.h"
#include "der.h"
#include "rkl/common/status_macros.h"
#include "rkl/crypto/openssl_ptr.h"
#include "rkl/crypto/random.h"
#include "rkl/crypto/rsa.h"
#include "rkl/crypto/x509_crl.h"
#include "tokens_internal.h"

namespace rkl::tr34 {
namespace {

using crypto::SecretBytes;

using CmsPtr = crypto::OpenSslPtr<CMS_ContentInfo, CMS_ContentInfo_free>;
using Asn1ObjectPtr = crypto::OpenSslPtr<ASN1_OBJECT, ASN1_OBJECT_free>;
inline void FreeCrlStack(STACK_OF(X509_CRL) * s) { sk_X509_CRL_pop_free(s, X509_CRL_free); }
using CrlStackPtr = crypto::OpenSslPtr<STACK_OF(X509_CRL), FreeCrlStack>;

// ---- object identifiers, as their DER encodings (tag, length, contents) ----
// An OID under 1.2.840.113549 (RSA Data Security: PKCS #1, #7, #9 and the DES OIDs).
template <uint8_t... kArcs>
constexpr std::array<uint8_t, 8 + sizeof...(kArcs)> RsadsiOid() {
  return {0x06, 6 + sizeof...(kArcs), 0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, kArcs...};
}
// An OID under 2.16.840.1.101.3.4 (NIST algorithms: AES, SHA-2).
template <uint8_t... kArcs>
constexpr std::array<uint8_t, 9 + sizeof...(kArcs)> NistOid() {
  return {0x06, 7 + sizeof...(kArcs), 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, kArcs...};
}
// CMS content types (RFC 5652 §4-6): id-data, id-signedData, id-envelopedData.
constexpr auto kOidData = RsadsiOid<0x01, 0x07, 0x01>();
constexpr auto kOidSignedData = RsadsiOid<0x01, 0x07, 0x02>();
constexpr auto kOidEnvelopedData = RsadsiOid<0x01, 0x07, 0x03>();
// PKCS #9 attributes (RFC 5652 §11) and TR-34's random nonce, pkcs-9 25.3.
constexpr auto kOidContentType = RsadsiOid<0x01, 0x09, 0x03>();
constexpr auto kOidMessageDigest = RsadsiOid<0x01, 0x09, 0x04>();
constexpr auto kOidSigningTime = RsadsiOid<0x01, 0x09, 0x05>();
constexpr auto kOidRandomNonce = RsadsiOid<0x01, 0x09, 0x19, 0x03>();
constexpr const char* kRandomNonceText = "1.2.840.113549.1.9.25.3";
// RSA (RFC 8017, RFC 4055) and content encryption (RFC 3370, RFC 3565).
constexpr auto kOidRsaEncryption = RsadsiOid<0x01, 0x01, 0x01>();
constexpr auto kOidRsaesOaep = RsadsiOid<0x01, 0x01, 0x07>();
constexpr auto kOidMgf1 = RsadsiOid<0x01, 0x01, 0x08>();
constexpr auto kOidPSpecified = RsadsiOid<0x01, 0x01, 0x09>();
constexpr auto kOidDesEde3Cbc = RsadsiOid<0x03, 0x07>();
constexpr auto kOidSha256 = NistOid<0x02, 0x01>();
constexpr auto kOidAes128Cbc = NistOid<0x01, 0x02>();
constexpr auto kOidAes192Cbc = NistOid<0x01, 0x16>();
constexpr auto kOidAes256Cbc = NistOid<0x01, 0x2A>();
constexpr uint8_t kDerNull[] = {0x05, 0x00};
constexpr uint8_t kDerVersion0[] = {0x02, 0x01, 0x00};
constexpr uint8_t kDerVersion1[] = {0x02, 0x01, 0x01};

bool Same(std::span<const uint8_t> a, std::span<const uint8_t> b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin());
}

Bytes Seq(std::initializer_list<std::span<const uint8_t>> parts) {
  return der::Tlv(der::kSequence, der::Concat(parts));
}

// Attribute ::= SEQUENCE { attrType OID, attrValues SET OF value } with one value.
Bytes Attribute(std::span<const uint8_t> oid, std::span<const uint8_t> value) {
  return Seq({oid, der::SetOf({Bytes(value.begin(), value.end())})});
}

absl::Status Malformed(std::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("TR-34 token: malformed ", std::string(what)));
}

// One message for every failure of key transport, content decryption or padding: which
// step failed must not be observable (a padding oracle otherwise).
absl::Status DecryptionFailure() {
  ERR_clear_error();
  return absl::UnauthenticatedError("TR-34 key token: decryption failed");
}

template <typename T>
absl::StatusOr<Bytes> ToDer(const T* obj, int (*i2d)(const T*, unsigned char**)) {
  int len = i2d(obj, nullptr);
  if (len <= 0) {
    ERR_clear_error();
    return absl::InternalError("DER encoding failed");
  }
  Bytes out(static_cast<size_t>(len));
  unsigned char* p = out.data();
  i2d(obj, &p);
  return out;
}

// IssuerAndSerialNumber ::= SEQUENCE { issuer Name, serialNumber INTEGER }.
absl::StatusOr<CertId> IdFromParts(X509_NAME* issuer, ASN1_INTEGER* serial) {
  if (issuer == nullptr || serial == nullptr) return Malformed("signer identifier");
  RKL_ASSIGN_OR_RETURN(Bytes name, ToDer(issuer, i2d_X509_NAME));
  RKL_ASSIGN_OR_RETURN(Bytes sn, ToDer(serial, i2d_ASN1_INTEGER));
  return CertId{Seq({name, sn})};
}

// A ContentInfo of the expected type, parsed with OpenSSL's CMS decoder; trailing bytes
// are refused so that one token has one encoding.
absl::StatusOr<CmsPtr> ParseContentInfo(std::span<const uint8_t> der, int type_nid,
                                        std::string_view what) {
  if (der.empty() || der.size() > static_cast<size_t>(INT32_MAX)) return Malformed(what);
  const unsigned char* p = der.data();
  CmsPtr cms(d2i_CMS_ContentInfo(nullptr, &p, static_cast<long>(der.size())));
  if (cms == nullptr || p != der.data() + der.size()) {
    ERR_clear_error();
    return Malformed(what);
  }
  if (OBJ_obj2nid(CMS_get0_type(cms.get())) != type_nid) {
    return absl::InvalidArgumentError(
        absl::StrCat(std::string(what), ": unexpected CMS content type"));
  }
  return cms;
}

absl::StatusOr<std::vector<Bytes>> CrlsOf(CMS_ContentInfo* cms) {
  std::vector<Bytes> out;
  CrlStackPtr crls(CMS_get1_crls(cms));
  for (int i = 0; crls != nullptr && i < sk_X509_CRL_num(crls.get()); ++i) {
    RKL_ASSIGN_OR_RETURN(Bytes crl, ToDer(sk_X509_CRL_value(crls.get(), i), i2d_X509_CRL));
    out.push_back(std::move(crl));
  }
  return out;
}

// A SignedData token with exactly one SignerInfo, taken apart.
struct SignedParts {
  CmsPtr cms;
  CMS_SignerInfo* signer_info = nullptr;  // owned by cms
  int econtent_nid = NID_undef;
  Bytes econtent;
  CertId signer;
  std::vector<Bytes> crls;
};

absl::StatusOr<SignedParts> ParseSigned(std::span<const uint8_t> token, int econtent_nid,
                                        std::string_view what) {
  SignedParts parts;
  RKL_ASSIGN_OR_RETURN(parts.cms, ParseContentInfo(token, NID_pkcs7_signed, what));
  parts.econtent_nid = OBJ_obj2nid(CMS_get0_eContentType(parts.cms.get()));
  if (parts.econtent_nid != econtent_nid) {
    return absl::InvalidArgumentError(
        absl::StrCat(std::string(what), ": unexpected encapsulated content"));
  }
  ASN1_OCTET_STRING** content = CMS_get0_content(parts.cms.get());
  if (content == nullptr || *content == nullptr) return Malformed("encapsulated content");
  parts.econtent.assign(ASN1_STRING_get0_data(*content),
                        ASN1_STRING_get0_data(*content) + ASN1_STRING_length(*content));
  STACK_OF(CMS_SignerInfo)* infos = CMS_get0_SignerInfos(parts.cms.get());
  if (infos == nullptr || sk_CMS_SignerInfo_num(infos) != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat(std::string(what), ": needs exactly one signer"));
  }
  parts.signer_info = sk_CMS_SignerInfo_value(infos, 0);
  ASN1_OCTET_STRING* key_id = nullptr;
  X509_NAME* issuer = nullptr;
  ASN1_INTEGER* serial = nullptr;
  if (CMS_SignerInfo_get0_signer_id(parts.signer_info, &key_id, &issuer, &serial) != 1 ||
      key_id != nullptr) {
    ERR_clear_error();
    return absl::InvalidArgumentError(
        absl::StrCat(std::string(what), ": the signer must be named by issuer and serial number"));
  }
  RKL_ASSIGN_OR_RETURN(parts.signer, IdFromParts(issuer, serial));
  RKL_ASSIGN_OR_RETURN(parts.crls, CrlsOf(parts.cms.get()));
  return parts;
}

// The single OCTET STRING value of signed attribute `oid`, nullopt when absent.
absl::StatusOr<std::optional<Bytes>> SignedOctets(CMS_SignerInfo* si, const ASN1_OBJECT* oid,
                                                  std::string_view what) {
  if (CMS_signed_get_attr_by_OBJ(si, oid, -1) < 0) return std::nullopt;
  // lastpos -3: exactly one such attribute holding exactly one value of the type.
  auto* value = static_cast<ASN1_OCTET_STRING*>(
      CMS_signed_get0_data_by_OBJ(si, oid, -3, V_ASN1_OCTET_STRING));
  if (value == nullptr) {
    ERR_clear_error();
    return Malformed(what);
  }
  const uint8_t* data = ASN1_STRING_get0_data(value);
  return Bytes(data, data + ASN1_STRING_length(value));
}

absl::StatusOr<std::optional<Bytes>> SignedNonce(CMS_SignerInfo* si) {
  Asn1ObjectPtr oid(OBJ_txt2obj(kRandomNonceText, 1));
  if (oid == nullptr) return absl::InternalError("random nonce OID");
  return SignedOctets(si, oid.get(), "random number attribute");
}

absl::StatusOr<std::optional<int64_t>> SignedTime(CMS_SignerInfo* si) {
  int idx = CMS_signed_get_attr_by_NID(si, NID_pkcs9_signingTime, -1);
  if (idx < 0) return std::nullopt;
  X509_ATTRIBUTE* attr = CMS_signed_get_attr(si, idx);
  ASN1_TYPE* value = X509_ATTRIBUTE_count(attr) == 1 ? X509_ATTRIBUTE_get0_type(attr, 0) : nullptr;
  if (CMS_signed_get_attr_by_NID(si, NID_pkcs9_signingTime, idx) >= 0 || value == nullptr ||
      (value->type != V_ASN1_UTCTIME && value->type != V_ASN1_GENERALIZEDTIME)) {
    return Malformed("signing time attribute");
  }
  std::tm tm{};
  if (ASN1_TIME_to_tm(value->value.utctime, &tm) != 1) {
    ERR_clear_error();
    return Malformed("signing time attribute");
  }
  return static_cast<int64_t>(timegm(&tm));
}

// The signed attributes as the signer signed them: a SET in the order they arrived. RFC 5652
// §5.4 signs the DER encoding, in which a SET OF is sorted; a sender that did not sort (Annex
// B's B.9 did not) signed its own order, and OpenSSL verifies that order too, so re-sorting
// would refuse a signature over exactly the bytes on the wire.
absl::StatusOr<Bytes> SignedAttributesAsSent(CMS_SignerInfo* si) {
  Bytes attrs;
  for (int i = 0; i < CMS_signed_get_attr_count(si); ++i) {
    RKL_ASSIGN_OR_RETURN(Bytes a, ToDer(CMS_signed_get_attr(si, i), i2d_X509_ATTRIBUTE));
    attrs.insert(attrs.end(), a.begin(), a.end());
  }
  if (attrs.empty()) return absl::InvalidArgumentError("TR-34 token: no signed attributes");
  return der::Tlv(der::kSet, attrs);
}

absl::StatusOr<Bytes> Sha256(std::span<const uint8_t> data) {
  Bytes out(32);
  unsigned int len = 0;
  if (EVP_Digest(data.data(), data.size(), out.data(), &len, EVP_sha256(), nullptr) != 1) {
    return absl::InternalError("SHA-256 failed");
  }
  return out;
}

absl::Status VerifyParts(const SignedParts& parts, const PeerKey& signer) {
  CMS_SignerInfo* si = parts.signer_info;
  if (!(parts.signer == signer.id)) {
    return absl::UnauthenticatedError("TR-34 token: signed by another KDH than the expected one");
  }
  X509_ALGOR* digest_alg = nullptr;
  X509_ALGOR* sig_alg = nullptr;
  CMS_SignerInfo_get0_algs(si, nullptr, nullptr, &digest_alg, &sig_alg);
  const ASN1_OBJECT* digest_oid = nullptr;
  const ASN1_OBJECT* sig_oid = nullptr;
  X509_ALGOR_get0(&digest_oid, nullptr, nullptr, digest_alg);
  X509_ALGOR_get0(&sig_oid, nullptr, nullptr, sig_alg);
  int sig_nid = OBJ_obj2nid(sig_oid);
  if (OBJ_obj2nid(digest_oid) != NID_sha256 ||
      (sig_nid != NID_rsaEncryption && sig_nid != NID_sha256WithRSAEncryption)) {
    return absl::InvalidArgumentError("TR-34 token: signature must be RSA with SHA-256");
  }
  Bytes signed_bytes;
  if (CMS_signed_get_attr_count(si) <= 0) {
    // RFC 5652 §5.3: signed attributes may be absent only for id-data, and the signature then
    // covers the content (the CA unbind token, B.13).
    if (parts.econtent_nid != NID_pkcs7_data) {
      return absl::UnauthenticatedError("TR-34 token: signed attributes are missing");
    }
    signed_bytes = parts.econtent;
  } else {
    // contentType must name the encapsulated content (RFC 5652 §11.1).
    auto* content_type = static_cast<ASN1_OBJECT*>(
        CMS_signed_get0_data_by_OBJ(si, OBJ_nid2obj(NID_pkcs9_contentType), -3, V_ASN1_OBJECT));
    if (content_type == nullptr || OBJ_obj2nid(content_type) != parts.econtent_nid) {
      ERR_clear_error();
      return absl::UnauthenticatedError("TR-34 token: contentType attribute does not match");
    }
    RKL_ASSIGN_OR_RETURN(auto digest,
                         SignedOctets(si, OBJ_nid2obj(NID_pkcs9_messageDigest), "messageDigest"));
    RKL_ASSIGN_OR_RETURN(Bytes expected, Sha256(parts.econtent));
    if (!digest.has_value() || !Same(*digest, expected)) {
      return absl::UnauthenticatedError("TR-34 token: content does not match its messageDigest");
    }
    RKL_ASSIGN_OR_RETURN(signed_bytes, SignedAttributesAsSent(si));
  }
  ASN1_OCTET_STRING* sig = CMS_SignerInfo_get0_signature(si);
  crypto::EvpMdCtxPtr ctx(EVP_MD_CTX_new());
  if (ctx == nullptr || sig == nullptr ||
      EVP_DigestVerifyInit(ctx.get(), nullptr, EVP_sha256(), nullptr, signer.key.evp_pkey()) != 1 ||
      EVP_DigestVerify(ctx.get(), ASN1_STRING_get0_data(sig),
                       static_cast<size_t>(ASN1_STRING_length(sig)), signed_bytes.data(),
                       signed_bytes.size()) != 1) {
    ERR_clear_error();
    return absl::UnauthenticatedError("TR-34 token: signature does not verify");
  }
  return absl::OkStatus();
}

absl::StatusOr<Bytes> RsaSha256Sign(const crypto::PrivateKey& key, std::span<const uint8_t> data) {
  if (key.Type() != crypto::KeyType::kRsa) {
    return absl::InvalidArgumentError("TR-34 signer: the KDH key must be RSA");
  }
  crypto::EvpMdCtxPtr ctx(EVP_MD_CTX_new());
  size_t len = 0;
  if (ctx == nullptr ||
      EVP_DigestSignInit(ctx.get(), nullptr, EVP_sha256(), nullptr, key.evp_pkey()) != 1 ||
      EVP_DigestSign(ctx.get(), nullptr, &len, data.data(), data.size()) != 1) {
    ERR_clear_error();
    return absl::InternalError("TR-34 signer: RSA signing failed");
  }
  Bytes sig(len);
  if (EVP_DigestSign(ctx.get(), sig.data(), &len, data.data(), data.size()) != 1) {
    ERR_clear_error();
    return absl::InternalError("TR-34 signer: RSA signing failed");
  }
  sig.resize(len);
  return sig;
}

// The content-encryption algorithm of a TMK family and size.
struct ContentCipher {
  const EVP_CIPHER* cipher;
  std::span<const uint8_t> oid;
};
absl::StatusOr<ContentCipher> CipherForTmk(crypto::CipherFamily family, size_t tmk_size) {
  if (family == crypto::CipherFamily::kTdes) {
    if (tmk_size != 16 && tmk_size != 24) {
      return absl::InvalidArgumentError("TMK: a TDES key is 16 or 24 bytes");
    }
    return ContentCipher{EVP_des_ede3_cbc(), kOidDesEde3Cbc};
  }
  switch (tmk_size) {
    case 16:
      return ContentCipher{EVP_aes_128_cbc(), kOidAes128Cbc};
    case 24:
      return ContentCipher{EVP_aes_192_cbc(), kOidAes192Cbc};
    case 32:
      return ContentCipher{EVP_aes_256_cbc(), kOidAes256Cbc};
    default:
      return absl::InvalidArgumentError("TMK: an AES key is 16, 24 or 32 bytes");
  }
}
const EVP_CIPHER* CipherForOid(std::span<const uint8_t> oid) {
  if (Same(oid, kOidDesEde3Cbc)) return EVP_des_ede3_cbc();
  if (Same(oid, kOidAes128Cbc)) return EVP_aes_128_cbc();
  if (Same(oid, kOidAes192Cbc)) return EVP_aes_192_cbc();
  if (Same(oid, kOidAes256Cbc)) return EVP_aes_256_cbc();
  return nullptr;
}

// The DER key block, built inside SecretBytes so the clear key never sits in a plain vector.
SecretBytes EncodeKeyBlock(const CertId& kdh_id, const SecretBytes& key, std::string_view header) {
  Bytes key_header = der::Header(der::kOctetString, key.size());
  Bytes attr = internal::KeyBlockHeaderAttribute(header);
  size_t body =
      sizeof(kDerVersion1) + kdh_id.der.size() + key_header.size() + key.size() + attr.size();
  Bytes seq_header = der::Header(der::kSequence, body);
  SecretBytes out(seq_header.size() + body);
  uint8_t* p = out.RevealSecretMutable().data();
  for (std::span<const uint8_t> part :
       {std::span<const uint8_t>(seq_header), std::span<const uint8_t>(kDerVersion1),
        std::span<const uint8_t>(kdh_id.der), std::span<const uint8_t>(key_header),
        key.RevealSecret(), std::span<const uint8_t>(attr)}) {
    std::memcpy(p, part.data(), part.size());
    p += part.size();
  }
  return out;
}

absl::StatusOr<Bytes> CbcEncrypt(const EVP_CIPHER* cipher, const SecretBytes& key,
                                 std::span<const uint8_t> iv, const SecretBytes& plaintext) {
  crypto::EvpCipherCtxPtr ctx(EVP_CIPHER_CTX_new());
  std::span<const uint8_t> in = plaintext.RevealSecret();
  Bytes out(in.size() + static_cast<size_t>(EVP_CIPHER_get_block_size(cipher)));
  int len1 = 0;
  int len2 = 0;
  // PKCS #7 padding, OpenSSL's default, as RFC 5652 §6.3 requires.
  if (ctx == nullptr ||
      EVP_EncryptInit_ex(ctx.get(), cipher, nullptr, key.RevealSecret().data(), iv.data()) != 1 ||
      EVP_EncryptUpdate(ctx.get(), out.data(), &len1, in.data(), static_cast<int>(in.size())) !=
          1 ||
      EVP_EncryptFinal_ex(ctx.get(), out.data() + len1, &len2) != 1) {
    ERR_clear_error();
    return absl::InternalError("TR-34 key token: content encryption failed");
  }
  out.resize(static_cast<size_t>(len1 + len2));
  return out;
}

// RSAES-OAEP-params (RFC 4055 §4.1) for SHA-256, MGF1-SHA-256 and the empty label, each
// field with its explicit context tag.
Bytes OaepSha256Params() {
  Bytes hash = Seq({kOidSha256, kDerNull});
  Bytes mgf = Seq({kOidMgf1, Seq({kOidSha256, kDerNull})});
  Bytes source = Seq({kOidPSpecified, der::Tlv(der::kOctetString, {})});
  return Seq({der::Tlv(der::ContextTag(0), hash), der::Tlv(der::ContextTag(1), mgf),
              der::Tlv(der::ContextTag(2), source)});
}

// True when `alg` (an AlgorithmIdentifier) is `oid` with absent or NULL parameters.
bool IsAlgorithm(std::span<const uint8_t> alg, std::span<const uint8_t> oid) {
  der::Reader r(alg);
  auto id = r.NextIf(der::kOid);
  if (!id || !Same(id->encoding, oid)) return false;
  if (r.Done()) return true;
  auto params = r.NextIf(der::kNull);
  return params.has_value() && params->value.empty() && r.Done();
}

// Accepts only SHA-256 / MGF1-SHA-256 / empty label. Each field may carry its RFC 4055
// context tag or, as in the TR-34-2019 Annex B samples, come untagged in the same order.
bool IsOaepSha256(std::span<const uint8_t> params) {
  der::Reader r(params);
  std::vector<std::span<const uint8_t>> fields;
  while (!r.Done()) {
    auto e = r.Next();
    if (!e) return false;
    if (e->tag == der::ContextTag(static_cast<int>(fields.size()))) {
      auto inner = der::ParseOne(e->value);
      if (!inner || inner->tag != der::kSequence) return false;
      fields.push_back(inner->value);
    } else if (e->tag == der::kSequence) {
      fields.push_back(e->value);
    } else {
      return false;
    }
  }
  // The defaults (SHA-1) are not accepted, so hash and mask generation must be present.
  if (fields.size() < 2 || fields.size() > 3 || !IsAlgorithm(fields[0], kOidSha256)) return false;
  der::Reader mgf(fields[1]);
  auto mgf_oid = mgf.NextIf(der::kOid);
  auto mgf_hash = mgf.NextIf(der::kSequence);
  if (!mgf_oid || !Same(mgf_oid->encoding, kOidMgf1) || !mgf_hash || !mgf.Done() ||
      !IsAlgorithm(mgf_hash->value, kOidSha256)) {
    return false;
  }
  if (fields.size() == 3) {
    der::Reader source(fields[2]);
    auto source_oid = source.NextIf(der::kOid);
    auto label = source.NextIf(der::kOctetString);
    if (!source_oid || !Same(source_oid->encoding, kOidPSpecified) || !label ||
        !label->value.empty() || !source.Done()) {
      return false;
    }
  }
  return true;
}

// The parts of an EnvelopedData with one KeyTransRecipientInfo.
struct EnvelopedParts {
  CertId recipient;
  std::span<const uint8_t> key_encryption_params;
  std::span<const uint8_t> encrypted_key;
  std::span<const uint8_t> cipher_oid;
  std::span<const uint8_t> iv;
  std::span<const uint8_t> ciphertext;
};

absl::StatusOr<EnvelopedParts> ParseEnveloped(std::span<const uint8_t> enveloped) {
  // OpenSSL's CMS API gives no access to a recipient's content-encryption key, and it would
  // decrypt the key block into a plain buffer: EnvelopedData is read by hand.
  auto outer = der::ParseOne(enveloped);
  if (!outer || outer->tag != der::kSequence) return Malformed("EnvelopedData");
  der::Reader r(outer->value);
  auto version = r.NextIf(der::kInteger);
  r.NextIf(der::ContextTag(0));  // originatorInfo, unused by TR-34
  auto recipients = r.NextIf(der::kSet);
  auto content_info = r.NextIf(der::kSequence);
  if (!version || !recipients || !content_info) return Malformed("EnvelopedData");
  der::Reader rs(recipients->value);
  auto ktri = rs.NextIf(der::kSequence);
  if (!ktri || !rs.Done()) {
    return absl::InvalidArgumentError("TR-34 key token: needs exactly one key transport recipient");
  }
  EnvelopedParts parts;
  der::Reader k(ktri->value);
  auto ktri_version = k.NextIf(der::kInteger);
  auto rid = k.NextIf(der::kSequence);  // issuerAndSerialNumber; [0] keyId is not TR-34
  auto alg = k.NextIf(der::kSequence);
  auto encrypted_key = k.NextIf(der::kOctetString);
  if (!ktri_version || !Same(ktri_version->encoding, kDerVersion0) || !rid || !alg ||
      !encrypted_key || !k.Done()) {
    return Malformed("KeyTransRecipientInfo");
  }
  parts.recipient = CertId{Bytes(rid->encoding.begin(), rid->encoding.end())};
  der::Reader a(alg->value);
  auto alg_oid = a.NextIf(der::kOid);
  auto params = a.NextIf(der::kSequence);
  if (!alg_oid || !Same(alg_oid->encoding, kOidRsaesOaep) || !params || !a.Done()) {
    return absl::InvalidArgumentError("TR-34 key token: key transport must be RSAES-OAEP");
  }
  parts.key_encryption_params = params->value;
  parts.encrypted_key = encrypted_key->value;
  der::Reader c(content_info->value);
  auto type = c.NextIf(der::kOid);
  auto cipher_alg = c.NextIf(der::kSequence);
  auto ciphertext = c.NextIf(0x80);  // [0] IMPLICIT OCTET STRING, primitive
  if (!type || !Same(type->encoding, kOidData) || !cipher_alg || !ciphertext || !c.Done()) {
    return Malformed("EncryptedContentInfo");
  }
  der::Reader ca(cipher_alg->value);
  auto cipher_oid = ca.NextIf(der::kOid);
  auto iv = ca.NextIf(der::kOctetString);
  if (!cipher_oid || !iv || !ca.Done()) return Malformed("content-encryption algorithm");
  parts.cipher_oid = cipher_oid->encoding;
  parts.iv = iv->value;
  parts.ciphertext = ciphertext->value;
  return parts;
}

absl::StatusOr<KeyBlock> DecryptContent(const EnvelopedParts& parts, const SecretBytes& cek) {
  const EVP_CIPHER* cipher = CipherForOid(parts.cipher_oid);
  if (cipher == nullptr) {
    return absl::InvalidArgumentError(
        "TR-34 key token: content encryption must be TDES-CBC or AES-CBC");
  }
  size_t iv_size = static_cast<size_t>(EVP_CIPHER_get_iv_length(cipher));
  if (parts.iv.size() != iv_size) {
    return absl::InvalidArgumentError(absl::StrCat("TR-34 key token: the content IV is ",
                                                   parts.iv.size(), " bytes, the cipher needs ",
                                                   iv_size));
  }
  if (cek.size() != static_cast<size_t>(EVP_CIPHER_get_key_length(cipher))) {
    return DecryptionFailure();
  }
  crypto::EvpCipherCtxPtr ctx(EVP_CIPHER_CTX_new());
  SecretBytes plain(parts.ciphertext.size() +
                    static_cast<size_t>(EVP_CIPHER_get_block_size(cipher)));
  int len1 = 0;
  int len2 = 0;
  uint8_t* out = plain.RevealSecretMutable().data();
  if (ctx == nullptr ||
      EVP_DecryptInit_ex(ctx.get(), cipher, nullptr, cek.RevealSecret().data(), parts.iv.data()) !=
          1 ||
      EVP_DecryptUpdate(ctx.get(), out, &len1, parts.ciphertext.data(),
                        static_cast<int>(parts.ciphertext.size())) != 1 ||
      EVP_DecryptFinal_ex(ctx.get(), out + len1, &len2) != 1) {
    return DecryptionFailure();
  }
  return internal::ParseKeyBlock(plain.Sub(0, static_cast<size_t>(len1 + len2)));
}

absl::StatusOr<Bytes> ExactOctets(std::span<const uint8_t> der, std::string_view what) {
  auto e = der::ParseOne(der);
  if (!e || e->tag != der::kOctetString) return Malformed(what);
  return Bytes(e->value.begin(), e->value.end());
}

absl::Status CheckNonce(std::span<const uint8_t> nonce) {
  if (nonce.size() < kMinNonceSize) {
    return absl::InvalidArgumentError(
        absl::StrCat("TR-34 random number: at least ", kMinNonceSize, " bytes"));
  }
  return absl::OkStatus();
}

bool IsPrintableHeader(std::string_view header) {
  return !header.empty() &&
         std::all_of(header.begin(), header.end(), [](char c) { return c >= 0x20 && c < 0x7F; });
}

absl::StatusOr<KeyBlock> Accept(const KeyToken& token, const CertId& own_id,
                                const crypto::PrivateKey& own_key) {
  RKL_ASSIGN_OR_RETURN(KeyBlock block, DecryptKeyBlock(token.enveloped_data, own_id, own_key));
  if (!(block.kdh_id == token.signer)) {
    return absl::UnauthenticatedError(
        "TR-34 key token: key block names another KDH than the signer");
  }
  if (block.header != token.header) {
    return absl::UnauthenticatedError(
        "TR-34 key token: key block header differs from the signed header");
  }
  return block;
}

// signingTime as UTCTime (RFC 5652 §11.3: for dates 1950-2049), "YYMMDDHHMMSSZ".
absl::StatusOr<Bytes> SigningTimeAttribute(int64_t unix_seconds) {
  crypto::Asn1TimePtr t(ASN1_UTCTIME_set(nullptr, static_cast<time_t>(unix_seconds)));
  if (t == nullptr) {
    ERR_clear_error();
    return absl::InvalidArgumentError("signing time outside UTCTime's range");
  }
  RKL_ASSIGN_OR_RETURN(Bytes time_der, ToDer(t.get(), i2d_ASN1_UTCTIME));
  return Attribute(kOidSigningTime, time_der);
}

// [1] IMPLICIT RevocationInfoChoices (RFC 5652 §10.2.1), absent when there is no CRL.
Bytes CrlField(std::span<const Bytes> crls) {
  if (crls.empty()) return Bytes();
  Bytes crl_set;
  for (const Bytes& crl : crls) crl_set.insert(crl_set.end(), crl.begin(), crl.end());
  return der::Tlv(der::ContextTag(1), crl_set);
}

// A SignedData ContentInfo with one SignerInfo (version 1, issuerAndSerialNumber, SHA-256,
// rsaEncryption); `signed_attrs` is the [0] field, or empty for none.
Bytes AssembleSignedData(std::span<const uint8_t> econtent_type, std::span<const uint8_t> econtent,
                         std::span<const uint8_t> signed_attrs, std::span<const uint8_t> signature,
                         const CertId& signer, std::span<const Bytes> crls) {
  Bytes sha256 = Seq({kOidSha256});
  Bytes signer_info =
      Seq({kDerVersion1, signer.der, sha256, signed_attrs, Seq({kOidRsaEncryption, kDerNull}),
           der::Tlv(der::kOctetString, signature)});
  Bytes encap =
      Seq({econtent_type, der::Tlv(der::ContextTag(0), der::Tlv(der::kOctetString, econtent))});
  // Version 1 as the Annex B tokens have it (RFC 5652 would say 3 for a content other than
  // id-data; parsers accept both).
  Bytes signed_data =
      Seq({kDerVersion1, der::SetOf({sha256}), encap, CrlField(crls), der::SetOf({signer_info})});
  return Seq({kOidSignedData, der::Tlv(der::ContextTag(0), signed_data)});
}

// The fields of a degenerate SignedData (RFC 5652 §5.2: no digest algorithms, no signers)
// carrying `econtent` as id-data, `certificates` and `crls`, without the SEQUENCE header:
// CT_KRD/CT_KDH wrap it in one, the rebind tokens of Annex B carry it bare.
Bytes DegenerateSignedDataBody(std::span<const uint8_t> econtent,
                               std::span<const crypto::Certificate> certificates,
                               std::span<const Bytes> crls) {
  Bytes certs;
  for (const crypto::Certificate& cert : certificates) {
    Bytes der = cert.ToDer();
    certs.insert(certs.end(), der.begin(), der.end());
  }
  Bytes empty_set = der::Tlv(der::kSet, {});
  Bytes encap =
      Seq({kOidData, der::Tlv(der::ContextTag(0), der::Tlv(der::kOctetString, econtent))});
  return der::Concat({kDerVersion1, empty_set, encap, der::Tlv(der::ContextTag(0), certs),
                      CrlField(crls), empty_set});
}

}  // namespace

namespace internal {

std::span<const uint8_t> EnvelopedDataOid() { return kOidEnvelopedData; }

Bytes KeyBlockHeaderAttribute(std::string_view header) {
  return Attribute(kOidData, der::Tlv(der::kOctetString, AsBytes(header)));
}

Bytes RandomNonceAttribute(std::span<const uint8_t> nonce) {
  return Attribute(kOidRandomNonce, der::Tlv(der::kOctetString, nonce));
}

absl::StatusOr<Bytes> BuildSignedToken(std::span<const uint8_t> econtent_type,
                                       std::span<const uint8_t> econtent,
                                       std::vector<Bytes> extra_attributes, const CertId& signer,
                                       const crypto::PrivateKey& signer_key,
                                       std::span<const Bytes> crls) {
  RKL_ASSIGN_OR_RETURN(Bytes digest, Sha256(econtent));
  extra_attributes.push_back(Attribute(kOidContentType, econtent_type));
  extra_attributes.push_back(Attribute(kOidMessageDigest, der::Tlv(der::kOctetString, digest)));
  Bytes attrs = der::SetOf(std::move(extra_attributes));
  RKL_ASSIGN_OR_RETURN(Bytes signature, RsaSha256Sign(signer_key, attrs));
  // In the SignerInfo the same SET carries the [0] IMPLICIT tag (RFC 5652 §5.3).
  attrs[0] = der::ContextTag(0);
  return AssembleSignedData(econtent_type, econtent, attrs, signature, signer, crls);
}

absl::StatusOr<Bytes> BuildSignedTokenWithoutAttributes(std::span<const uint8_t> econtent,
                                                        const CertId& signer,
                                                        const crypto::PrivateKey& signer_key) {
  // RFC 5652 §5.4: with no signed attributes the signature covers the content itself, which
  // must then be id-data.
  RKL_ASSIGN_OR_RETURN(Bytes signature, RsaSha256Sign(signer_key, econtent));
  return AssembleSignedData(kOidData, econtent, {}, signature, signer, {});
}

absl::StatusOr<KeyBlock> ParseKeyBlock(const SecretBytes& der) {
  auto outer = der::ParseOne(der.RevealSecret());
  if (!outer || outer->tag != der::kSequence) return Malformed("key block");
  der::Reader r(outer->value);
  auto version = r.NextIf(der::kInteger);
  auto kdh = r.NextIf(der::kSequence);
  auto key = r.NextIf(der::kOctetString);
  auto attr = r.NextIf(der::kSequence);
  if (!version || !Same(version->encoding, kDerVersion1) || !kdh || !key || !attr || !r.Done()) {
    return Malformed("key block");
  }
  der::Reader a(attr->value);
  auto attr_oid = a.NextIf(der::kOid);
  auto values = a.NextIf(der::kSet);
  if (!attr_oid || !Same(attr_oid->encoding, kOidData) || !values || !a.Done()) {
    return Malformed("key block header attribute");
  }
  auto header = der::ParseOne(values->value);
  if (!header || header->tag != der::kOctetString) return Malformed("key block header attribute");
  KeyBlock block;
  block.kdh_id = CertId{Bytes(kdh->encoding.begin(), kdh->encoding.end())};
  block.key = SecretBytes::CopyOf(key->value);
  block.header.assign(header->value.begin(), header->value.end());
  if (!IsPrintableHeader(block.header)) return Malformed("key block header");
  return block;
}

absl::StatusOr<KeyBlock> DecryptKeyBlockWithContentKey(std::span<const uint8_t> enveloped_data,
                                                       const SecretBytes& cek) {
  RKL_ASSIGN_OR_RETURN(EnvelopedParts parts, ParseEnveloped(enveloped_data));
  return DecryptContent(parts, cek);
}

}  // namespace internal

absl::StatusOr<CertId> CertIdOf(const crypto::Certificate& cert) {
  return IdFromParts(X509_get_issuer_name(cert.x509()), X509_get_serialNumber(cert.x509()));
}

absl::Status CheckRole(const crypto::Certificate& cert, Role role,
                       const crypto::Certificate& role_ca) {
  std::string_view name = role == Role::kKdh ? "KDH" : "KRD";
  auto refuse = [&](std::string_view why) {
    return absl::FailedPreconditionError(absl::StrCat("certificate ", cert.SubjectDn(),
                                                      " is not a ", std::string(name),
                                                      " certificate: ", std::string(why)));
  };
  if (X509_NAME_cmp(X509_get_issuer_name(cert.x509()), X509_get_subject_name(role_ca.x509())) !=
      0) {
    return refuse(
        absl::StrCat("not issued by the ", std::string(name), " CA ", role_ca.SubjectDn()));
  }
  EVP_PKEY* ca_key = X509_get0_pubkey(role_ca.x509());
  if (ca_key == nullptr || X509_verify(cert.x509(), ca_key) != 1) {
    ERR_clear_error();
    return refuse(
        absl::StrCat("its signature does not verify under the ", std::string(name), " CA"));
  }
  if (cert.IsCa()) return refuse("it is a CA certificate");
  crypto::KeyUsage needed =
      role == Role::kKdh ? crypto::KeyUsage::kDigitalSignature : crypto::KeyUsage::kKeyEncipherment;
  if (!cert.HasKeyUsage() || !crypto::HasAll(cert.KeyUsageBits(), needed)) {
    return refuse(role == Role::kKdh ? "keyUsage lacks digitalSignature"
                                     : "keyUsage lacks keyEncipherment");
  }
  return absl::OkStatus();
}

absl::StatusOr<PeerKey> PeerFromCertificate(const crypto::Certificate& cert, Role role,
                                            const crypto::Certificate& role_ca) {
  RKL_RETURN_IF_ERROR(CheckRole(cert, role, role_ca));
  RKL_ASSIGN_OR_RETURN(CertId id, CertIdOf(cert));
  RKL_ASSIGN_OR_RETURN(crypto::PublicKey key, cert.GetPublicKey());
  return PeerKey{std::move(id), std::move(key)};
}

absl::Status CheckKdhNotRevoked(const crypto::Certificate& kdh_cert, std::span<const Bytes> crls,
                                const crypto::Certificate& ca_kdh, int64_t now) {
  for (const Bytes& der : crls) {
    auto crl = crypto::Crl::FromDer(der);
    if (!crl.ok() || !crl->VerifySignature(ca_kdh).ok()) continue;  // another CA's, or forged
    if (crl->LastUpdate() > now || !crl->NextUpdate().has_value() || *crl->NextUpdate() < now) {
      continue;
    }
    if (crl->IsRevoked(kdh_cert)) {
      return absl::FailedPreconditionError(absl::StrCat("KDH certificate ", kdh_cert.SubjectDn(),
                                                        " serial ", kdh_cert.SerialHex(),
                                                        " is revoked by its CA's CRL"));
    }
    return absl::OkStatus();
  }
  return absl::FailedPreconditionError(
      absl::StrCat("no current CRL signed by the KDH CA ", ca_kdh.SubjectDn()));
}

absl::StatusOr<Bytes> BuildRandomNumberToken(std::span<const uint8_t> nonce) {
  RKL_RETURN_IF_ERROR(CheckNonce(nonce));
  return internal::RandomNonceAttribute(nonce);
}

absl::StatusOr<Bytes> ParseRandomNumberToken(std::span<const uint8_t> token) {
  auto outer = der::ParseOne(token);
  if (!outer || outer->tag != der::kSequence) return Malformed("random number token");
  der::Reader r(outer->value);
  auto oid = r.NextIf(der::kOid);
  auto values = r.NextIf(der::kSet);
  if (!oid || !Same(oid->encoding, kOidRandomNonce) || !values || !r.Done()) {
    return Malformed("random number token");
  }
  RKL_ASSIGN_OR_RETURN(Bytes nonce, ExactOctets(values->value, "random number token"));
  RKL_RETURN_IF_ERROR(CheckNonce(nonce));
  return nonce;
}

absl::StatusOr<Bytes> BuildCredentialToken(std::span<const crypto::Certificate> certificates,
                                           std::span<const Bytes> crls) {
  if (certificates.empty()) {
    return absl::InvalidArgumentError("credential token: needs at least one certificate");
  }
  Bytes body = DegenerateSignedDataBody({}, certificates, crls);
  return Seq({kOidSignedData, der::Tlv(der::ContextTag(0), der::Tlv(der::kSequence, body))});
}

absl::StatusOr<CredentialToken> ParseCredentialToken(std::span<const uint8_t> token) {
  RKL_ASSIGN_OR_RETURN(CmsPtr cms, ParseContentInfo(token, NID_pkcs7_signed, "credential token"));
  STACK_OF(CMS_SignerInfo)* infos = CMS_get0_SignerInfos(cms.get());
  if (infos != nullptr && sk_CMS_SignerInfo_num(infos) != 0) {
    return absl::InvalidArgumentError("credential token: must carry no signer");
  }
  CredentialToken out;
  crypto::X509StackPtr certs(CMS_get1_certs(cms.get()));
  for (int i = 0; certs != nullptr && i < sk_X509_num(certs.get()); ++i) {
    X509* x = sk_X509_value(certs.get(), i);
    X509_up_ref(x);
    RKL_ASSIGN_OR_RETURN(crypto::Certificate cert,
                         crypto::Certificate::FromX509(crypto::X509Ptr(x)));
    out.certificates.push_back(std::move(cert));
  }
  if (out.certificates.empty()) {
    return absl::InvalidArgumentError("credential token: carries no certificate");
  }
  RKL_ASSIGN_OR_RETURN(out.crls, CrlsOf(cms.get()));
  return out;
}

absl::StatusOr<Bytes> BuildKeyToken(const KeyTokenRequest& request) {
  if (request.kdh_key == nullptr || request.tmk == nullptr) {
    return absl::InvalidArgumentError("key token: KDH key and TMK are required");
  }
  if (request.krd_nonce.has_value() == request.signing_time.has_value()) {
    return absl::InvalidArgumentError(
        "key token: exactly one of the KRD random number (two-pass) and the signing time "
        "(one-pass)");
  }
  if (request.krd_nonce.has_value()) RKL_RETURN_IF_ERROR(CheckNonce(*request.krd_nonce));
  if (!IsPrintableHeader(request.header)) {
    return absl::InvalidArgumentError("key token: key block header must be printable ASCII");
  }
  RKL_ASSIGN_OR_RETURN(ContentCipher cc, CipherForTmk(request.tmk_family, request.tmk->size()));
  // The ephemeral content-encryption key: key material, so drawn from the CSPRNG itself.
  SecretBytes cek = crypto::RandomSecret(static_cast<size_t>(EVP_CIPHER_get_key_length(cc.cipher)));
  Bytes iv = crypto::RandomBytes(static_cast<size_t>(EVP_CIPHER_get_iv_length(cc.cipher)));
  SecretBytes block = EncodeKeyBlock(request.kdh_id, *request.tmk, request.header);
  RKL_ASSIGN_OR_RETURN(Bytes ciphertext, CbcEncrypt(cc.cipher, cek, iv, block));
  RKL_ASSIGN_OR_RETURN(Bytes encrypted_key, crypto::RsaOaepEncrypt(request.krd.key, cek, {}));
  Bytes ktri = Seq({kDerVersion0, request.krd.id.der, Seq({kOidRsaesOaep, OaepSha256Params()}),
                    der::Tlv(der::kOctetString, encrypted_key)});
  Bytes content_info =
      Seq({kOidData, Seq({cc.oid, der::Tlv(der::kOctetString, iv)}), der::Tlv(0x80, ciphertext)});
  Bytes enveloped = Seq({kDerVersion0, der::SetOf({ktri}), content_info});

  std::vector<Bytes> attrs = {internal::KeyBlockHeaderAttribute(request.header)};
  if (request.krd_nonce.has_value()) {
    attrs.push_back(internal::RandomNonceAttribute(*request.krd_nonce));
  } else {
    RKL_ASSIGN_OR_RETURN(Bytes time, SigningTimeAttribute(*request.signing_time));
    attrs.push_back(std::move(time));
  }
  return internal::BuildSignedToken(kOidEnvelopedData, enveloped, std::move(attrs), request.kdh_id,
                                    *request.kdh_key, request.crls);
}

absl::StatusOr<KeyToken> ParseKeyToken(std::span<const uint8_t> token) {
  RKL_ASSIGN_OR_RETURN(SignedParts parts, ParseSigned(token, NID_pkcs7_enveloped, "key token"));
  KeyToken out;
  out.signer = std::move(parts.signer);
  out.crls = std::move(parts.crls);
  RKL_ASSIGN_OR_RETURN(out.krd_nonce, SignedNonce(parts.signer_info));
  RKL_ASSIGN_OR_RETURN(out.signing_time, SignedTime(parts.signer_info));
  RKL_ASSIGN_OR_RETURN(auto header, SignedOctets(parts.signer_info, OBJ_nid2obj(NID_pkcs7_data),
                                                 "key block header attribute"));
  if (!header.has_value()) {
    return absl::InvalidArgumentError("key token: no signed key block header");
  }
  out.header.assign(header->begin(), header->end());
  if (!IsPrintableHeader(out.header)) return Malformed("key block header attribute");
  out.enveloped_data = std::move(parts.econtent);
  return out;
}

absl::Status VerifySignedToken(std::span<const uint8_t> token, const PeerKey& signer) {
  RKL_ASSIGN_OR_RETURN(CmsPtr cms, ParseContentInfo(token, NID_pkcs7_signed, "signed token"));
  int nid = OBJ_obj2nid(CMS_get0_eContentType(cms.get()));
  RKL_ASSIGN_OR_RETURN(SignedParts parts, ParseSigned(token, nid, "signed token"));
  return VerifyParts(parts, signer);
}

absl::StatusOr<KeyBlock> DecryptKeyBlock(std::span<const uint8_t> enveloped_data,
                                         const CertId& own_id, const crypto::PrivateKey& own_key) {
  RKL_ASSIGN_OR_RETURN(EnvelopedParts parts, ParseEnveloped(enveloped_data));
  if (!(parts.recipient == own_id)) {
    return absl::PermissionDeniedError("TR-34 key token: addressed to another KRD");
  }
  if (!IsOaepSha256(parts.key_encryption_params)) {
    return absl::InvalidArgumentError(
        "TR-34 key token: RSAES-OAEP must use SHA-256, MGF1-SHA-256 and the empty label");
  }
  auto cek = crypto::RsaOaepDecrypt(own_key, parts.encrypted_key, {});
  if (!cek.ok()) return DecryptionFailure();
  return DecryptContent(parts, *cek);
}

absl::StatusOr<KeyBlock> ReceiveTwoPassKeyToken(std::span<const uint8_t> token, const PeerKey& kdh,
                                                std::span<const uint8_t> own_nonce,
                                                const CertId& own_id,
                                                const crypto::PrivateKey& own_key) {
  RKL_RETURN_IF_ERROR(VerifySignedToken(token, kdh));
  RKL_ASSIGN_OR_RETURN(KeyToken parsed, ParseKeyToken(token));
  // Constant time is not needed (the nonce is public) but costs nothing.
  if (!parsed.krd_nonce.has_value() || parsed.krd_nonce->size() != own_nonce.size() ||
      CRYPTO_memcmp(parsed.krd_nonce->data(), own_nonce.data(), own_nonce.size()) != 0) {
    return absl::UnauthenticatedError(
        "TR-34 key token: random number is not the one this KRD issued (replay or wrong token)");
  }
  return Accept(parsed, own_id, own_key);
}

absl::StatusOr<KeyBlock> ReceiveOnePassKeyToken(std::span<const uint8_t> token, const PeerKey& kdh,
                                                int64_t now, int64_t max_age, int64_t max_skew,
                                                const CertId& own_id,
                                                const crypto::PrivateKey& own_key) {
  RKL_RETURN_IF_ERROR(VerifySignedToken(token, kdh));
  RKL_ASSIGN_OR_RETURN(KeyToken parsed, ParseKeyToken(token));
  if (!parsed.signing_time.has_value()) {
    return absl::InvalidArgumentError("TR-34 key token: one-pass token without a signing time");
  }
  if (*parsed.signing_time < now - max_age || *parsed.signing_time > now + max_skew) {
    return absl::UnauthenticatedError(
        "TR-34 key token: signing time outside the accepted window (replay or clock skew)");
  }
  return Accept(parsed, own_id, own_key);
}

absl::StatusOr<UnbindToken> ParseKdhUnbindToken(std::span<const uint8_t> token) {
  RKL_ASSIGN_OR_RETURN(SignedParts parts, ParseSigned(token, NID_pkcs7_data, "unbind token"));
  UnbindToken out;
  auto krd = der::ParseOne(parts.econtent);
  if (!krd || krd->tag != der::kSequence) return Malformed("unbind token KRD identifier");
  out.krd_id = CertId{parts.econtent};
  out.signer = std::move(parts.signer);
  out.crls = std::move(parts.crls);
  RKL_ASSIGN_OR_RETURN(out.krd_nonce, SignedNonce(parts.signer_info));
  return out;
}

absl::StatusOr<Bytes> BuildKdhUnbindToken(const CertId& kdh_id, const crypto::PrivateKey& kdh_key,
                                          const CertId& krd_id, std::span<const uint8_t> krd_nonce,
                                          std::span<const Bytes> crls) {
  RKL_RETURN_IF_ERROR(CheckNonce(krd_nonce));
  return internal::BuildSignedToken(
      kOidData, krd_id.der, {internal::RandomNonceAttribute(krd_nonce)}, kdh_id, kdh_key, crls);
}

}  // namespace rkl::tr34

namespace rkl::tr34 {

absl::StatusOr<CaUnbindToken> ParseCaUnbindToken(std::span<const uint8_t> token) {
  RKL_ASSIGN_OR_RETURN(SignedParts parts, ParseSigned(token, NID_pkcs7_data, "CA unbind token"));
  // The KRD and KDH identifiers, each an IssuerAndSerialNumber: bare one after the other as
  // Annex B's B.13 has them, or inside one SEQUENCE.
  std::span<const uint8_t> ids = parts.econtent;
  if (auto outer = der::ParseOne(ids); outer && outer->tag == der::kSequence) {
    der::Reader probe(outer->value);
    auto first = probe.NextIf(der::kSequence);
    if (first && first->value.size() > 0 && first->value[0] == der::kSequence) ids = outer->value;
  }
  der::Reader r(ids);
  auto krd = r.NextIf(der::kSequence);
  auto kdh = r.NextIf(der::kSequence);
  if (!krd || !kdh || !r.Done()) return Malformed("CA unbind token identifiers");
  CaUnbindToken out;
  out.signer = std::move(parts.signer);
  out.krd_id = CertId{Bytes(krd->encoding.begin(), krd->encoding.end())};
  out.kdh_id = CertId{Bytes(kdh->encoding.begin(), kdh->encoding.end())};
  return out;
}

absl::StatusOr<Bytes> BuildCaUnbindToken(const CertId& ca_krd_id,
                                         const crypto::PrivateKey& ca_krd_key, const CertId& krd_id,
                                         const CertId& kdh_id) {
  // As B.13: the two identifiers without an enclosing SEQUENCE, signed without attributes.
  return internal::BuildSignedTokenWithoutAttributes(der::Concat({krd_id.der, kdh_id.der}),
                                                     ca_krd_id, ca_krd_key);
}

}  // namespace rkl::tr34

namespace rkl::tr34 {

absl::StatusOr<RebindToken> ParseRebindToken(std::span<const uint8_t> token) {
  RKL_ASSIGN_OR_RETURN(SignedParts parts, ParseSigned(token, NID_pkcs7_signed, "rebind token"));
  // The inner degenerate SignedData: Annex B's B.10 and B.11 carry its fields without the
  // SEQUENCE header; a full SignedData is accepted too.
  Bytes inner = parts.econtent;
  if (auto whole = der::ParseOne(inner); !whole || whole->tag != der::kSequence ||
                                         whole->value.empty() || whole->value[0] != der::kInteger) {
    inner = der::Tlv(der::kSequence, parts.econtent);
  }
  Bytes content_info = Seq({kOidSignedData, der::Tlv(der::ContextTag(0), inner)});
  RKL_ASSIGN_OR_RETURN(CredentialToken credential, ParseCredentialToken(content_info));
  if (credential.certificates.size() != 1) {
    return absl::InvalidArgumentError("rebind token: must carry exactly one new KDH certificate");
  }
  RKL_ASSIGN_OR_RETURN(CmsPtr cms,
                       ParseContentInfo(content_info, NID_pkcs7_signed, "rebind token"));
  ASN1_OCTET_STRING** content = CMS_get0_content(cms.get());
  if (content == nullptr || *content == nullptr) return Malformed("rebind token identifiers");
  std::span<const uint8_t> ids(ASN1_STRING_get0_data(*content),
                               static_cast<size_t>(ASN1_STRING_length(*content)));
  der::Reader r(ids);
  auto krd = r.NextIf(der::kSequence);
  auto old_kdh = r.NextIf(der::kSequence);  // present in the CA's rebind token only
  if (!krd || !r.Done()) return Malformed("rebind token identifiers");
  RebindToken out{.signer = std::move(parts.signer),
                  .krd_id = CertId{Bytes(krd->encoding.begin(), krd->encoding.end())},
                  .old_kdh_id = std::nullopt,
                  .new_kdh = std::move(credential.certificates[0]),
                  .krd_nonce = std::nullopt,
                  .signing_time = std::nullopt,
                  .crls = std::move(parts.crls)};
  if (old_kdh) out.old_kdh_id = CertId{Bytes(old_kdh->encoding.begin(), old_kdh->encoding.end())};
  RKL_ASSIGN_OR_RETURN(out.krd_nonce, SignedNonce(parts.signer_info));
  RKL_ASSIGN_OR_RETURN(out.signing_time, SignedTime(parts.signer_info));
  return out;
}

absl::StatusOr<Bytes> BuildKdhRebindToken(const CertId& kdh_id, const crypto::PrivateKey& kdh_key,
                                          const CertId& krd_id, const crypto::Certificate& new_kdh,
                                          std::span<const uint8_t> krd_nonce,
                                          std::span<const Bytes> crls) {
  RKL_RETURN_IF_ERROR(CheckNonce(krd_nonce));
  Bytes inner = DegenerateSignedDataBody(krd_id.der, {&new_kdh, 1}, {});
  return internal::BuildSignedToken(
      kOidSignedData, inner, {internal::RandomNonceAttribute(krd_nonce)}, kdh_id, kdh_key, crls);
}

absl::StatusOr<Bytes> BuildCaRebindToken(const CertId& ca_krd_id,
                                         const crypto::PrivateKey& ca_krd_key, const CertId& krd_id,
                                         const CertId& old_kdh_id,
                                         const crypto::Certificate& new_kdh, int64_t signing_time) {
  Bytes inner =
      DegenerateSignedDataBody(der::Concat({krd_id.der, old_kdh_id.der}), {&new_kdh, 1}, {});
  RKL_ASSIGN_OR_RETURN(Bytes time, SigningTimeAttribute(signing_time));
  return internal::BuildSignedToken(kOidSignedData, inner, {std::move(time)}, ca_krd_id, ca_krd_key,
                                    {});
}

}  // namespace rkl::tr34
