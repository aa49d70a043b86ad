// The cases of the MtmsCore + Forwarder conformance suite (mtms_suite.h).

#include "mtms_suite.h"

#include "mtms_metrics.h"
#include "rkl/metrics/metrics.h"

namespace rkl::mtms::testing {
namespace {

// ---------------------------------------------------------------- intake

TEST_P(MtmsSuite, ValidPackageIsStoredByteExact) {
  SubmitRequest req = MakeSubmission({.sn = "SN-STORE-1"}, *alice_, work_, clock_);
  auto receipt = core_->SubmitTransportKey(req, "");
  ASSERT_TRUE(receipt.ok()) << receipt.status();
  EXPECT_EQ(receipt->state, SubmissionState::kReceived);
  SubmissionRecord row = Row(receipt->submission_id);
  EXPECT_EQ(row.sn, "SN-STORE-1");
  EXPECT_EQ(row.operator_id, "alice");
  EXPECT_EQ(std::string(AsString(row.package)), req.package);
  EXPECT_EQ(std::string(AsString(row.signature)), req.signature);
  EXPECT_EQ(row.operator_certificate_pem, req.operator_certificate_pem);
  EXPECT_EQ(row.operator_certificate_serial, alice_->certificate.SerialHex());
  EXPECT_EQ(row.work_certificate_serial, work_.serial_hex);
  EXPECT_EQ(row.state, SubmissionState::kReceived);
  EXPECT_EQ(row.received_at_ms, clock_.NowUnixMs());
  EXPECT_EQ(row.attempts, 0u);
  v1::TransportKeyPackage p;
  ASSERT_TRUE(p.ParseFromString(req.package));
  EXPECT_EQ(std::string(AsString(row.ctk_pu)), p.ctk_pu());
}

TEST_P(MtmsSuite, ValidPackageIsForwardedAndOpensUnderPkMak) {
  for (crypto::KeyAlgorithm alg : {crypto::KeyAlgorithm::kAes128, crypto::KeyAlgorithm::kAes256,
                                   crypto::KeyAlgorithm::kTdes2}) {
    const std::string sn = absl::StrCat("SN-FWD-", crypto::KeyAlgorithmCode(alg));
    auto receipt = Submit({.sn = sn, .algorithm = alg});
    ASSERT_TRUE(receipt.ok()) << receipt.status();
    PassResult pass = Pass();
    EXPECT_EQ(pass.forwarded, 1u);
    SubmissionRecord row = Row(receipt->submission_id);
    EXPECT_EQ(row.state, SubmissionState::kForwarded);
    EXPECT_EQ(row.forwarded_at_ms, clock_.NowUnixMs());
    EXPECT_EQ(row.attempts, 1u);
    std::optional<Bytes> ctk_pk = kms_.Get(sn);
    ASSERT_TRUE(ctk_pk.has_value());
    auto opened = hsm_.OpenedAlgorithmName(*ctk_pk);
    ASSERT_TRUE(opened.ok()) << opened.status();
    EXPECT_EQ(*opened, std::string(crypto::KeyAlgorithmName(alg)));
  }
  EXPECT_EQ(kms_.calls(), 3);
  // Nothing is left to do: another pass sends nothing.
  EXPECT_EQ(Pass().forwarded, 0u);
  EXPECT_EQ(kms_.calls(), 3);
}

TEST_P(MtmsSuite, ReplayedPackageIsAlreadyExists) {
  SubmitRequest req = MakeSubmission({}, *alice_, work_, clock_);
  ASSERT_TRUE(core_->SubmitTransportKey(req, "").ok());
  auto again = core_->SubmitTransportKey(req, "");
  EXPECT_EQ(again.status().code(), absl::StatusCode::kAlreadyExists) << again.status();
  // The same nonce in a different (validly signed) package is a replay too...
  Bytes nonce = crypto::RandomBytes(16);
  ASSERT_TRUE(Submit({.sn = "SN-N1", .nonce = nonce}).ok());
  auto same_nonce = Submit({.sn = "SN-N2", .nonce = nonce});
  EXPECT_EQ(same_nonce.status().code(), absl::StatusCode::kAlreadyExists);
  // ...but only per operator: bob may use the same nonce.
  OperatorCard bob = authority_->IssueOperator("bob");
  EXPECT_TRUE(Submit({.sn = "SN-N3", .nonce = nonce}, &bob).ok());
}

TEST_P(MtmsSuite, ReplayIsDetectedByAnotherReplicaOrAfterRestart) {
  SubmitRequest req = MakeSubmission({}, *alice_, work_, clock_);
  ASSERT_TRUE(core_->SubmitTransportKey(req, "").ok());
  core_.reset();  // "restart"
  auto restarted = MakeCore(backend_->Replica(1));
  auto again = restarted->SubmitTransportKey(req, "");
  EXPECT_EQ(again.status().code(), absl::StatusCode::kAlreadyExists) << again.status();
}

TEST_P(MtmsSuite, CreatedAtOutsideFiveMinutesIsRefusedBothWays) {
  const int64_t now = clock_.NowUnixMs();
  for (int64_t offset :
       {-10 * 60 * 1000, 10 * 60 * 1000, -(5 * 60 * 1000 + 1), 5 * 60 * 1000 + 1}) {
    auto r = Submit({.created_at_ms = now + offset});
    EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition) << offset;
    EXPECT_THAT(r.status().message(), HasSubstr("created_at_unix_ms"));
  }
  for (int64_t offset : {-5 * 60 * 1000, 5 * 60 * 1000, -299000, 0}) {
    EXPECT_TRUE(Submit({.created_at_ms = now + offset}).ok()) << offset;
  }
}

TEST_P(MtmsSuite, SignatureOverModifiedPackageIsUnauthenticated) {
  v1::TransportKeyPackage p = MakePackage({.sn = "SN-ORIG"}, *alice_, work_, clock_);
  SubmitRequest req = SignPackage(p.SerializeAsString(), *alice_);
  p.set_sn("SN-EVIL");
  req.package = p.SerializeAsString();
  auto r = core_->SubmitTransportKey(req, "");
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnauthenticated) << r.status();
  EXPECT_THAT(r.status().message(), HasSubstr("signature"));
  // Signed by another operator's card but presented with alice's certificate.
  OperatorCard bob = authority_->IssueOperator("bob");
  SubmitRequest forged =
      SignPackage(MakePackage({}, *alice_, work_, clock_).SerializeAsString(), bob);
  forged.operator_certificate_pem = alice_->certificate.ToPem();
  EXPECT_EQ(core_->SubmitTransportKey(forged, "").status().code(),
            absl::StatusCode::kUnauthenticated);
  // A signature that is not DER at all is malformed input.
  SubmitRequest garbled = MakeSubmission({}, *alice_, work_, clock_);
  garbled.signature = "not a DER signature";
  EXPECT_EQ(core_->SubmitTransportKey(garbled, "").status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_P(MtmsSuite, RevokedOperatorIsRefused) {
  OperatorCard carol = authority_->IssueOperator("carol");
  ASSERT_TRUE(Submit({}, &carol).ok());
  authority_->Revoke(carol.certificate);
  ASSERT_TRUE(trust_->Refresh().ok());
  auto r = Submit({}, &carol);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition) << r.status();
  EXPECT_THAT(r.status().message(), HasSubstr("revoked"));
  EXPECT_TRUE(Submit({}).ok());  // others are unaffected
}

TEST_P(MtmsSuite, RevocationIsNoticedOnTheNextScheduledRefresh) {
  OperatorCard carol = authority_->IssueOperator("carol");
  ASSERT_TRUE(Submit({}, &carol).ok());
  authority_->Revoke(carol.certificate);
  clock_.Advance(absl::Minutes(5));  // the CRL cache is now due for refresh
  EXPECT_EQ(Submit({}, &carol).status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST_P(MtmsSuite, OperatorCertificateFromAnotherCaIsUnauthenticated) {
  OperatorCard mallory = authority_->IssueForeignOperator("alice");
  auto r = Submit({}, &mallory);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnauthenticated) << r.status();
  EXPECT_THAT(r.status().message(), HasSubstr("operator-ca"));
}

TEST_P(MtmsSuite, ExpiredOperatorCertificateIsFailedPrecondition) {
  OperatorCard dave = authority_->IssueOperator("dave", absl::Minutes(30));
  ASSERT_TRUE(Submit({}, &dave).ok());
  clock_.Advance(absl::Minutes(31));
  auto r = Submit({}, &dave);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition) << r.status();
}

TEST_P(MtmsSuite, OperatorIdOtherThanTheCertificatesIsPermissionDenied) {
  auto r = Submit({.operator_id = "bob"});
  EXPECT_EQ(r.status().code(), absl::StatusCode::kPermissionDenied) << r.status();
  EXPECT_THAT(r.status().message(), HasSubstr("operator_id"));
}

TEST_P(MtmsSuite, UnknownOrRetiredWorkCertificateIsFailedPrecondition) {
  auto unknown = Submit({.work_serial = "0123456789ABCDEF"});
  EXPECT_EQ(unknown.status().code(), absl::StatusCode::kFailedPrecondition) << unknown.status();
  EXPECT_THAT(unknown.status().message(), HasSubstr("work_certificate_serial"));

  // Rotate: the previous key stays accepted until retired.
  WorkCertificateBundle old_work = work_;
  auto rotated = core_->ProvisionWorkKey(true, 0, "admin:test");
  ASSERT_TRUE(rotated.ok()) << rotated.status();
  EXPECT_NE(rotated->serial_hex, old_work.serial_hex);
  EXPECT_TRUE(Submit({.sn = "SN-PREV"}).ok());  // work_ is still the old one
  EXPECT_TRUE(Pass().forwarded == 1);
  auto retired = core_->RetireWorkKey(old_work.serial_hex, false, "admin:test");
  ASSERT_TRUE(retired.ok()) << retired.status();
  EXPECT_EQ(retired->state, WorkKeyState::kRetired);
  auto r = Submit({.sn = "SN-OLD"});
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition) << r.status();
  EXPECT_THAT(r.status().message(), HasSubstr("retired"));
  work_ = *core_->GetWorkCertificate();
  EXPECT_EQ(work_.serial_hex, rotated->serial_hex);
  EXPECT_TRUE(Submit({.sn = "SN-NEW"}).ok());
}

