#!/usr/bin/env bash
# e2e_custody_hsm: key custody inside the HSMs (issue 20, findings 1 and 4), as attacks with
# the deployment's own certificates.
#   bash tests/e2e/custody_hsm.sh <build dir> <port base>
#
# Brings the system up and installs a victim terminal, then (custody_e2e, gtest):
#  1. one admin certificate tries the chain TEK' → Pu → HSM #1 translate → HSM #2 import →
#     the victim's TMK under TEK': every step PERMISSION_DENIED (the single-step RPCs are
#     gone: UNIMPLEMENTED); a service may not use the other role's HSM;
#  2. the `mtms` identity asks HSM #1 to translate TEK' without a valid operator signature
#     (none, forged, a CA of its own, a real operator's package for another SN or Ctk_Pu):
#     refused;
#  3. TR-34: no admin, custodian or mtms identity reaches a KDH step of HSM #2 or the CA's
#     IssueKdhCertificate; the `kms` identity cannot have HSM #2 put the TR-34 victim's (or the
#     patent victim's) TMK in a key token for a KRD of its own CA, for the KDH certificate, or
#     for the TR-34 victim's genuine KRD under another SN, replacing or not; nor have the CA
#     certify a key of its own (or another key of HSM #2, or a key of an HSM the CA cannot
#     see) as the KDH key: the CA asks HSM #2 itself (Hsm.GetCertifiableKey) and refuses;
#  and checks that no row of any database changed (audit records and refusal counts of
#  the refusals are allowed, and required: each refusal is on record in its HSM's audit).
#  Then:
#  4. the `kms` identity imports a transport key of its own for the victim: the import
#     supersedes the victim's TMK, and the delivery under TEK' carries a new TMK, never the
#     victim's;
#  5. `rklctl kms terminal revoke` of an installed terminal destroys its TEK, AUK and TMK in
#     HSM #2 (GetKeyInfo as admin: DELETED; sealed material gone), audited in HSM #2 and KMS,
#     and the terminal gets no TMK any more.
set -euo pipefail
# shellcheck source=tests/e2e/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
e2e_init custody_hsm "$2" "$1"
E2E_CUSTODY="$RKL_BIN/tests/e2e/custody_e2e"
[[ -x "$E2E_CUSTODY" ]] || e2e_fail "missing binary $E2E_CUSTODY: build it first (ninja -C $RKL_BIN)"

e2e_up
e2e_log "deployment up"

pos_log="$RKL_STATE/logs/pos.log"
victim=E2E-CUSTODY-VICTIM
revoked=E2E-CUSTODY-REVOKED
for sn in "$victim" "$revoked"; do
  e2e_pos provision --sn "$sn" >>"$pos_log" 2>&1 || e2e_fail "terminal $sn: provision failed"
  # shellcheck disable=SC2046
  rklctl kms terminal get "$sn" $(e2e_admin) | grep -q " state=INSTALLED " ||
    e2e_fail "terminal $sn: not INSTALLED at KMS"
done
# A TR-34 terminal too (docs/tr34.md).
tr34_victim=E2E-CUSTODY-TR34
# shellcheck disable=SC2046
e2e_pos provision --sn "$tr34_victim" --protocol tr34 $(rkl_pos_tr34_flags) >>"$pos_log" 2>&1 ||
  e2e_fail "TR-34 terminal $tr34_victim: provision failed"
# shellcheck disable=SC2046
rklctl kms terminal get "$tr34_victim" $(e2e_admin) | grep -q " state=INSTALLED " ||
  e2e_fail "TR-34 terminal $tr34_victim: not INSTALLED at KMS"
e2e_log "terminals $victim, $revoked and $tr34_victim (TR-34) INSTALLED"

