#include "operator_terminal.h"

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "rkl/common/status_macros.h"
#include "rkl/crypto/ecdsa.h"
#include "rkl/crypto/pkcs12.h"
#include "rkl/protocol/proto_enums.h"
#include "rkl/v1/mtms.pb.h"

namespace rkl::pos {

absl::StatusOr<OperatorCard> OperatorCard::Open(const Bytes& pkcs12,
                                                const crypto::SecretBytes& pin) {
  auto contents = crypto::ReadPkcs12(pkcs12, pin);
  if (!contents.ok()) {
    return absl::Status(contents.status().code(),
                        absl::StrCat("operator_card: ", contents.status().message()));
  }
  if (contents->private_key.Type() != crypto::KeyType::kEcP256) {
    return absl::InvalidArgumentError("operator_card: the key must be ECDSA P-256");
  }
  std::string cn = contents->certificate.SubjectCommonName();
  if (!absl::StartsWith(cn, std::string(kOperatorCnPrefix)) ||
      cn.size() == kOperatorCnPrefix.size()) {
    return absl::InvalidArgumentError("operator_card: certificate CN must be \"operator:<id>\"");
  }
  std::string id = cn.substr(kOperatorCnPrefix.size());
  return OperatorCard(std::move(contents->private_key), std::move(contents->certificate),
                      std::move(id));
}

absl::StatusOr<Bytes> OperatorCard::Sign(const Bytes& message) const {
  return crypto::EcdsaSign(key_, message);
}

absl::StatusOr<SignedPackage> BuildSignedPackage(const TransportKeyOffer& offer,
                                                 const OperatorCard& card, int64_t now_unix_ms,
                                                 const crypto::RandomSource& random) {
  if (offer.ctk_pu.empty()) {
    return absl::InvalidArgumentError("ctk_pu: must not be empty");
  }
  rkl::v1::TransportKeyPackage package;
  package.set_sn(offer.sn);
  package.set_ctk_pu(std::string(offer.ctk_pu.begin(), offer.ctk_pu.end()));
  package.set_work_certificate_serial(offer.work_certificate_serial);
  package.set_algorithm(protocol::ToProto(offer.algorithm));
  package.set_created_at_unix_ms(now_unix_ms);
  Bytes nonce(kPackageNonceSize);
  random(nonce);
  package.set_nonce(std::string(nonce.begin(), nonce.end()));
  package.set_operator_id(card.operator_id());

  std::string serialized;
  if (!package.SerializeToString(&serialized)) {
    return absl::InternalError("package: cannot serialize");
  }
  SignedPackage out;
  out.package.assign(serialized.begin(), serialized.end());
  RKL_ASSIGN_OR_RETURN(out.signature, card.Sign(out.package));
  return out;
}

absl::StatusOr<WorkCertificateBundle> OperatorTerminal::FetchWorkCertificate() {
  return mtms_.GetWorkCertificate();
}

absl::StatusOr<SubmissionReceipt> OperatorTerminal::Submit(const TransportKeyOffer& offer) {
  if (card_ == nullptr) {
    return absl::FailedPreconditionError(
        "operator_card: an operator card is needed to sign the package");
  }
  RKL_ASSIGN_OR_RETURN(SignedPackage signed_package,
                       BuildSignedPackage(offer, *card_, absl::ToUnixMillis(clock_()), random_));
  return mtms_.SubmitTransportKey(signed_package.package, signed_package.signature,
                                  card_->certificate_pem());
}

absl::StatusOr<SubmissionView> OperatorTerminal::QuerySubmission(const std::string& submission_id) {
  if (card_ == nullptr) {
    return absl::FailedPreconditionError(
        "operator_card: an operator card is needed to sign the query");
  }
  rkl::v1::SubmissionQuery query;
  query.set_submission_id(submission_id);
  query.set_operator_id(card_->operator_id());
  query.set_created_at_unix_ms(absl::ToUnixMillis(clock_()));
  const std::string serialized = query.SerializeAsString();
  const std::string to_sign = absl::StrCat("RKL-SUBMISSION-QUERY:", serialized);
  RKL_ASSIGN_OR_RETURN(Bytes signature, card_->Sign(Bytes(to_sign.begin(), to_sign.end())));
  return mtms_.GetOwnSubmission(Bytes(serialized.begin(), serialized.end()), signature,
                                card_->certificate_pem());
}

}  // namespace rkl::pos