TEST_P(MtmsSuite, MalformedInputIsInvalidArgument) {
  auto code = [&](SubmitRequest req) { return core_->SubmitTransportKey(req, "").status().code(); };
  const SubmitRequest good = MakeSubmission({}, *alice_, work_, clock_);
  SubmitRequest r = good;
  r.package = "\xff\xff\xff garbage";
  EXPECT_EQ(code(r), absl::StatusCode::kInvalidArgument);
  r = good;
  r.package = std::string(kMaxPackageBytes + 1, 'x');
  EXPECT_EQ(code(r), absl::StatusCode::kInvalidArgument);
  r = good;
  r.operator_certificate_pem = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
  EXPECT_EQ(code(r), absl::StatusCode::kInvalidArgument);
  r = good;
  r.signature.clear();
  EXPECT_EQ(code(r), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Submit({.nonce = Bytes(15, 7)}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Submit({.nonce = Bytes(17, 7)}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Submit({.sn = "sn-lower"}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Submit({.sn = std::string(33, 'A')}).status().code(),
            absl::StatusCode::kInvalidArgument);
  // An unknown field is signed but would be ignored: refused.
  v1::TransportKeyPackage p = MakePackage({}, *alice_, work_, clock_);
  std::string with_unknown = p.SerializeAsString() + std::string("\xa0\x06\x01", 3);
  EXPECT_EQ(code(SignPackage(with_unknown, *alice_)), absl::StatusCode::kInvalidArgument);
  // Wrong Ctk_Pu length and unknown algorithm.
  p.set_ctk_pu("short");
  EXPECT_EQ(code(SignPackage(p.SerializeAsString(), *alice_)), absl::StatusCode::kInvalidArgument);
  p = MakePackage({}, *alice_, work_, clock_);
  p.set_algorithm(static_cast<v1::KeyAlgorithm>(0x12));
  EXPECT_EQ(code(SignPackage(p.SerializeAsString(), *alice_)), absl::StatusCode::kInvalidArgument);
  // And none of these was stored.
  auto counts = backend_->Replica(0).CountSubmissions();
  ASSERT_TRUE(counts.ok());
  EXPECT_EQ(counts->received, 0u);
}

TEST_P(MtmsSuite, IntakeIsUnavailableUntilACrlWasFetched) {
  ca_->available = false;
  OperatorTrust fresh(*ca_, clock_, absl::Minutes(5));
  MtmsCore core(backend_->Replica(0), hsm_, *ca_, fresh, clock_, {});
  auto r = core.SubmitTransportKey(MakeSubmission({}, *alice_, work_, clock_), "");
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable) << r.status();
  ca_->available = true;
  clock_.Advance(absl::Seconds(6));  // past the refresh retry pause
  EXPECT_TRUE(core.SubmitTransportKey(MakeSubmission({}, *alice_, work_, clock_), "").ok());
}

TEST_P(MtmsSuite, StaleCrlIsUsedOnlyUntilItsNextUpdate) {
  ASSERT_TRUE(trust_->Refresh().ok());  // next update in 1 h
  ca_->available = false;
  clock_.Advance(absl::Minutes(30));  // refresh due, CA down: stale CRL still current
  EXPECT_TRUE(Submit({}).ok());
  clock_.Advance(absl::Minutes(31));  // past nextUpdate
  auto r = Submit({});
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable) << r.status();
  EXPECT_THAT(r.status().message(), HasSubstr("CRL"));
  ca_->available = true;
  clock_.Advance(absl::Seconds(6));
  EXPECT_TRUE(Submit({}).ok());
}

// ---------------------------------------------------------------- work keys

TEST_P(MtmsSuite, WorkKeyIsProvisionedOnceAndReusedUntilRotated) {
  auto again = core_->ProvisionWorkKey(false, 0, "admin:test");
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->serial_hex, work_.serial_hex);
  auto keys = core_->ListWorkKeys();
  ASSERT_TRUE(keys.ok());
  ASSERT_EQ(keys->size(), 1u);
  auto cert = crypto::Certificate::FromPem(work_.certificate_pem);
  ASSERT_TRUE(cert.ok());
  EXPECT_EQ(cert->SubjectCommonName(),
            absl::StrCat("hsm-work:hsm-mtms:", (*keys)[0].hsm_key_index));
  EXPECT_EQ(work_.terminal_root_pem, authority_->terminal_root().ToPem());

  auto rotated = core_->ProvisionWorkKey(true, 0, "admin:test");
  ASSERT_TRUE(rotated.ok());
  keys = core_->ListWorkKeys();
  ASSERT_TRUE(keys.ok());
  ASSERT_EQ(keys->size(), 2u);
  int current = 0, previous = 0;
  for (const auto& k : *keys) {
    current += k.state == WorkKeyState::kCurrent;
    previous += k.state == WorkKeyState::kPrevious;
  }
  EXPECT_EQ(current, 1);
  EXPECT_EQ(previous, 1);
  EXPECT_EQ(core_->GetWorkCertificate()->serial_hex, rotated->serial_hex);

  EXPECT_EQ(core_->RetireWorkKey(rotated->serial_hex, false, "admin:test").status().code(),
            absl::StatusCode::kFailedPrecondition);  // CURRENT
  EXPECT_EQ(core_->RetireWorkKey("ABCDEF", false, "admin:test").status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(core_->ProvisionWorkKey(false, 1024, "admin:test").status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_P(MtmsSuite, RetireIsRefusedWhilePackagesAreInFlightUnlessForced) {
  kms_.SetAnswer(absl::UnavailableError("kms down"));
  auto receipt = Submit({.sn = "SN-INFLIGHT"});
  ASSERT_TRUE(receipt.ok());
  ASSERT_TRUE(core_->ProvisionWorkKey(true, 0, "admin:test").ok());
  auto refused = core_->RetireWorkKey(work_.serial_hex, false, "admin:test");
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition) << refused.status();
  EXPECT_THAT(refused.status().message(), HasSubstr("1 queued"));
  ASSERT_TRUE(core_->RetireWorkKey(work_.serial_hex, true, "admin:test").ok());
  kms_.SetAnswer(absl::OkStatus());
  PassResult pass = Pass();
  EXPECT_EQ(pass.rejected, 1u);
  SubmissionRecord row = Row(receipt->submission_id);
  EXPECT_EQ(row.state, SubmissionState::kRejected);
  EXPECT_THAT(row.reason, HasSubstr("retired"));
  EXPECT_EQ(kms_.calls(), 0);
}

// ---------------------------------------------------------------- forwarder

TEST_P(MtmsSuite, KmsDownKeepsRowsReceivedAndRetriesWithBackoff) {
  kms_.SetAnswer(absl::UnavailableError("kms unavailable: connection refused"));
  auto receipt = Submit({.sn = "SN-RETRY"});
  ASSERT_TRUE(receipt.ok());
  PassResult pass = Pass();
  EXPECT_EQ(pass.retry_later, 1u);
  SubmissionRecord row = Row(receipt->submission_id);
  EXPECT_EQ(row.state, SubmissionState::kReceived);
  EXPECT_EQ(row.attempts, 1u);
  EXPECT_THAT(row.last_error, HasSubstr("UNAVAILABLE"));
  EXPECT_EQ(row.next_attempt_at_ms, clock_.NowUnixMs() + 1000);
  // Not due yet: nothing happens.
  EXPECT_EQ(Pass().retry_later, 0u);
  EXPECT_EQ(kms_.calls(), 1);
  // Backoff doubles: 1 s, 2 s, 4 s, then the 8 s cap.
  for (int64_t expected_wait : {2000, 4000, 8000, 8000}) {
    clock_.Set(Row(receipt->submission_id).next_attempt_at_ms);
    EXPECT_EQ(Pass().retry_later, 1u);
    EXPECT_EQ(Row(receipt->submission_id).next_attempt_at_ms, clock_.NowUnixMs() + expected_wait);
  }
  EXPECT_EQ(Row(receipt->submission_id).attempts, 5u);
  // KMS back: forwarded exactly once.
  kms_.SetAnswer(absl::OkStatus());
  clock_.Set(Row(receipt->submission_id).next_attempt_at_ms);
  EXPECT_EQ(Pass().forwarded, 1u);
  row = Row(receipt->submission_id);
  EXPECT_EQ(row.state, SubmissionState::kForwarded);
  EXPECT_EQ(row.attempts, 6u);
  EXPECT_EQ(kms_.stored(), 1);
  EXPECT_EQ(kms_.duplicates(), 0);
}

TEST_P(MtmsSuite, ForceForwardIgnoresBackoff) {
  kms_.SetAnswer(absl::UnavailableError("down"));
  auto receipt = Submit({});
  ASSERT_TRUE(receipt.ok());
  EXPECT_EQ(Pass().retry_later, 1u);
  kms_.SetAnswer(absl::OkStatus());
  EXPECT_EQ(Pass().forwarded, 0u);  // still backing off
  auto forced = forwarder_->ForceForward();
  ASSERT_TRUE(forced.ok());
  EXPECT_EQ(forced->forwarded, 1u);
  EXPECT_EQ(Row(receipt->submission_id).state, SubmissionState::kForwarded);
}

TEST_P(MtmsSuite, KmsRejectionIsRecordedAndNotRetried) {
  kms_.SetAnswer(absl::FailedPreconditionError("sn: TMK already installed"));
  auto receipt = Submit({.sn = "SN-INSTALLED"});
  ASSERT_TRUE(receipt.ok());
  EXPECT_EQ(Pass().rejected, 1u);
  SubmissionRecord row = Row(receipt->submission_id);
  EXPECT_EQ(row.state, SubmissionState::kRejected);
  EXPECT_THAT(row.reason, HasSubstr("kms: FAILED_PRECONDITION"));
  kms_.SetAnswer(absl::OkStatus());
  clock_.Advance(absl::Hours(1));
  EXPECT_EQ(Pass().forwarded, 0u);
  ASSERT_TRUE(forwarder_->ForceForward().ok());
  EXPECT_EQ(kms_.calls(), 1);
  EXPECT_EQ(Row(receipt->submission_id).state, SubmissionState::kRejected);
}

TEST_P(MtmsSuite, OlderPackageInBackoffIsSupersededByANewerOneAndNeverSent) {
  // Package A waits in backoff (KMS was down); the operator sends a newer package B for the
  // same SN, which goes out at once. A must never reach KMS after B.
  kms_.SetAnswer(absl::UnavailableError("kms down"));
  auto older = Submit({.sn = "SN-ORDER"});
  ASSERT_TRUE(older.ok()) << older.status();
  EXPECT_EQ(Pass().retry_later, 1u);
  kms_.SetAnswer(absl::OkStatus());
  clock_.Advance(absl::Milliseconds(500));  // A is due only after 1 s
  auto newer = Submit({.sn = "SN-ORDER"});
  ASSERT_TRUE(newer.ok()) << newer.status();
  EXPECT_EQ(Pass().forwarded, 1u);
  ASSERT_EQ(Row(newer->submission_id).state, SubmissionState::kForwarded);
  const std::optional<Bytes> at_kms = kms_.Get("SN-ORDER");
  ASSERT_TRUE(at_kms.has_value());
  const int kms_calls = kms_.calls();

  auto forced = forwarder_->ForceForward();  // A is due now
  ASSERT_TRUE(forced.ok()) << forced.status();
  EXPECT_EQ(forced->rejected, 1u);
  EXPECT_EQ(forced->forwarded, 0u);
  SubmissionRecord row = Row(older->submission_id);
  EXPECT_EQ(row.state, SubmissionState::kRejected);
  EXPECT_THAT(row.reason, HasSubstr("superseded"));
  EXPECT_EQ(kms_.calls(), kms_calls);       // never sent
  EXPECT_EQ(kms_.Get("SN-ORDER"), at_kms);  // KMS keeps B
  // Final: later passes leave it alone.
  clock_.Advance(absl::Hours(1));
  ASSERT_TRUE(forwarder_->ForceForward().ok());
  EXPECT_EQ(kms_.calls(), kms_calls);
}

TEST_P(MtmsSuite, APendingNewerPackageSupersedesAnOlderOneButNotTheOtherWayRound) {
  // Both are pending while KMS is down: the older one is superseded at its first attempt
  // (the newer one waits too), and only the newer one is ever sent. A package of another SN
  // is not affected, and the newer one is not superseded by the older.
  kms_.SetAnswer(absl::UnavailableError("kms down"));
  auto older = Submit({.sn = "SN-BOTH"});
  clock_.Advance(absl::Milliseconds(10));
  auto newer = Submit({.sn = "SN-BOTH"});
  auto other = Submit({.sn = "SN-OTHER"});
  ASSERT_TRUE(older.ok() && newer.ok() && other.ok());
  PassResult first = Pass();
  EXPECT_EQ(first.retry_later, 2u);
  EXPECT_EQ(first.rejected, 1u);
  EXPECT_EQ(Row(older->submission_id).state, SubmissionState::kRejected);
  EXPECT_EQ(kms_.calls(), 2);  // the newer one and the other SN's
  kms_.SetAnswer(absl::OkStatus());
  auto forced = forwarder_->ForceForward();
  ASSERT_TRUE(forced.ok()) << forced.status();
  EXPECT_EQ(forced->forwarded, 2u);
  EXPECT_EQ(forced->rejected, 0u);
  EXPECT_EQ(Row(older->submission_id).state, SubmissionState::kRejected);
  EXPECT_EQ(Row(newer->submission_id).state, SubmissionState::kForwarded);
  EXPECT_EQ(Row(other->submission_id).state, SubmissionState::kForwarded);
}

TEST_P(MtmsSuite, CtkPuForSnASubmittedAsSnBFailsLikeAnyDecryptionFailure) {
  auto swapped = Submit({.sn = "SN-B", .ctk_pu_sn = "SN-A"});
  ASSERT_TRUE(swapped.ok()) << swapped.status();  // MTMS cannot tell; HSM #1 can
  v1::TransportKeyPackage garbage = MakePackage({.sn = "SN-C"}, *alice_, work_, clock_);
  garbage.set_ctk_pu(std::string(AsString(crypto::RandomBytes(256))));
  auto corrupted = core_->SubmitTransportKey(SignPackage(garbage.SerializeAsString(), *alice_), "");
  ASSERT_TRUE(corrupted.ok());
  auto wrong_alg = Submit({.sn = "SN-D", .algorithm = crypto::KeyAlgorithm::kAes256});
  ASSERT_TRUE(wrong_alg.ok());
  {
    // The package declares AES128 but the payload is AES256.
    v1::TransportKeyPackage p = MakePackage(
        {.sn = "SN-E", .algorithm = crypto::KeyAlgorithm::kAes256}, *alice_, work_, clock_);
    p.set_algorithm(v1::KEY_ALGORITHM_AES128);
    ASSERT_TRUE(core_->SubmitTransportKey(SignPackage(p.SerializeAsString(), *alice_), "").ok());
  }
  PassResult pass = Pass();
  EXPECT_EQ(pass.rejected, 3u);
  EXPECT_EQ(pass.forwarded, 1u);  // SN-D is fine
  const std::string reason = Row(swapped->submission_id).reason;
  EXPECT_EQ(reason, "hsm: UNAUTHENTICATED: transport key rejected");
  EXPECT_EQ(Row(corrupted->submission_id).reason, reason);
  EXPECT_FALSE(kms_.Get("SN-B").has_value());
  EXPECT_EQ(kms_.calls(), 1);
}

TEST_P(MtmsSuite, TamperedStoredPackageIsRejectedBeforeTheHsmSeesIt) {
  auto receipt = Submit({.sn = "SN-TAMPER"});
  ASSERT_TRUE(receipt.ok());
  SubmissionRecord row = Row(receipt->submission_id);
  v1::TransportKeyPackage p;
  ASSERT_TRUE(p.ParseFromString(std::string(AsString(row.package))));
  p.set_created_at_unix_ms(p.created_at_unix_ms() + 1);
  std::string tampered = p.SerializeAsString();
  backend_->OverwritePackage(receipt->submission_id, Bytes(tampered.begin(), tampered.end()));
  EXPECT_EQ(Pass().rejected, 1u);
  row = Row(receipt->submission_id);
  EXPECT_EQ(row.state, SubmissionState::kRejected);
  EXPECT_THAT(row.reason, HasSubstr("claim 4"));
  EXPECT_EQ(hsm_.translate_calls.load(), 0);
  EXPECT_EQ(kms_.calls(), 0);
}

TEST_P(MtmsSuite, HsmDownIsRetriedAndPkMakNotConfiguredWaits) {
  hsm_.available = false;
  auto receipt = Submit({});
  ASSERT_TRUE(receipt.ok());
  EXPECT_EQ(Pass().retry_later, 1u);
  EXPECT_THAT(Row(receipt->submission_id).last_error, HasSubstr("hsm"));
  hsm_.available = true;
  Forwarder unconfigured(backend_->Replica(0), hsm_, kms_, *trust_, clock_,
                         ForwarderOptions{.replica_id = "unconfigured"});
  ASSERT_TRUE(unconfigured.ForceForward().ok());
  EXPECT_EQ(Row(receipt->submission_id).state, SubmissionState::kReceived);
  EXPECT_THAT(Row(receipt->submission_id).last_error, HasSubstr("pk_index"));
  ASSERT_TRUE(forwarder_->ForceForward().ok());
  EXPECT_EQ(Row(receipt->submission_id).state, SubmissionState::kForwarded);
}

TEST_P(MtmsSuite, TwoReplicasForwardEachRowExactlyOnce) {
  constexpr int kPackages = 24;
  std::vector<std::string> ids;
  for (int i = 0; i < kPackages; ++i) {
    auto r = Submit({.sn = absl::StrCat("SN-R", i)});
    ASSERT_TRUE(r.ok()) << r.status();
    ids.push_back(r->submission_id);
  }
  auto a = MakeForwarder(backend_->Replica(1), "replica-a");
  auto b = MakeForwarder(backend_->Replica(2), "replica-b");
  PassResult ra, rb;
  std::thread ta([&] { ra = *a->RunPass(); });
  std::thread tb([&] { rb = *b->RunPass(); });
  ta.join();
  tb.join();
  EXPECT_EQ(ra.forwarded + rb.forwarded, static_cast<uint32_t>(kPackages));
  EXPECT_EQ(ra.retry_later + rb.retry_later + ra.rejected + rb.rejected, 0u);
  EXPECT_EQ(kms_.calls(), kPackages);  // no row was sent twice
  EXPECT_EQ(kms_.stored(), kPackages);
  EXPECT_EQ(kms_.duplicates(), 0);
  for (const std::string& id : ids) {
    SubmissionRecord row = Row(id);
    EXPECT_EQ(row.state, SubmissionState::kForwarded);
    EXPECT_EQ(row.attempts, 1u);
  }
}

TEST_P(MtmsSuite, ExpiredLeaseIsTakenOverAndTheStaleClaimantCannotFinish) {
  auto receipt = Submit({.sn = "SN-LEASE"});
  ASSERT_TRUE(receipt.ok());
  const int64_t claimed_at = clock_.NowUnixMs();
  auto claimed = ClaimAsCrashedReplica();
  ASSERT_TRUE(claimed.ok());
  ASSERT_EQ(claimed->size(), 1u);
  // While the lease holds, nobody else gets the row.
  EXPECT_EQ(Pass().forwarded, 0u);
  EXPECT_EQ(kms_.calls(), 0);
  clock_.Advance(absl::Seconds(61));
  EXPECT_EQ(Pass().forwarded, 1u);
  auto stale = backend_->Replica(0).FinishRejected(
      receipt->submission_id, kCrashedReplica, "late",
      AuditEntry{.at_ms = claimed_at, .actor = "x", .action = "y"});
  ASSERT_TRUE(stale.ok());
  EXPECT_FALSE(*stale);
  EXPECT_EQ(Row(receipt->submission_id).state, SubmissionState::kForwarded);
}

TEST_P(MtmsSuite, FinishingSeveralRowsAtOnceFinishesWhatEachClaimHoldsAndAuditsOnlyThose) {
  std::vector<std::string> ids;
  for (int i = 0; i < 3; ++i) {
    auto receipt = Submit({.sn = absl::StrCat("SN-FM-", i)});
    ASSERT_TRUE(receipt.ok()) << receipt.status();
    ids.push_back(receipt->submission_id);
  }
  auto claimed = ClaimAsCrashedReplica();
  ASSERT_TRUE(claimed.ok() && claimed->size() == 3u);
  const int64_t now = clock_.NowUnixMs();
  std::vector<MtmsRepository::ForwardedFinish> rows;
  for (int i = 0; i < 3; ++i) {
    rows.push_back({.submission_id = ids[i],
                    // The middle row's claim is not this caller's.
                    .claim_token = i == 1 ? std::string("another-claim") : kCrashedReplica,
                    .now_ms = now,
                    .audit = AuditEntry{.at_ms = now,
                                        .actor = "mtms",
                                        .action = rkl::audit::action::kPackageForward,
                                        .sn = absl::StrCat("SN-FM-", i),
                                        .detail = absl::StrCat("submission ", ids[i]),
                                        .result = "OK",
                                        .request_id = absl::StrCat("rid-fm-", i)}});
  }
  auto finished = backend_->Replica(0).FinishForwardedMany(rows);
  ASSERT_TRUE(finished.ok()) << finished.status();
  ASSERT_EQ(finished->size(), 3u);
  EXPECT_EQ((*finished)[0].value_or(false), true);
  EXPECT_EQ((*finished)[1].value_or(true), false);
  EXPECT_EQ((*finished)[2].value_or(false), true);
  EXPECT_EQ(Row(ids[0]).state, SubmissionState::kForwarded);
  EXPECT_EQ(Row(ids[0]).attempts, 1u);
  EXPECT_EQ(Row(ids[1]).state, SubmissionState::kReceived);
  EXPECT_EQ(Row(ids[1]).attempts, 0u);
  EXPECT_EQ(Row(ids[2]).state, SubmissionState::kForwarded);
  // Each record with its own row's request id; none for the row that did not change.
  std::map<std::string, std::string> forward_audit;  // sn -> request id
  absl::StatusOr<std::vector<AuditEntry>> audit = backend_->Replica(0).ListAudit(100);
  ASSERT_TRUE(audit.ok()) << audit.status();
  for (const AuditEntry& e : *audit) {
    if (e.action == rkl::audit::action::kPackageForward) forward_audit[e.sn] = e.request_id;
  }
  EXPECT_EQ(forward_audit,
            (std::map<std::string, std::string>{{"SN-FM-0", "rid-fm-0"}, {"SN-FM-2", "rid-fm-2"}}));
  // Finished rows are not finished twice.
  auto again = backend_->Replica(0).FinishForwardedMany(rows);
  ASSERT_TRUE(again.ok()) << again.status();
  for (const auto& r : *again) EXPECT_EQ(r.value_or(true), false);
}

TEST_P(MtmsSuite, RetryAfterKmsAcceptedButRowNotMarkedIsADuplicateAtKms) {
  // Ctk_pk is deterministic per package: a replica that crashed after KMS accepted sends
  // the same bytes again, and KMS sees a duplicate, not a second transport key.
  auto receipt = Submit({.sn = "SN-CRASH"});
  ASSERT_TRUE(receipt.ok());
  auto claimed = ClaimAsCrashedReplica();
  ASSERT_TRUE(claimed.ok() && claimed->size() == 1u);
  v1::TransportKeyPackage p;
  ASSERT_TRUE(p.ParseFromString(std::string(AsString((*claimed)[0].package))));
  auto key = backend_->Replica(0).FindWorkKey(p.work_certificate_serial());
  ASSERT_TRUE(key.ok() && key->has_value());
  auto ctk_pk = hsm_.TranslateTransportKey(
      {.pr_index = (**key).hsm_key_index,
       .ctk_pu = Bytes(p.ctk_pu().begin(), p.ctk_pu().end()),
       .sn = p.sn(),
       .created_at_unix_ms = p.created_at_unix_ms(),
       .pk_index = hsm_.pk_index(),
       .mak_index = hsm_.mak_index(),
       .algorithm = crypto::KeyAlgorithm::kAes128,
       .package = (*claimed)[0].package,
       .package_signature = (*claimed)[0].signature,
       .operator_certificate_der =
           crypto::Certificate::FromPem((*claimed)[0].operator_certificate_pem)->ToDer()});
  ASSERT_TRUE(ctk_pk.ok()) << ctk_pk.status();
  ASSERT_TRUE(kms_.SubmitTransportKey(p.sn(), *ctk_pk, receipt->submission_id).ok());
  // ... and the replica dies here. After its lease, another one finishes the row.
  clock_.Advance(absl::Minutes(3));
  EXPECT_EQ(Pass().forwarded, 1u);
  EXPECT_EQ(kms_.stored(), 1);
  EXPECT_EQ(kms_.duplicates(), 1);
  EXPECT_EQ(Row(receipt->submission_id).state, SubmissionState::kForwarded);
}

TEST_P(MtmsSuite, QueueListsPagesAndCounts) {
  kms_.SetAnswer(absl::UnavailableError("down"));
  for (int i = 0; i < 5; ++i) {
    ASSERT_TRUE(Submit({.sn = absl::StrCat("SN-Q", i)}).ok());
    clock_.Advance(absl::Milliseconds(1));
  }
  auto page1 = core_->ListQueue(std::nullopt, 2, "");
  ASSERT_TRUE(page1.ok()) << page1.status();
  ASSERT_EQ(page1->submissions.size(), 2u);
  EXPECT_EQ(page1->submissions[0].sn, "SN-Q0");
  EXPECT_FALSE(page1->next_page_token.empty());
  EXPECT_EQ(page1->counts.received, 5u);
  auto page2 = core_->ListQueue(std::nullopt, 2, page1->next_page_token);
  ASSERT_TRUE(page2.ok());
  EXPECT_EQ(page2->submissions[0].sn, "SN-Q2");
  auto page3 = core_->ListQueue(std::nullopt, 2, page2->next_page_token);
  ASSERT_TRUE(page3.ok());
  EXPECT_EQ(page3->submissions.size(), 1u);
  EXPECT_TRUE(page3->next_page_token.empty());
  auto forwarded = core_->ListQueue(SubmissionState::kForwarded, 0, "");
  ASSERT_TRUE(forwarded.ok());
  EXPECT_TRUE(forwarded->submissions.empty());
  EXPECT_EQ(core_->ListQueue(std::nullopt, 0, "zz").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(core_->ListQueue(std::nullopt, 1001, "").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(core_->GetSubmission("nope").status().code(), absl::StatusCode::kNotFound);
}

TEST_P(MtmsSuite, AuditRecordsEventsWithoutKeyMaterial) {
  auto receipt = Submit({.sn = "SN-AUDIT"});
  ASSERT_TRUE(receipt.ok());
  ASSERT_TRUE(Submit({.operator_id = "bob"}).status().code() ==
              absl::StatusCode::kPermissionDenied);
  Pass();
  auto audit = backend_->Replica(0).ListAudit(100);
  ASSERT_TRUE(audit.ok());
  std::set<std::string> actions;
  for (const AuditEntry& a : *audit) actions.insert(a.action);
  EXPECT_TRUE(actions.count("work_key.provision"));
  EXPECT_TRUE(actions.count("package.receive"));
  EXPECT_FALSE(actions.count("package.refuse"));  // counted instead (next test)
  EXPECT_TRUE(actions.count("package.forward"));
  const std::string ctk_pu_hex = ToHex(Row(receipt->submission_id).ctk_pu);
  const std::string ctk_pk_hex = ToHex(*kms_.Get("SN-AUDIT"));
  for (const AuditEntry& a : *audit) {
    EXPECT_THAT(a.detail, Not(HasSubstr(ctk_pu_hex.substr(0, 16))));
    EXPECT_THAT(a.detail, Not(HasSubstr(ctk_pk_hex.substr(0, 16))));
  }
}

// Issue 21, finding 2: refusals are counted per minute, SN, source, action and code, not
// audited one by one. The SN is the package's only once the operator's signature verified:
// anyone can name any SN in an unsigned package, and must not make rows by doing so.
TEST_P(MtmsSuite, RefusalsAreCountedNotAuditedAndPurgedAfterTheRetention) {
  auto& repository = backend_->Replica(0);
  const size_t audit_before = repository.ListAudit(1000)->size();
  // Signed by alice, but naming bob: refused before the signature counts (PERMISSION_DENIED).
  for (int i = 0; i < 3; ++i) {
    SubmitRequest req = MakeSubmission({.sn = absl::StrCat("SN-FORGED-", i), .operator_id = "bob"},
                                       *alice_, work_, clock_);
    EXPECT_EQ(core_->SubmitTransportKey(req, "", "10.1.1.1").status().code(),
              absl::StatusCode::kPermissionDenied);
  }
  // A verified package replayed: refused after the signature, under its SN.
  SubmitRequest valid = MakeSubmission({.sn = "SN-REPLAY"}, *alice_, work_, clock_);
  ASSERT_TRUE(core_->SubmitTransportKey(valid, "", "10.1.1.2").ok());
  for (int i = 0; i < 2; ++i) {
    EXPECT_EQ(core_->SubmitTransportKey(valid, "", "10.1.1.2").status().code(),
              absl::StatusCode::kAlreadyExists);
  }
  // Garbage: no SN, no source (an in-process caller).
  EXPECT_EQ(core_->SubmitTransportKey(SubmitRequest{.package = "x"}, "").status().code(),
            absl::StatusCode::kInvalidArgument);
  // The audit holds the one intake and no refusal.
  EXPECT_EQ(repository.ListAudit(1000)->size(), audit_before + 1);

  absl::StatusOr<int64_t> flushed = core_->FlushRefusalCounts();
  ASSERT_TRUE(flushed.ok()) << flushed.status();
  EXPECT_EQ(*flushed, 6);
  absl::StatusOr<std::vector<audit::RefusalCount>> rows = repository.ListRefusalCounts();
  ASSERT_TRUE(rows.ok()) << rows.status();
  using Key = std::tuple<std::string, std::string, std::string, std::string>;
  std::map<Key, int64_t> counts;
  for (const audit::RefusalCount& r : *rows) {
    EXPECT_EQ(r.interval_start_ms % 60'000, 0);
    counts[{r.sn, r.source, r.action, r.reason}] = r.count;
  }
  EXPECT_EQ(
      counts,
      (std::map<Key, int64_t>{
          {{"*", "10.1.1.1", rkl::audit::action::kPackageRefuse, "PERMISSION_DENIED"}, 3},
          {{"SN-REPLAY", "10.1.1.2", rkl::audit::action::kPackageRefuse, "ALREADY_EXISTS"}, 2},
          {{"*", "*", rkl::audit::action::kPackageRefuse, "INVALID_ARGUMENT"}, 1}}));

  // Kept for refusals.retention (24 h by default), then purged.
  clock_.Advance(absl::Hours(23));
  EXPECT_EQ(*core_->PurgeRefusalCounts(), 0);
  clock_.Advance(absl::Hours(1) + absl::Minutes(1));
  EXPECT_EQ(*core_->PurgeRefusalCounts(), 3);
  EXPECT_TRUE(repository.ListRefusalCounts()->empty());
}

// ---------------------------------------------------------------- forwarder workers

TEST_P(MtmsSuite, BatchIsForwardedByWorkersInParallel) {
  constexpr int kRows = 8;
  const std::vector<std::string> ids = SubmitMany("SN-PAR-", kRows);
  GatedHsm gate(hsm_);
  auto forwarder = MakeForwarderWith(gate, kms_, /*batch_size=*/kRows,
                                     /*workers=*/kRows);
  absl::StatusOr<PassResult> pass;
  std::thread runner([&] { pass = forwarder->RunPass(); });
  // Every row of the batch reaches HSM #1 before any of them is answered. A pass that took
  // the rows one at a time would hold its first row at the gate until the gate gave up.
  const bool parallel = gate.WaitForInFlight(kRows);
  gate.Open();
  runner.join();
  EXPECT_TRUE(parallel) << "at most " << gate.max_in_flight() << " of " << kRows
                        << " rows were at HSM #1 at once";
  EXPECT_FALSE(gate.timed_out());
  ASSERT_TRUE(pass.ok()) << pass.status();
  EXPECT_EQ(pass->forwarded, static_cast<uint32_t>(kRows));
  EXPECT_EQ(pass->rejected + pass->retry_later, 0u);
  EXPECT_EQ(kms_.calls(), kRows);
  EXPECT_EQ(kms_.stored(), kRows);
  EXPECT_EQ(kms_.duplicates(), 0);
  for (const std::string& id : ids) {
    SubmissionRecord row = Row(id);
    EXPECT_EQ(row.state, SubmissionState::kForwarded) << row.sn;
    EXPECT_EQ(row.attempts, 1u) << row.sn;
  }
}

TEST_P(MtmsSuite, TranslationsThroughTheBatcherGiveEachRowItsOwnOutcome) {
  // As rkl-mtms runs: the workers' translations share TranslateTransportKeys calls.
  TranslateBatcher batcher(hsm_, {.max_batch = 4, .max_calls = 1});
  std::vector<std::string> ok, refused;
  for (int i = 0; i < 6; ++i) {
    auto r = Submit({.sn = absl::StrCat("SN-BT-", i)});
    ASSERT_TRUE(r.ok()) << r.status();
    ok.push_back(r->submission_id);
  }
  for (int i = 0; i < 3; ++i) {
    auto r = Submit({.sn = absl::StrCat("SN-BT-SWAP-", i), .ctk_pu_sn = "SN-OTHER"});
    ASSERT_TRUE(r.ok()) << r.status();
    refused.push_back(r->submission_id);
  }
  auto forwarder = MakeForwarderWith(batcher, kms_, /*batch_size=*/9, /*workers=*/9);
  PassResult pass = Pass(forwarder.get());
  EXPECT_EQ(pass.forwarded, 6u);
  EXPECT_EQ(pass.rejected, 3u);
  EXPECT_EQ(pass.retry_later, 0u);
  EXPECT_GE(batcher.batches_sent(), 3u);  // 9 translations, at most 4 per call
  EXPECT_LE(batcher.batches_sent(), 9u);
  for (const std::string& id : ok) {
    SubmissionRecord row = Row(id);
    EXPECT_EQ(row.state, SubmissionState::kForwarded) << row.sn;
    auto stored = kms_.Get(row.sn);
    ASSERT_TRUE(stored.has_value()) << row.sn;
    // Its own Ctk_pk: it opens under PK/MAK and carries its own SN.
    EXPECT_TRUE(hsm_.OpenedAlgorithmName(*stored).ok()) << row.sn;
    auto parsed = protocol::ParseCtkPk(*stored);
    ASSERT_TRUE(parsed.ok()) << row.sn;
    EXPECT_EQ(parsed->header.sn, row.sn);
  }
  for (const std::string& id : refused) {
    SubmissionRecord row = Row(id);
    EXPECT_EQ(row.state, SubmissionState::kRejected) << row.sn;
    EXPECT_EQ(row.reason, "hsm: UNAUTHENTICATED: transport key rejected") << row.sn;
  }
}

TEST_P(MtmsSuite, SubmissionsThroughTheKmsBatcherGiveEachRowItsOwnOutcome) {
  // As rkl-mtms runs: the workers' translations share TranslateTransportKeys calls and
  // their submissions SubmitTransportKeys calls; KMS refuses some items and is unreachable
  // for others, and each row ends as it would have alone.
  ScriptedKms scripted(kms_);
  TranslateBatcher hsm(hsm_, {.max_batch = 4, .max_calls = 1});
  KmsSubmitBatcher kms(scripted, {.max_batch = 4, .max_calls = 1});
  auto submit = [&](const std::string& kind, int i) {
    auto r = Submit({.sn = absl::StrCat(kind, "-", i)});
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? r->submission_id : std::string();
  };
  std::vector<std::string> ok, refused, down;
  for (int i = 0; i < 5; ++i) ok.push_back(submit("SN-KB", i));
  for (int i = 0; i < 2; ++i) refused.push_back(submit(ScriptedKms::kRejectPrefix, i));
  for (int i = 0; i < 2; ++i) down.push_back(submit(ScriptedKms::kRetryPrefix, i));
  auto forwarder = MakeForwarderWith(hsm, kms, /*batch_size=*/9, /*workers=*/9);
  PassResult pass = Pass(forwarder.get());
  EXPECT_EQ(pass.forwarded, 5u);
  EXPECT_EQ(pass.rejected, 2u);
  EXPECT_EQ(pass.retry_later, 2u);
  EXPECT_GE(kms.batches_sent(), 3u);  // 9 submissions, at most 4 per call
  EXPECT_LE(kms.batches_sent(), 9u);
  EXPECT_EQ(kms_.stored(), 5);
  for (const std::string& id : ok) {
    SubmissionRecord row = Row(id);
    EXPECT_EQ(row.state, SubmissionState::kForwarded) << row.sn;
    auto stored = kms_.Get(row.sn);
    ASSERT_TRUE(stored.has_value()) << row.sn;
    auto parsed = protocol::ParseCtkPk(*stored);
    ASSERT_TRUE(parsed.ok()) << row.sn;
    EXPECT_EQ(parsed->header.sn, row.sn);  // its own Ctk_pk
  }
  for (const std::string& id : refused) {
    SubmissionRecord row = Row(id);
    EXPECT_EQ(row.state, SubmissionState::kRejected) << row.sn;
    EXPECT_THAT(row.reason, HasSubstr("kms: FAILED_PRECONDITION")) << row.sn;
  }
  for (const std::string& id : down) {
    SubmissionRecord row = Row(id);
    EXPECT_EQ(row.state, SubmissionState::kReceived) << row.sn;
    EXPECT_THAT(row.last_error, HasSubstr("UNAVAILABLE")) << row.sn;
  }
}

TEST_P(MtmsSuite, WorkersBoundTheRowsInProcessAcrossConcurrentPasses) {
  constexpr int kRows = 12;
  constexpr int kWorkers = 3;
  const std::vector<std::string> ids = SubmitMany("SN-BOUND-", kRows);
  GatedHsm gate(hsm_);
  auto forwarder = MakeForwarderWith(gate, kms_, /*batch_size=*/6, kWorkers);
  // Two passes at once (the background loop and a ForceForward, say) share the workers.
  absl::StatusOr<PassResult> a, b;
  std::thread ta([&] { a = forwarder->RunPass(); });
  std::thread tb([&] { b = forwarder->RunPass(); });
  const bool reached = gate.WaitForInFlight(kWorkers);
  gate.Open();
  ta.join();
  tb.join();
  EXPECT_TRUE(reached) << "at most " << gate.max_in_flight() << " rows at HSM #1 at once";
  EXPECT_LE(gate.max_in_flight(), kWorkers);
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(a->forwarded + b->forwarded, static_cast<uint32_t>(kRows));
  EXPECT_EQ(kms_.calls(), kRows);  // each row once, by one of the passes
  EXPECT_EQ(kms_.duplicates(), 0);
  for (const std::string& id : ids) EXPECT_EQ(Row(id).attempts, 1u);
}

TEST_P(MtmsSuite, MixedBatchesGiveTheSameOutcomesWithAnyNumberOfWorkers) {
  ScriptedKms kms(kms_);
  int round = 0;
  for (int workers : {1, 4, 16}) {
    SCOPED_TRACE(absl::StrCat("workers = ", workers));
    ++round;
    auto submit = [&](const std::string& kind, int i, const std::string& ctk_pu_sn = "") {
      auto r = Submit({.sn = absl::StrCat(kind, "-", round, "-", i), .ctk_pu_sn = ctk_pu_sn});
      EXPECT_TRUE(r.ok()) << r.status();
      return r.ok() ? r->submission_id : std::string();
    };
    std::vector<std::string> ok, hsm_refused, kms_refused, kms_down, tampered;
    for (int i = 0; i < 3; ++i) ok.push_back(submit("SN-OK", i));
    // Ctk_Pu made for another SN: HSM #1's uniform UNAUTHENTICATED.
    for (int i = 0; i < 2; ++i) hsm_refused.push_back(submit("SN-SWAP", i, "SN-OTHER"));
    for (int i = 0; i < 2; ++i) kms_refused.push_back(submit(ScriptedKms::kRejectPrefix, i));
    for (int i = 0; i < 2; ++i) kms_down.push_back(submit(ScriptedKms::kRetryPrefix, i));
    tampered.push_back(submit("SN-TAMPER", 0));
    TamperWith(tampered[0]);
    const int calls_before = kms_.calls();

    // Batches of 4: the pass goes on while batches come back full (4, 4, 2 rows).
    auto forwarder = MakeForwarderWith(hsm_, kms, /*batch_size=*/4, workers);
    PassResult pass = Pass(forwarder.get());
    EXPECT_EQ(pass.forwarded, 3u);
    EXPECT_EQ(pass.rejected, 5u);
    EXPECT_EQ(pass.retry_later, 2u);
    EXPECT_EQ(kms_.calls() - calls_before, 3);

    for (const std::string& id : ok) {
      SubmissionRecord row = Row(id);
      EXPECT_EQ(row.state, SubmissionState::kForwarded) << row.sn;
      EXPECT_TRUE(kms_.Get(row.sn).has_value()) << row.sn;
    }
    for (const std::string& id : hsm_refused) {
      SubmissionRecord row = Row(id);
      EXPECT_EQ(row.state, SubmissionState::kRejected) << row.sn;
      EXPECT_EQ(row.reason, "hsm: UNAUTHENTICATED: transport key rejected") << row.sn;
    }
    for (const std::string& id : kms_refused) {
      SubmissionRecord row = Row(id);
      EXPECT_EQ(row.state, SubmissionState::kRejected) << row.sn;
      EXPECT_THAT(row.reason, HasSubstr("kms: FAILED_PRECONDITION")) << row.sn;
    }
    for (const std::string& id : kms_down) {
      SubmissionRecord row = Row(id);
      EXPECT_EQ(row.state, SubmissionState::kReceived) << row.sn;
      EXPECT_THAT(row.last_error, HasSubstr("UNAVAILABLE")) << row.sn;
      EXPECT_EQ(row.next_attempt_at_ms, clock_.NowUnixMs() + 1000) << row.sn;
    }
    SubmissionRecord row = Row(tampered[0]);
    EXPECT_EQ(row.state, SubmissionState::kRejected);
    EXPECT_THAT(row.reason, HasSubstr("claim 4"));
    for (const auto* group : {&ok, &hsm_refused, &kms_refused, &kms_down, &tampered}) {
      for (const std::string& id : *group) EXPECT_EQ(Row(id).attempts, 1u);
    }
    // Nothing is due any more (the retries back off): the next pass does nothing.
    PassResult again = Pass(forwarder.get());
    EXPECT_EQ(again.forwarded + again.rejected + again.retry_later, 0u);
  }
}

// Holds HSM #1's translation of one SN until Release(); every other SN passes. Thread-safe.
class HoldOneSn final : public HsmPort {
 public:
  HoldOneSn(HsmPort& inner, std::string sn) : inner_(inner), sn_(std::move(sn)) {}
  absl::StatusOr<RsaKeyPair> GenerateRsaKeyPair(uint32_t bits, const std::string& label) override {
    return inner_.GenerateRsaKeyPair(bits, label);
  }
  absl::StatusOr<Bytes> TranslateTransportKey(const TranslateRequest& request) override {
    if (request.sn == sn_) {
      absl::MutexLock lock(&mu_);
      held_ = true;
      mu_.AwaitWithTimeout(absl::Condition(&released_), rkl::testing::kEventDeadline);
      held_ = false;
    }
    return inner_.TranslateTransportKey(request);
  }
  bool held() const {
    absl::MutexLock lock(&mu_);
    return held_;
  }
  void Release() {
    absl::MutexLock lock(&mu_);
    released_ = true;
  }

 private:
  HsmPort& inner_;
  const std::string sn_;
  mutable absl::Mutex mu_;
  bool held_ ABSL_GUARDED_BY(mu_) = false;
  bool released_ ABSL_GUARDED_BY(mu_) = false;
};

TEST_P(MtmsSuite, ASlowRowDoesNotHoldBackTheRowsClaimedAfterIt) {
  // Batches of 2 on 2 workers. The oldest row is held at HSM #1: the other worker goes on
  // claiming and forwarding everything else meanwhile, instead of waiting for the batch.
  const std::string slow = SubmitMany("SN-SLOW-", 1).front();
  clock_.Advance(absl::Seconds(1));  // claimed first: the oldest
  SubmitMany("SN-REST-", 5);
  HoldOneSn hold(hsm_, "SN-SLOW-0");
  auto forwarder = MakeForwarderWith(hold, kms_, /*batch_size=*/2, /*workers=*/2);
  absl::StatusOr<PassResult> pass;
  std::thread runner([&] { pass = forwarder->RunPass(); });
  // First the oldest row reaches HSM #1 and stays there; then everything else must get
  // through while it is held (a pass that waited for a whole batch claimed nothing more).
  const bool slow_held = rkl::testing::WaitUntil([&] { return hold.held(); });
  const bool rest_forwarded =
      slow_held && rkl::testing::WaitUntil([&] { return kms_.stored() == 5; });
  const bool still_held = hold.held();
  hold.Release();
  runner.join();
  EXPECT_TRUE(slow_held);
  EXPECT_TRUE(rest_forwarded) << kms_.stored() << " of 5 forwarded while one row was held";
  EXPECT_TRUE(still_held);
  ASSERT_TRUE(pass.ok()) << pass.status();
  EXPECT_EQ(pass->forwarded, 6u);
  EXPECT_EQ(Row(slow).state, SubmissionState::kForwarded);
}

TEST_P(MtmsSuite, BackgroundWorkersTakeAPackageThatArrivesWhileAnotherIsHeld) {
  // The background forwarder's workers stay up: a package that arrives (Wake) while an
  // earlier row is held at HSM #1 is claimed and forwarded by an idle worker at once, not
  // after the held row (a pass ends only when all of its rows are done). The interval is an
  // hour: only Wake() can start the claims.
  const std::string slow = SubmitMany("SN-HELD-", 1).front();
  HoldOneSn hold(hsm_, "SN-HELD-0");
  auto forwarder = MakeForwarderWith(hold, kms_, /*batch_size=*/4, /*workers=*/4);
  forwarder->Start();
  const bool slow_held = rkl::testing::WaitUntil([&] { return hold.held(); });
  const std::vector<std::string> later = SubmitMany("SN-LATER-", 3);
  const bool later_forwarded = slow_held && rkl::testing::WaitUntil([&] {
                                 forwarder->Wake();  // as intake does after each package
                                 return kms_.stored() == 3;
                               });
  const bool still_held = hold.held();
  hold.Release();
  forwarder->Stop();
  EXPECT_TRUE(slow_held);
  EXPECT_TRUE(later_forwarded) << kms_.stored() << " of 3 forwarded while one row was held";
  EXPECT_TRUE(still_held);
  // Stop() finished the held row; each package went to KMS exactly once.
  EXPECT_EQ(Row(slow).state, SubmissionState::kForwarded);
  for (const std::string& id : later) EXPECT_EQ(Row(id).state, SubmissionState::kForwarded);
  EXPECT_EQ(kms_.calls(), 4);
  EXPECT_EQ(kms_.duplicates(), 0);
}

TEST_P(MtmsSuite, StopDuringAPassFinishesTheClaimedRowsAndClaimsNoMore) {
  constexpr int kBatch = 4;
  constexpr int kRows = 10;
  const std::vector<std::string> ids = SubmitMany("SN-STOP-", kRows);
  GatedHsm gate(hsm_);
  auto forwarder = MakeForwarderWith(gate, kms_, kBatch, /*workers=*/kBatch);
  forwarder->Start();  // the background loop's first pass claims a batch at once
  const bool held = gate.WaitForInFlight(kBatch);
  std::atomic<bool> stop_returned{false};
  std::thread stopper([&] {
    forwarder->Stop();
    stop_returned = true;
  });
  // Let Stop() be requested before the held rows finish, so the pass must not claim again.
  const bool requested = rkl::testing::WaitUntil([&] { return forwarder->stopping(); });
  // Stop() waits for the rows its pass holds at HSM #1.
  EXPECT_FALSE(stop_returned.load());
  gate.Open();
  stopper.join();
  EXPECT_TRUE(held);
  EXPECT_TRUE(requested);
  EXPECT_EQ(gate.in_flight(), 0);
  // The claimed batch was finished; no further batch was claimed.
  EXPECT_EQ(kms_.calls(), kBatch);
  int forwarded = 0, untouched = 0;
  for (const std::string& id : ids) {
    SubmissionRecord row = Row(id);
    if (row.state == SubmissionState::kForwarded) ++forwarded;
    if (row.state == SubmissionState::kReceived && row.attempts == 0) ++untouched;
  }
  EXPECT_EQ(forwarded, kBatch);
  EXPECT_EQ(untouched, kRows - kBatch);
  // Stopped: passes do nothing until Start() again.
  EXPECT_EQ(forwarder->RunPass().status().code(), absl::StatusCode::kUnavailable);
  // The rest is not held by any lease: another forwarder (a restart) takes it at once.
  auto next = MakeForwarder(backend_->Replica(1), "replica-next");
  EXPECT_EQ(Pass(next.get()).forwarded, static_cast<uint32_t>(kRows - kBatch));
  EXPECT_EQ(kms_.calls(), kRows);
  EXPECT_EQ(kms_.duplicates(), 0);
}

// GetOwnSubmission (docs/mtms.md "Reading a submission back"): the submitting operator sees
// its submission's state and, once rejected, the reason; nobody else sees anything.
TEST_P(MtmsSuite, AnOperatorReadsItsOwnSubmissionAndTheReasonItWasRejected) {
  kms_.SetAnswer(absl::FailedPreconditionError("sn: TMK already installed"));
  auto receipt = Submit({.sn = "SN-OWN"});
  ASSERT_TRUE(receipt.ok()) << receipt.status();
  auto own =
      core_->GetOwnSubmission(MakeOwnSubmissionQuery(receipt->submission_id, *alice_, clock_));
  ASSERT_TRUE(own.ok()) << own.status();
  EXPECT_EQ(own->state, SubmissionState::kReceived);
  EXPECT_EQ(own->sn, "SN-OWN");
  EXPECT_EQ(own->operator_id, "alice");
  EXPECT_EQ(Pass().rejected, 1u);
  own = core_->GetOwnSubmission(MakeOwnSubmissionQuery(receipt->submission_id, *alice_, clock_));
  ASSERT_TRUE(own.ok()) << own.status();
  EXPECT_EQ(own->state, SubmissionState::kRejected);
  EXPECT_THAT(own->reason, HasSubstr("kms: FAILED_PRECONDITION"));
  EXPECT_TRUE(own->last_error.empty());
  EXPECT_EQ(own->next_attempt_at_ms, 0);
  // Another operator, with a valid card and query, learns nothing: the same NOT_FOUND as an
  // id that does not exist.
  OperatorCard bob = authority_->IssueOperator("bob");
  auto other = core_->GetOwnSubmission(MakeOwnSubmissionQuery(receipt->submission_id, bob, clock_));
  auto unknown = core_->GetOwnSubmission(
      MakeOwnSubmissionQuery("00000000000000000000000000000000", *alice_, clock_));
  EXPECT_EQ(other.status().code(), absl::StatusCode::kNotFound) << other.status();
  EXPECT_EQ(other.status(), unknown.status());
}

TEST_P(MtmsSuite, OwnSubmissionQueriesFollowTheIntakeRules) {
  auto receipt = Submit({.sn = "SN-QUERY"});
  ASSERT_TRUE(receipt.ok()) << receipt.status();
  const std::string id = receipt->submission_id;
  auto code = [this](const OwnSubmissionQuery& q) {
    return core_->GetOwnSubmission(q).status().code();
  };
  // Signed without the context prefix — e.g. a package signature presented as a query's.
  EXPECT_EQ(code(MakeOwnSubmissionQuery(id, *alice_, clock_, {.without_context = true})),
            absl::StatusCode::kUnauthenticated);
  OwnSubmissionQuery swapped = MakeOwnSubmissionQuery(id, *alice_, clock_);
  swapped.signature = MakeSubmission({}, *alice_, work_, clock_).signature;
  EXPECT_EQ(code(swapped), absl::StatusCode::kUnauthenticated);
  // Another operator's id in alice's query.
  EXPECT_EQ(code(MakeOwnSubmissionQuery(id, *alice_, clock_, {.operator_id = "bob"})),
            absl::StatusCode::kPermissionDenied);
  // Stale and future.
  for (int64_t shift : {-absl::ToInt64Milliseconds(absl::Minutes(6)),
                        absl::ToInt64Milliseconds(absl::Minutes(6))}) {
    EXPECT_EQ(code(MakeOwnSubmissionQuery(id, *alice_, clock_,
                                          {.created_at_ms = clock_.NowUnixMs() + shift})),
              absl::StatusCode::kFailedPrecondition);
  }
  // A card from another CA, and a revoked card.
  OperatorCard mallory = authority_->IssueForeignOperator("alice");
  EXPECT_EQ(code(MakeOwnSubmissionQuery(id, mallory, clock_)), absl::StatusCode::kUnauthenticated);
  OperatorCard carol = authority_->IssueOperator("carol");
  auto carols = Submit({.sn = "SN-CAROL"}, &carol);
  ASSERT_TRUE(carols.ok()) << carols.status();
  authority_->Revoke(carol.certificate);
  ASSERT_TRUE(trust_->Refresh().ok());
  EXPECT_EQ(code(MakeOwnSubmissionQuery(carols->submission_id, carol, clock_)),
            absl::StatusCode::kFailedPrecondition);
  // Malformed: empty or oversized fields, bytes that are not a query, a garbled signature.
  OwnSubmissionQuery bad = MakeOwnSubmissionQuery(id, *alice_, clock_);
  bad.query = "\x0a\x7f\x01";
  EXPECT_EQ(code(bad), absl::StatusCode::kInvalidArgument);
  bad = MakeOwnSubmissionQuery(id, *alice_, clock_);
  bad.signature.clear();
  EXPECT_EQ(code(bad), absl::StatusCode::kInvalidArgument);
  bad = MakeOwnSubmissionQuery(id, *alice_, clock_);
  bad.operator_certificate_pem = "garbage";
  EXPECT_EQ(code(bad), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code(MakeOwnSubmissionQuery("", *alice_, clock_)), absl::StatusCode::kInvalidArgument);
  // The valid query still answers: none of the above changed anything.
  auto own = core_->GetOwnSubmission(MakeOwnSubmissionQuery(id, *alice_, clock_));
  ASSERT_TRUE(own.ok()) << own.status();
  EXPECT_EQ(own->state, SubmissionState::kReceived);
}

// ---- Metrics (mtms_metrics.h) ----

// The value of one series at a scrape the test triggers; nullopt when there is none.
std::optional<double> Scrape(const metrics::Metrics& m, std::string_view name,
                             const std::map<std::string, std::string>& labels = {}) {
  return metrics::SampleValue(m.Collect(), name, labels);
}

TEST_P(MtmsSuite, OutboxGaugesFollowThePackagesStates) {
  metrics::Metrics m;
  RegisterMtmsMetrics(m, backend_->Replica(0), clock_);
  auto outbox = [&](const std::string& state) {
    return Scrape(m, "rkl_mtms_outbox", {{"state", state}});
  };
  // Every state, zeros included, before any package.
  EXPECT_EQ(outbox("received"), 0);
  EXPECT_EQ(outbox("forwarded"), 0);
  EXPECT_EQ(outbox("rejected"), 0);
  EXPECT_EQ(Scrape(m, "rkl_mtms_outbox_oldest_unforwarded_age_seconds"), 0);

  kms_.SetAnswer(absl::UnavailableError("kms down"));
  auto first = Submit({.sn = "SN-M1"});
  ASSERT_TRUE(first.ok()) << first.status();
  clock_.Advance(absl::Seconds(90));
  auto second = Submit({.sn = "SN-M2"});
  ASSERT_TRUE(second.ok()) << second.status();
  auto swapped = Submit({.sn = "SN-M3", .ctk_pu_sn = "SN-OTHER"});  // HSM #1 refuses it
  ASSERT_TRUE(swapped.ok()) << swapped.status();
  clock_.Advance(absl::Seconds(30));
  EXPECT_EQ(outbox("received"), 3);
  EXPECT_EQ(Scrape(m, "rkl_mtms_outbox_oldest_unforwarded_age_seconds"), 120);

  // KMS down: the two good ones stay RECEIVED; the swapped one is rejected.
  EXPECT_EQ(Pass().rejected, 1u);
  EXPECT_EQ(outbox("received"), 2);
  EXPECT_EQ(outbox("rejected"), 1);
  EXPECT_EQ(Scrape(m, "rkl_mtms_outbox_oldest_unforwarded_age_seconds"), 120);

  kms_.SetAnswer(absl::OkStatus());
  ASSERT_TRUE(forwarder_->ForceForward().ok());
  EXPECT_EQ(outbox("received"), 0);
  EXPECT_EQ(outbox("forwarded"), 2);
  EXPECT_EQ(outbox("rejected"), 1);
  EXPECT_EQ(Scrape(m, "rkl_mtms_outbox_oldest_unforwarded_age_seconds"), 0);
}

TEST_P(MtmsSuite, ForwardAttemptsFailuresAndTranslationsCountWhatHappened) {
  metrics::Metrics m;
  ForwarderMetrics counters(m);
  Forwarder forwarder(backend_->Replica(0), hsm_, kms_, *trust_, clock_,
                      ForwarderOptions{.replica_id = "replica-m",
                                       .pk_index = hsm_.pk_index(),
                                       .mak_index = hsm_.mak_index(),
                                       .batch_size = 4,
                                       .initial_backoff = absl::Seconds(1),
                                       .max_backoff = absl::Seconds(8),
                                       .metrics = &counters});
  EXPECT_EQ(Scrape(m, "rkl_mtms_forward_attempts_total"), 0);
  EXPECT_EQ(Scrape(m, "rkl_mtms_forward_failures_total"), 0);

  // A KMS that refuses: one attempt, one failure, after one good translation.
  kms_.SetAnswer(absl::UnavailableError("kms down"));
  ASSERT_TRUE(Submit({.sn = "SN-F1"}).ok());
  EXPECT_EQ(Pass(&forwarder).retry_later, 1u);
  EXPECT_EQ(Scrape(m, "rkl_mtms_forward_attempts_total"), 1);
  EXPECT_EQ(Scrape(m, "rkl_mtms_forward_failures_total"), 1);
  EXPECT_EQ(Scrape(m, "rkl_mtms_translations_total", {{"result", "ok"}}), 1);

  // KMS accepts the retry and a second package: two attempts, no failure.
  kms_.SetAnswer(absl::OkStatus());
  ASSERT_TRUE(Submit({.sn = "SN-F2"}).ok());
  clock_.Advance(absl::Seconds(1));
  EXPECT_EQ(Pass(&forwarder).forwarded, 2u);
  EXPECT_EQ(Scrape(m, "rkl_mtms_forward_attempts_total"), 3);
  EXPECT_EQ(Scrape(m, "rkl_mtms_forward_failures_total"), 1);
  EXPECT_EQ(Scrape(m, "rkl_mtms_translations_total", {{"result", "ok"}}), 3);

  // HSM #1 refuses a translation: counted by its code; KMS is never asked.
  EXPECT_EQ(Scrape(m, "rkl_mtms_translations_total", {{"result", "unauthenticated"}}),
            std::nullopt);
  ASSERT_TRUE(Submit({.sn = "SN-F3", .ctk_pu_sn = "SN-OTHER"}).ok());
  EXPECT_EQ(Pass(&forwarder).rejected, 1u);
  EXPECT_EQ(Scrape(m, "rkl_mtms_translations_total", {{"result", "unauthenticated"}}), 1);
  EXPECT_EQ(Scrape(m, "rkl_mtms_forward_attempts_total"), 3);

  // HSM #1 unreachable: counted as "unavailable".
  hsm_.available = false;
  ASSERT_TRUE(Submit({.sn = "SN-F4"}).ok());
  EXPECT_EQ(Pass(&forwarder).retry_later, 1u);
  EXPECT_EQ(Scrape(m, "rkl_mtms_translations_total", {{"result", "unavailable"}}), 1);
  EXPECT_EQ(Scrape(m, "rkl_mtms_forward_attempts_total"), 3);
  EXPECT_EQ(Scrape(m, "rkl_mtms_forward_failures_total"), 1);
  // No SN, submission id or operator in any series.
  const std::string text = m.Render();
  EXPECT_EQ(text.find("SN-F"), std::string::npos);
  EXPECT_EQ(text.find("alice"), std::string::npos);
}

TEST_P(MtmsSuite, WorkKeyExpiryDaysFollowTheClockAndTheCurrentKey) {
  metrics::Metrics m;
  RegisterMtmsMetrics(m, backend_->Replica(0), clock_);
  // The test authority issues work certificates for 365 days from issuance.
  EXPECT_EQ(Scrape(m, "rkl_mtms_work_key_expiry_days"), 365);
  clock_.Advance(absl::Hours(24 * 100));
  EXPECT_EQ(Scrape(m, "rkl_mtms_work_key_expiry_days"), 265);
  clock_.Advance(absl::Hours(12));
  EXPECT_EQ(Scrape(m, "rkl_mtms_work_key_expiry_days"), 264.5);
  // A rotation: the new CURRENT certificate counts.
  ASSERT_TRUE(core_->ProvisionWorkKey(true, 0, "admin:test").ok());
  EXPECT_EQ(Scrape(m, "rkl_mtms_work_key_expiry_days"), 365);
  // Past notAfter: negative.
  clock_.Advance(absl::Hours(24 * 400));
  EXPECT_EQ(Scrape(m, "rkl_mtms_work_key_expiry_days"), -35);
}

// ---- Intake's hand-off (mtms_hand_off.h) ----

// An IntakeHandOff whose forwarder never takes the rows (it crashed after intake): it hands
// out leases on `clock` and keeps the rows it was given.
class DroppingHandOff final : public IntakeHandOff {
 public:
  DroppingHandOff(const Clock& clock, absl::Duration lease) : clock_(clock), lease_(lease) {}
  std::optional<IntakeClaim> ClaimForIntake() override {
    absl::MutexLock lock(&mu_);
    return IntakeClaim{.claim_token = absl::StrCat("crashed-intake/", ++claims_),
                       .lease_until_ms = NowUnixMs(clock_) + absl::ToInt64Milliseconds(lease_)};
  }
  void HandOff(SubmissionRecord row, const IntakeClaim&) override {
    absl::MutexLock lock(&mu_);
    rows_.push_back(std::move(row));
  }
  std::vector<SubmissionRecord> rows() const {
    absl::MutexLock lock(&mu_);
    return rows_;
  }

 private:
  const Clock clock_;
  const absl::Duration lease_;
  mutable absl::Mutex mu_;
  int claims_ ABSL_GUARDED_BY(mu_) = 0;
  std::vector<SubmissionRecord> rows_ ABSL_GUARDED_BY(mu_);
};

TEST_P(MtmsSuite, IntakeHandsThePackageToTheRunningForwarderWithoutAClaim) {
  metrics::Metrics m;
  ForwarderMetrics counters(m);
  // The interval is an hour and nothing calls Wake(): only the start claim and the hand-off
  // can bring a row to the workers.
  Forwarder forwarder(backend_->Replica(0), hsm_, kms_, *trust_, clock_,
                      ForwarderOptions{.replica_id = "replica-h",
                                       .pk_index = hsm_.pk_index(),
                                       .mak_index = hsm_.mak_index(),
                                       .batch_size = 4,
                                       .workers = 2,
                                       .interval = absl::Hours(1),
                                       .metrics = &counters});
  MtmsCore core(backend_->Replica(0), hsm_, *ca_, *trust_, clock_,
                MtmsCoreOptions{.hand_off = &forwarder});
  // Stopped: no claim at intake, the row waits for a claim (and the caller's Wake()).
  EXPECT_FALSE(forwarder.ClaimForIntake().has_value());
  auto waiting =
      core.SubmitTransportKey(MakeSubmission({.sn = "SN-WAIT"}, *alice_, work_, clock_), "");
  ASSERT_TRUE(waiting.ok()) << waiting.status();
  EXPECT_FALSE(waiting->handed_off);
  EXPECT_EQ(Pass().forwarded, 1u);

  forwarder.Start();  // claims at once, and finds nothing due
  const bool started = rkl::testing::WaitUntil(
      [&] { return Scrape(m, "rkl_mtms_forwarder_empty_claims_total") == 1; });
  auto receipt =
      core.SubmitTransportKey(MakeSubmission({.sn = "SN-HAND"}, *alice_, work_, clock_), "");
  ASSERT_TRUE(receipt.ok()) << receipt.status();
  EXPECT_TRUE(receipt->handed_off);
  const bool forwarded = rkl::testing::WaitUntil(
      [&] { return Row(receipt->submission_id).state == SubmissionState::kForwarded; });
  forwarder.Stop();
  EXPECT_TRUE(started);
  EXPECT_TRUE(forwarded);
  EXPECT_EQ(Row(receipt->submission_id).attempts, 1u);
  EXPECT_EQ(kms_.calls(), 2);
  // No claim ran for the handed-off package: the one claim is the start's, and it was empty.
  EXPECT_EQ(Scrape(m, "rkl_mtms_forwarder_empty_claims_total"), 1);
  EXPECT_GE(Scrape(m, "rkl_mtms_forwarder_wakeups_total").value_or(0), 1);
  // Stopped again: intake no longer hands off.
  EXPECT_FALSE(forwarder.ClaimForIntake().has_value());
}

TEST_P(MtmsSuite, APackageClaimedAtIntakeButNeverTakenIsForwardedOnceItsLeaseEnds) {
  DroppingHandOff crashed(clock_, absl::Minutes(2));
  MtmsCore core(backend_->Replica(0), hsm_, *ca_, *trust_, clock_,
                MtmsCoreOptions{.hand_off = &crashed});
  auto receipt =
      core.SubmitTransportKey(MakeSubmission({.sn = "SN-CRASH"}, *alice_, work_, clock_), "");
  ASSERT_TRUE(receipt.ok()) << receipt.status();
  EXPECT_TRUE(receipt->handed_off);
  // The row handed over carries the facts the forwarder would have used.
  const std::vector<SubmissionRecord> handed = crashed.rows();
  ASSERT_EQ(handed.size(), 1u);
  ASSERT_TRUE(handed[0].claim.has_value());
  EXPECT_EQ(handed[0].claim->work_key_state, WorkKeyState::kCurrent);
  EXPECT_FALSE(handed[0].claim->newer_sibling);
  // Leased to the crashed forwarder: no claim takes it before the lease ends.
  clock_.Advance(absl::Minutes(2) - absl::Milliseconds(1));
  EXPECT_EQ(Pass().forwarded, 0u);
  EXPECT_EQ(Row(receipt->submission_id).state, SubmissionState::kReceived);
  EXPECT_EQ(kms_.calls(), 0);
  // Then the periodic claim of any forwarder takes it.
  clock_.Advance(absl::Milliseconds(1));
  EXPECT_EQ(Pass().forwarded, 1u);
  EXPECT_EQ(Row(receipt->submission_id).state, SubmissionState::kForwarded);
  EXPECT_EQ(kms_.calls(), 1);
}

TEST_P(MtmsSuite, ClaimsReportTheWorkKeyAndANewerSiblingAndTheOlderOneIsNeverSent) {
  DroppingHandOff crashed(clock_, absl::Minutes(2));
  MtmsCore core(backend_->Replica(0), hsm_, *ca_, *trust_, clock_,
                MtmsCoreOptions{.hand_off = &crashed});
  auto older =
      core.SubmitTransportKey(MakeSubmission({.sn = "SN-PAIR"}, *alice_, work_, clock_), "");
  clock_.Advance(absl::Milliseconds(10));
  auto newer =
      core.SubmitTransportKey(MakeSubmission({.sn = "SN-PAIR"}, *alice_, work_, clock_), "");
  ASSERT_TRUE(older.ok() && newer.ok());
  // Intake's facts: neither had a newer sibling when it was stored.
  const std::vector<SubmissionRecord> handed = crashed.rows();
  ASSERT_EQ(handed.size(), 2u);
  EXPECT_FALSE(handed[0].claim->newer_sibling);
  EXPECT_FALSE(handed[1].claim->newer_sibling);
  // A claim after the leases ended reports the newer sibling of the older one.
  clock_.Advance(absl::Minutes(2));
  auto claimed = ClaimAsCrashedReplica();
  ASSERT_TRUE(claimed.ok()) << claimed.status();
  ASSERT_EQ(claimed->size(), 2u);
  auto key = backend_->Replica(0).FindWorkKey(work_.serial_hex);
  ASSERT_TRUE(key.ok() && key->has_value());
  for (const SubmissionRecord& row : *claimed) {
    ASSERT_TRUE(row.claim.has_value());
    EXPECT_EQ(row.claim->work_key_state, WorkKeyState::kCurrent);
    EXPECT_EQ(row.claim->work_key_index, (*key)->hsm_key_index);
    EXPECT_EQ(row.claim->newer_sibling, row.submission_id == older->submission_id);
  }
  // The older one is superseded, never sent; the newer one is forwarded.
  clock_.Advance(absl::Minutes(1));
  PassResult pass = Pass();
  EXPECT_EQ(pass.rejected, 1u);
  EXPECT_EQ(pass.forwarded, 1u);
  EXPECT_THAT(Row(older->submission_id).reason, HasSubstr("superseded"));
  EXPECT_EQ(Row(newer->submission_id).state, SubmissionState::kForwarded);
  EXPECT_EQ(kms_.calls(), 1);
}

TEST_P(MtmsSuite, ANewerPackageHandedOffSupersedesAnOlderOneStillQueued) {
  // One worker, held at HSM #1 by a row of another SN; meanwhile an older and a newer
  // package for one SN are handed off and wait in the queue. Their intakes each found no
  // newer sibling; the newer one's hand-off marks the older one, which is never sent.
  GatedHsm gate(hsm_);
  Forwarder forwarder(backend_->Replica(0), gate, kms_, *trust_, clock_,
                      ForwarderOptions{.replica_id = "replica-q",
                                       .pk_index = hsm_.pk_index(),
                                       .mak_index = hsm_.mak_index(),
                                       .batch_size = 4,
                                       .workers = 1,
                                       .interval = absl::Hours(1)});
  MtmsCore core(backend_->Replica(0), hsm_, *ca_, *trust_, clock_,
                MtmsCoreOptions{.hand_off = &forwarder});
  forwarder.Start();
  auto submit = [&](const std::string& sn) {
    return core.SubmitTransportKey(MakeSubmission({.sn = sn}, *alice_, work_, clock_), "");
  };
  auto held = submit("SN-FIRST");
  ASSERT_TRUE(held.ok()) << held.status();
  const bool in_flight = gate.WaitForInFlight(1);
  auto older = submit("SN-QUEUED");
  clock_.Advance(absl::Milliseconds(10));
  auto newer = submit("SN-QUEUED");
  ASSERT_TRUE(older.ok() && newer.ok());
  EXPECT_TRUE(older->handed_off && newer->handed_off);
  gate.Open();
  const bool done = rkl::testing::WaitUntil([&] {
    return Row(newer->submission_id).state == SubmissionState::kForwarded &&
           Row(older->submission_id).state == SubmissionState::kRejected;
  });
  forwarder.Stop();
  EXPECT_TRUE(in_flight);
  EXPECT_TRUE(done);
  EXPECT_THAT(Row(older->submission_id).reason, HasSubstr("superseded"));
  EXPECT_EQ(Row(held->submission_id).state, SubmissionState::kForwarded);
  EXPECT_EQ(kms_.calls(), 2);  // SN-FIRST and the newer SN-QUEUED
}

}  // namespace
}  // namespace rkl::mtms::testing