# shellcheck disable=SC1091
source "$RKL_STATE/ceremony.env"
# The terminal's HSM #2 key indexes as KMS records them.
kms_keys() {
  e2e_sql rkl_kms "SELECT k.tek_index, k.auk_index, t.tmk_index, t.tmk_kcv FROM terminals t
    JOIN sn_tk_kms k USING (sn) WHERE t.sn = '$1'"
}
read -r v_tek v_auk v_tmk v_kcv < <(kms_keys "$victim")
[[ -n "$v_tmk" ]] || e2e_fail "terminal $victim: KMS records no TMK"
export E2E_PKI="$RKL_STATE/pki"
export E2E_HSM_MTMS_ADDR E2E_HSM_KMS_ADDR E2E_MTMS_ADDR
E2E_HSM_MTMS_ADDR=$(rkl_addr hsm-mtms)
E2E_HSM_KMS_ADDR=$(rkl_addr hsm-kms)
E2E_MTMS_ADDR=$(rkl_addr mtms)
export E2E_HSM_MTMS_PK_INDEX=$HSM_MTMS_PK_INDEX E2E_HSM_MTMS_MAK_INDEX=$HSM_MTMS_MAK_INDEX
export E2E_HSM_KMS_PK_INDEX=$HSM_KMS_PK_INDEX E2E_HSM_KMS_MAK_INDEX=$HSM_KMS_MAK_INDEX
export E2E_OPERATOR_CARD="$RKL_STATE/pki/operator-operator1.p12"
export E2E_OPERATOR_PIN_FILE="$RKL_STATE/secrets/operator.pin"
export E2E_VICTIM_SN=$victim E2E_VICTIM_TEK_INDEX=$v_tek E2E_VICTIM_AUK_INDEX=$v_auk
export E2E_VICTIM_TMK_INDEX=$v_tmk E2E_VICTIM_TMK_KCV=$v_kcv
# The TR-34 victim's KRD certificate and TMK, and the KDH key, as KMS records them.
export E2E_CA_ADDR E2E_TR34_VICTIM_SN=$tr34_victim E2E_TR34_VICTIM_TMK_INDEX
E2E_CA_ADDR=$(rkl_addr ca)
E2E_TR34_VICTIM_TMK_INDEX=$(e2e_sql rkl_kms "SELECT tmk_index FROM terminals WHERE sn = '$tr34_victim'")
export E2E_TR34_VICTIM_KRD_CERT="$E2E_SCRATCH/tr34-victim-krd.der" E2E_KDH_CERT="$E2E_SCRATCH/kdh.der"
e2e_sql rkl_kms "SELECT encode(krd_certificate, 'hex') FROM terminals WHERE sn = '$tr34_victim'" |
  xxd -r -p >"$E2E_TR34_VICTIM_KRD_CERT"
e2e_sql rkl_kms "SELECT encode(certificate, 'hex') FROM kdh_keys WHERE active" | xxd -r -p >"$E2E_KDH_CERT"
export E2E_KDH_KEY_INDEX
E2E_KDH_KEY_INDEX=$(e2e_sql rkl_kms "SELECT key_index FROM kdh_keys WHERE active")
[[ -s "$E2E_TR34_VICTIM_KRD_CERT" && -s "$E2E_KDH_CERT" && -n "$E2E_TR34_VICTIM_TMK_INDEX" ]] ||
  e2e_fail "KMS records no KRD certificate or TMK for $tr34_victim, or no KDH key"

