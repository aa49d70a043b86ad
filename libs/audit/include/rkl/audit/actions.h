#pragma once
// The one vocabulary of audit actions (the `action` of every audit record of the CA, HSM,
// KMS and MTMS): `object.verb`, lower case, words joined by '_' within a part. Services
// write only these constants, so `grep -rn audit::action::` lists every audited event, and a
// reader of any service's chain meets the same words for the same thing.
//
// An action is text inside a sealed record: its MAC covers it, so a record written with an
// older spelling keeps verifying, and verification never depends on an action's spelling
// except for kAuditRecordTampered, whose older spelling the verifier still treats as a
// break (kLegacyAuditRecordTampered). Renaming a constant changes only records written
// after the change; queries over a chain that spans the rename must name both spellings.

namespace rkl::audit::action {

// ---- every chain (written by rkl::audit itself)
// The sealer chains it in place of a pending record whose MAC does not verify.
inline constexpr char kAuditRecordTampered[] = "audit.record_tampered";
// Anchor() chains it when the chain no longer holds the anchored record.
inline constexpr char kAuditAnchorMismatch[] = "audit.anchor_mismatch";
// The spellings records written before this vocabulary carry.
inline constexpr char kLegacyAuditRecordTampered[] = "audit_record_tampered";
inline constexpr char kLegacyAuditAnchorMismatch[] = "audit_anchor_mismatch";

// ---- CA (ca_audit)
inline constexpr char kRpcRefused[] = "rpc.refused";
inline constexpr char kRequestCreate[] = "request.create";
inline constexpr char kRequestApprove[] = "request.approve";
inline constexpr char kCertificateRevoke[] = "certificate.revoke";
inline constexpr char kBootstrapIssue[] = "bootstrap.issue";

// ---- KMS
inline constexpr char kTkReceive[] = "tk.receive";
inline constexpr char kTkSupersede[] = "tk.supersede";
inline constexpr char kTkSubmit[] = "tk.submit";  // refusals of a submission
inline constexpr char kTkImport[] = "tk.import";
inline constexpr char kAuthBegin[] = "auth.begin";
inline constexpr char kAuthComplete[] = "auth.complete";  // refusals before the HSM
inline constexpr char kAuthOk[] = "auth.ok";
inline constexpr char kAuthFail[] = "auth.fail";
inline constexpr char kTmkDeliver[] = "tmk.deliver";
inline constexpr char kInstallConfirm[] = "install.confirm";  // refusals before the HSM
inline constexpr char kInstallFail[] = "install.fail";
// An INSTALLED terminal confirmed its installed TMK again, in a new session (a lost reply).
inline constexpr char kInstallReconfirm[] = "install.reconfirm";
inline constexpr char kTerminalInstalled[] = "terminal.installed";
inline constexpr char kTerminalLock[] = "terminal.lock";
inline constexpr char kTerminalUnlock[] = "terminal.unlock";
inline constexpr char kTerminalRevoke[] = "terminal.revoke";
// The HSM destroyed a terminal's keys (KMS: HSM #2 did, or could not: the result says).
inline constexpr char kTerminalKeysDestroy[] = "terminal.keys_destroy";
inline constexpr char kTerminalRekey[] = "terminal.rekey";
// TR-34 terminals (docs/tr34.md)
inline constexpr char kKrdBind[] = "krd.bind";
inline constexpr char kKrdRefuse[] = "krd.refuse";
inline constexpr char kKeyTokenIssue[] = "key_token.issue";
inline constexpr char kKeyTokenRefuse[] = "key_token.refuse";
inline constexpr char kKdhKeyProvision[] = "kdh_key.provision";

// ---- MTMS
inline constexpr char kPackageReceive[] = "package.receive";
inline constexpr char kPackageRefuse[] = "package.refuse";  // refusals of an intake
inline constexpr char kPackageReject[] = "package.reject";
inline constexpr char kPackageSupersede[] = "package.supersede";
inline constexpr char kPackageForward[] = "package.forward";
inline constexpr char kSubmissionQuery[] = "submission.query";  // refusals of a query
inline constexpr char kWorkKeyProvision[] = "work_key.provision";
inline constexpr char kWorkKeyRotate[] = "work_key.rotate";
inline constexpr char kWorkKeyRetire[] = "work_key.retire";

// ---- HSM (hsm_audit); the terminal's keys: kTerminalKeysDestroy above
inline constexpr char kRandomGenerate[] = "random.generate";
inline constexpr char kRsaKeyGenerate[] = "rsa_key.generate";
inline constexpr char kPublicKeyGet[] = "public_key.get";
inline constexpr char kKeyGetInfo[] = "key.get_info";
inline constexpr char kKeyDelete[] = "key.delete";
inline constexpr char kCeremonyBegin[] = "ceremony.begin";
inline constexpr char kCeremonyGet[] = "ceremony.get";
inline constexpr char kCeremonyAddComponent[] = "ceremony.add_component";
inline constexpr char kCeremonyComplete[] = "ceremony.complete";
inline constexpr char kCeremonyExpire[] = "ceremony.expire";
inline constexpr char kTkTranslate[] = "tk.translate";
inline constexpr char kTkImportAndChallenge[] = "tk.import_and_challenge";
inline constexpr char kAuthChallenge[] = "auth.challenge";
inline constexpr char kTmkAuthenticateAndDeliver[] = "tmk.authenticate_and_deliver";
inline constexpr char kInstallVerifyProof[] = "install.verify_proof";
// TR-34 (HSM #2)
inline constexpr char kKdhKeyGenerate[] = "kdh_key.generate";
inline constexpr char kTmkBuildKeyToken[] = "tmk.build_key_token";
inline constexpr char kInstallVerifyKeyTokenProof[] = "install.verify_key_token_proof";
inline constexpr char kAuditVerify[] = "audit.verify";
inline constexpr char kAuditAnchor[] = "audit.anchor";

}  // namespace rkl::audit::action