# Every row of every table of every service database except the audit tables and the
# refusal counters (both are where refusals go on record; a service flushes its counters
# on its own schedule), as one digest per table: what "nothing changed" is checked against.
db_fingerprint() {
  local db table
  for db in $(e2e_sql postgres "SELECT datname FROM pg_database WHERE datname LIKE 'rkl_%'
      ORDER BY 1"); do
    for table in $(e2e_sql "$db" "SELECT table_name FROM information_schema.tables
        WHERE table_schema = 'public' AND table_type = 'BASE TABLE'
        AND table_name NOT LIKE '%audit%' AND table_name <> 'refusal_counts'
        ORDER BY 1"); do
      echo "$db.$table $(e2e_sql "$db" "SELECT count(*) || ' ' || coalesce(md5(string_agg(
        t::text, '|' ORDER BY t::text)), '-') FROM \"$table\" t")"
    done
  done
}
# Records of `action` by `actor` with result `result` in one HSM's audit, chained or still
# pending.
hsm_audit_count() {
  local db=$1 actor=$2 action=$3 result=$4 where
  where="actor = '$actor' AND action = '$action' AND result = '$result'"
  e2e_sql "$db" "SELECT (SELECT count(*) FROM hsm_audit WHERE $where)
    + (SELECT count(*) FROM hsm_audit_pending WHERE $where)"
}
# Calls the HSM's adapter refused: action rpc.refused with the RPC in the detail.
hsm_refusal_count() {
  local db=$1 actor=$2 method=$3 result=$4 where
  where="actor = '$actor' AND action = 'rpc.refused' AND detail LIKE 'method=$method %'
    AND result = '$result'"
  e2e_sql "$db" "SELECT (SELECT count(*) FROM hsm_audit WHERE $where)
    + (SELECT count(*) FROM hsm_audit_pending WHERE $where)"
}

run_custody() {  # gtest filter, what
  local out="$RKL_STATE/logs/custody_e2e.$2.out"
  if ! "$E2E_CUSTODY" --gtest_color=no --gtest_filter="$1" >"$out" 2>&1; then
    grep -E '^\[  FAILED|Failure|Expected|Which is|actual|: ' "$out" | head -60 >&2
    e2e_fail "custody_e2e $1 failed (full output: logs/custody_e2e.$2.out)"
  fi
  e2e_log "custody_e2e $1: $(grep -E '^\[  PASSED' "$out")"
}

# ---- 1 and 2: refused, and nothing changed -------------------------------------------------
db_fingerprint >"$E2E_SCRATCH/before"
admin=admin:alice
denied_before=$(hsm_refusal_count rkl_hsm_mtms "$admin" TranslateTransportKey PERMISSION_DENIED)
run_custody 'AdminAttack.*' admin
run_custody 'MtmsWithoutOperatorSignature.*' mtms
kms_build_refused_before=$(hsm_audit_count rkl_hsm_kms kms tmk.build_key_token PERMISSION_DENIED)
run_custody 'Tr34Attack.*' tr34
db_fingerprint >"$E2E_SCRATCH/after"
if ! diff -u "$E2E_SCRATCH/before" "$E2E_SCRATCH/after" >&2; then
  e2e_fail "a refused attack changed rows in a database (diff above)"
fi
e2e_log "no database row changed ($(wc -l <"$E2E_SCRATCH/before") tables compared)"
# ... except the audit, where each refusal is on record.
denied_after=$(hsm_refusal_count rkl_hsm_mtms "$admin" TranslateTransportKey PERMISSION_DENIED)
((denied_after > denied_before)) ||
  e2e_fail "HSM #1's audit has no record of the admin's refused translation"
for method in ImportAndChallenge AuthenticateAndDeliver; do
  (($(hsm_refusal_count rkl_hsm_kms "$admin" "$method" PERMISSION_DENIED) >= 1)) ||
    e2e_fail "HSM #2's audit has no record of the admin's refused $method"
done
(($(hsm_audit_count rkl_hsm_mtms mtms tk.translate UNAUTHENTICATED) >= 3)) ||
  e2e_fail "HSM #1's audit lacks the refused translations without a valid signature"
(($(hsm_audit_count rkl_hsm_mtms mtms tk.translate PERMISSION_DENIED) >= 2)) ||
  e2e_fail "HSM #1's audit lacks the refused translations of another terminal's package"
for method in GenerateKdhKey BuildKeyToken VerifyKeyTokenInstallProof; do
  (($(hsm_refusal_count rkl_hsm_kms "$admin" "$method" PERMISSION_DENIED) >= 1)) ||
    e2e_fail "HSM #2's audit has no record of the admin's refused $method"
done
# kms: 2 self-made KRDs x 2, the KDH certificate x 4, a genuine KRD for another SN x 2.
(($(hsm_audit_count rkl_hsm_kms kms tmk.build_key_token PERMISSION_DENIED) - kms_build_refused_before >= 10)) ||
  e2e_fail "HSM #2's audit lacks the kms identity's refused TR-34 key tokens"
# The CA asked HSM #2 about the keys it was to certify: the KDH key (answered, then refused
# by the CA: another public key), a missing index, the victim's TMK (no key the CA certifies).
(($(hsm_audit_count rkl_hsm_kms ca public_key.get NOT_FOUND) >= 1)) ||
  e2e_fail "HSM #2's audit has no record of the CA asking for a missing key"
(($(hsm_audit_count rkl_hsm_kms ca public_key.get PERMISSION_DENIED) >= 1)) ||
  e2e_fail "HSM #2's audit has no record of the CA asking for the victim's TMK"
e2e_log "every refusal is in its HSM's audit"

# ---- 3: the kms identity's own transport key supersedes the victim's TMK -------------------
run_custody 'KmsImportSupersedes.*' kms
state=$(e2e_sql rkl_hsm_kms "SELECT state FROM hsm_key WHERE key_index = $v_tmk")
[[ "$state" == 2 ]] || e2e_fail "the victim's TMK $v_tmk is in state $state, not SUPERSEDED"
tmks=$(e2e_sql rkl_hsm_kms "SELECT count(*) FROM hsm_key WHERE key_type = 6 AND state = 1
  AND bound_sn = '$victim' AND kcv = '$v_kcv'")
((tmks == 0)) || e2e_fail "a live TMK of $victim still has the victim's KCV"

# ---- 4: revocation destroys the terminal's keys in HSM #2 ----------------------------------
read -r r_tek r_auk r_tmk _ < <(kms_keys "$revoked")
# shellcheck disable=SC2046
rklctl kms terminal revoke "$revoked" --reason "e2e: stolen" $(e2e_admin) >>"$pos_log" 2>&1 ||
  e2e_fail "rklctl kms terminal revoke $revoked failed"
hsm2_admin="--hsm $(rkl_addr hsm-kms) --authority hsm-kms $(rkl_admin_flags)"
for index in "$r_tek" "$r_auk" "$r_tmk"; do
  # shellcheck disable=SC2086
  info=$(rklctl hsm key-info --index "$index" $hsm2_admin) ||
    e2e_fail "rklctl hsm key-info --index $index failed"
  grep -q "^state *KEY_STATE_DELETED$" <<<"$info" ||
    e2e_fail "key $index of revoked $revoked is not destroyed: $(grep '^state' <<<"$info")"
done
left=$(e2e_sql rkl_hsm_kms "SELECT count(*) FROM hsm_key WHERE bound_sn = '$revoked'
  AND (state <> 3 OR sealed IS NOT NULL OR nonce IS NOT NULL)")
((left == 0)) || e2e_fail "HSM #2 still holds $left keys of revoked $revoked"
(($(e2e_sql rkl_hsm_kms "SELECT (SELECT count(*) FROM hsm_audit WHERE sn = '$revoked' AND
    action = 'terminal.keys_destroy' AND actor = 'kms' AND result = 'OK') + (SELECT count(*)
    FROM hsm_audit_pending WHERE sn = '$revoked' AND action = 'terminal.keys_destroy'
    AND actor = 'kms' AND result = 'OK')") == 1)) ||
  e2e_fail "HSM #2's audit does not record the destruction of $revoked's keys once"
(($(e2e_sql rkl_kms "SELECT count(*) FROM (SELECT sn, action, result FROM audit UNION ALL
    SELECT sn, action, result FROM audit_pending) a WHERE sn = '$revoked' AND
    action = 'terminal.keys_destroy' AND result = 'OK'") == 1)) ||
  e2e_fail "KMS's audit does not record the destruction of $revoked's keys"
# The revoked terminal can never get a TMK again.
if e2e_pos download-tmk --sn "$revoked" >>"$pos_log" 2>&1; then
  e2e_fail "revoked $revoked downloaded a TMK"
fi
# shellcheck disable=SC2046
rklctl hsm audit-verify --hsm "$(rkl_addr hsm-kms)" --authority hsm-kms $(rkl_admin_flags) \
  >/dev/null || e2e_fail "HSM #2's audit chain does not verify"
e2e_log "revoked $revoked: TEK $r_tek, AUK $r_auk, TMK $r_tmk destroyed in HSM #2 and audited"

e2e_leakage_sweep
