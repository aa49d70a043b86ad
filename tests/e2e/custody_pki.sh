#!/usr/bin/env bash
# e2e_custody_pki: issue 20, findings 2 and 3, as attacks over real processes with the
# deployment's own certificates (admins alice and bob, custodians carol and dave).
#   bash tests/e2e/custody_pki.sh <build dir> <port base>
#
# 1. One admin alone cannot obtain a privileged certificate: alice requests admin:mallory,
#    kms, custodian:eve and an operator card, then approves them herself — refused; a
#    custodian's and a service's approval — refused; the CA holds no new certificate and
#    ca_audit records each refusal. bob's approval then issues them.
# 2. One person cannot run a key ceremony: admin certificates (alice, and mallory from step 1
#    — one person with two admin certificates) are refused at begin, add and complete; a
#    custodian alone cannot add twice nor complete; no key is made, every refusal is in the
#    HSM's audit.
# 3. A revoked admin certificate is refused by every service: `rklctl pki revoke --notify`
#    makes the notified services refuse it before the command returns; KMS, left out of
#    --notify, refuses it within its crl.refresh_interval (3 s here; polled, 60 s deadline).
# Finally a terminal still provisions (with alice's certificate for the KMS check), and the
# leakage sweep finds no key.
set -euo pipefail
# shellcheck source=tests/e2e/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
e2e_init custody_pki "$2" "$1"
# KMS is the service the revocation is NOT pushed to: it must pick it up by its schedule.
export RKL_KMS_CRL_REFRESH_INTERVAL=3s

e2e_up
e2e_log "deployment up (PKI with admins alice, bob and custodians carol, dave; ceremony by carol and dave)"

REQ="$E2E_SCRATCH/requests"
ca_flags() { echo "--ca $(rkl_addr ca) --authority ca $1"; }
ca_certs() { e2e_sql rkl_ca "SELECT count(*) FROM ca_certificates"; }
ca_audit_count() { e2e_sql rkl_ca "SELECT count(*) FROM ca_audit WHERE $1"; }
flags_of() {  # identity directory under pki/ (admin-alice, custodian-carol, kms, ...)
  echo "--tls-ca $RKL_STATE/pki/ca-bundle.pem --tls-cert $RKL_STATE/pki/$1/cert.pem" \
    "--tls-key $RKL_STATE/pki/$1/key.pem"
}
# Runs a command that must fail; its stderr must contain $1.
must_refuse() {
  local want=$1 out rc=0
  shift
  out=$("$@" 2>&1 >/dev/null) || rc=$?
  ((rc != 0)) || e2e_fail "not refused: ${*:1:4}..."
  grep -q -- "$want" <<<"$out" || e2e_fail "refused, but not with '$want': $out"
}

# ---- 1. dual control at the CA ----------------------------------------------------------------
certs_before=$(ca_certs)
declare -A request_of
for name in admin:mallory kms custodian:eve operator:op2; do
  # shellcheck disable=SC2046
  if [[ $name == operator:* ]]; then
    out=$(rklctl pki request-operator $(ca_flags "$(rkl_admin_flags alice)") --id op2 \
      --out "$REQ/op2.p12") || e2e_fail "alice could not request $name"
  else
    out=$(rklctl pki request $(ca_flags "$(rkl_admin_flags alice)") --name "$name" \
      --out "$REQ") || e2e_fail "alice could not request $name"
  fi
  id=$(sed -nE 's/^request ([0-9A-F]{32}): PENDING$/\1/p' <<<"$out")
  [[ -n "$id" ]] || e2e_fail "no pending request id for $name in: $out"
  request_of[$name]=$id
  # alice approves her own request: refused.
  # shellcheck disable=SC2046
  must_refuse "second, distinct admin" rklctl pki approve $(ca_flags "$(rkl_admin_flags alice)") \
    --request "$id" --subject "$name"
  # A custodian and a service are not admins: refused at the CA's door.
  # shellcheck disable=SC2046
  must_refuse "may not call ApproveCertificateRequest" rklctl pki approve \
    $(ca_flags "$(rkl_custodian_flags carol)") --request "$id" --subject "$name"
  # shellcheck disable=SC2046
  must_refuse "may not call ApproveCertificateRequest" rklctl pki approve \
    $(ca_flags "$(flags_of kms)") --request "$id" --subject "$name"
  # Nothing was signed; the request waits; each refusal is audited.
  (($(ca_certs) == certs_before)) || e2e_fail "$name: the CA signed a certificate on one admin's word"
  state=$(e2e_sql rkl_ca "SELECT state FROM ca_certificate_requests WHERE id = '$id'")
  [[ "$state" == pending ]] || e2e_fail "$name: request $id is '$state', expected pending"
  n=$(ca_audit_count "request_id = '$id' AND action = 'request.approve'
    AND actor = 'admin:alice' AND result LIKE 'PERMISSION_DENIED%'")
  ((n == 1)) || e2e_fail "$name: $n audit records of alice's self-approval, expected 1"
done
n=$(ca_audit_count "action = 'rpc.refused' AND detail = 'method=ApproveCertificateRequest'
  AND actor IN ('custodian:carol', 'kms')")
((n == 8)) || e2e_fail "$n audit records of the custodian's and the service's approvals, expected 8"
e2e_log "1. one admin alone: admin:mallory, kms, custodian:eve and an operator card all refused (self-approval, custodian, service); no certificate signed; refusals audited"

# bob, a second admin, approves: now they are issued.
for name in admin:mallory kms custodian:eve operator:op2; do
  # shellcheck disable=SC2046
  rklctl pki approve $(ca_flags "$(rkl_admin_flags bob)") --request "${request_of[$name]}" \
    --subject "$name" >/dev/null || e2e_fail "bob could not approve $name"
done
(($(ca_certs) == certs_before + 4)) || e2e_fail "bob's approvals did not issue 4 certificates"
# shellcheck disable=SC2046
rklctl pki fetch $(ca_flags "$(rkl_admin_flags alice)") --request "${request_of[admin:mallory]}" \
  --out "$REQ" >/dev/null || e2e_fail "alice could not fetch admin:mallory's certificate"
# shellcheck disable=SC2046
rklctl pki fetch $(ca_flags "$(rkl_admin_flags alice)") --request "${request_of[operator:op2]}" \
  --out "$REQ/op2.p12" --pin-file "$RKL_STATE/secrets/operator.pin" >/dev/null ||
  e2e_fail "alice could not fetch the operator card"
[[ -s "$REQ/op2.p12" && ! -e "$REQ/op2.p12.key.pem" ]] ||
  e2e_fail "the operator card was not written, or its pending key was left behind"
n=$(ca_audit_count "action = 'request.approve' AND actor = 'admin:bob' AND result = 'OK'")
((n == 4)) || e2e_fail "$n audited approvals by bob, expected 4"
MALLORY="$REQ/admin-mallory"
mallory_flags() { echo "--tls-ca $RKL_STATE/pki/ca-bundle.pem --tls-cert $MALLORY/cert.pem --tls-key $MALLORY/key.pem"; }
# shellcheck disable=SC2046
rklctl kms stats --kms "$(rkl_addr kms)" --authority kms $(mallory_flags) >/dev/null ||
  e2e_fail "the approved admin:mallory certificate does not work"
e2e_log "1. with bob's approval the four certificates were issued (audited); mallory's works"

# ---- 2. a key ceremony needs two distinct custodians -----------------------------------------
hsm_keys() { e2e_sql rkl_hsm_kms "SELECT count(*) FROM hsm_key WHERE label = 'PK-ALONE'"; }
hsm_target="--hsm $(rkl_addr hsm-kms) --authority hsm-kms"
rklctl hsm component new --out "$E2E_SCRATCH/c1" >/dev/null
rklctl hsm component new --out "$E2E_SCRATCH/c2" >/dev/null
# One person holding two admin certificates (alice's and mallory's): refused outright.
for who in alice mallory; do
  f=$(rkl_admin_flags alice)
  [[ $who == mallory ]] && f=$(mallory_flags)
  # shellcheck disable=SC2086
  must_refuse "may not call BeginCeremony" rklctl hsm ceremony begin $hsm_target $f \
    --label PK-ALONE --type PK --components 2
done
# A custodian begins; admins may not add the missing component, nor may the same custodian.
# shellcheck disable=SC2046,SC2086
out=$(rklctl hsm ceremony begin $hsm_target $(rkl_custodian_flags carol) --label PK-ALONE \
  --type PK --components 2) || e2e_fail "carol could not begin a ceremony"
cid=$(awk '{print $2}' <<<"$out")
# shellcheck disable=SC2046,SC2086
rklctl hsm ceremony add-component $hsm_target $(rkl_custodian_flags carol) --ceremony "$cid" \
  --component-file "$E2E_SCRATCH/c1" >/dev/null || e2e_fail "carol could not add her component"
# shellcheck disable=SC2046,SC2086
must_refuse "already added a component" rklctl hsm ceremony add-component $hsm_target \
  $(rkl_custodian_flags carol) --ceremony "$cid" --component-file "$E2E_SCRATCH/c2"
for f in "$(rkl_admin_flags alice)" "$(mallory_flags)"; do
  # shellcheck disable=SC2086
  must_refuse "may not call AddComponent" rklctl hsm ceremony add-component $hsm_target $f \
    --ceremony "$cid" --component-file "$E2E_SCRATCH/c2"
done
# The HSM's own service identity may not even read the ceremony (rklctl reads its key first).
# shellcheck disable=SC2046,SC2086
must_refuse "may not call GetCeremony" rklctl hsm ceremony add-component $hsm_target \
  $(flags_of kms) --ceremony "$cid" --component-file "$E2E_SCRATCH/c2"
# shellcheck disable=SC2046,SC2086
must_refuse "is incomplete" rklctl hsm ceremony complete $hsm_target $(rkl_custodian_flags carol) \
  --ceremony "$cid"
# shellcheck disable=SC2046,SC2086
must_refuse "may not call CompleteCeremony" rklctl hsm ceremony complete $hsm_target \
  $(rkl_admin_flags alice) --ceremony "$cid"
shred -u "$E2E_SCRATCH/c1" "$E2E_SCRATCH/c2"
(($(hsm_keys) == 0)) || e2e_fail "a key labelled PK-ALONE exists: a ceremony completed without two custodians"
# The refusals are in HSM #2's audit (sealed by a verification first).
# shellcheck disable=SC2046
rklctl hsm audit-verify --hsm "$(rkl_addr hsm-kms)" --authority hsm-kms $(rkl_admin_flags alice) \
  >/dev/null || e2e_fail "HSM #2's audit chain does not verify"
n=$(e2e_sql rkl_hsm_kms "SELECT count(*) FROM hsm_audit WHERE result = 'PERMISSION_DENIED'
  AND action = 'rpc.refused' AND split_part(detail, ' ', 1) IN ('method=BeginCeremony',
    'method=GetCeremony', 'method=AddComponent', 'method=CompleteCeremony')
  AND actor IN ('admin:alice', 'admin:mallory', 'kms')")
((n == 6)) || e2e_fail "HSM #2 audited $n refused ceremony calls, expected 6"
e2e_log "2. ceremony: admin certificates (two of one person) refused, one custodian cannot add twice or complete; no key made; refusals audited"

# ---- 3. revocation reaches every service -------------------------------------------------------
mallory_serial=$(openssl x509 -noout -serial -in "$MALLORY/cert.pem" | sed 's/^serial=//')
mallory_at() {  # service: health check over mTLS with mallory's certificate
  # shellcheck disable=SC2046
  rklctl health --target "$(rkl_addr "$1")" --authority "$1" $(mallory_flags) 2>&1
}
for svc in "${RKL_SERVICES[@]}"; do
  mallory_at "$svc" >/dev/null || e2e_fail "mallory's certificate is refused by $svc before revocation"
done
notify=()
for svc in ca hsm-mtms hsm-kms mtms; do notify+=("$svc=$(rkl_addr "$svc")"); done
# shellcheck disable=SC2046
rklctl pki revoke $(ca_flags "$(rkl_admin_flags alice)") --serial "$mallory_serial" \
  --reason key-compromise --notify "$(IFS=,; echo "${notify[*]}")" \
  >"$RKL_STATE/logs/revoke.out" 2>&1 || {
  cat "$RKL_STATE/logs/revoke.out" >&2
  e2e_fail "rklctl pki revoke failed"
}
# The notified services refuse her now: no waiting.
for svc in ca hsm-mtms hsm-kms mtms; do
  if out=$(mallory_at "$svc"); then e2e_fail "$svc still accepts revoked admin:mallory after the push"; fi
  grep -q "revoked" <<<"$out" || e2e_fail "$svc refused mallory, but not as revoked: $out"
done
# KMS was not notified: it refuses her within its refresh interval (3 s; polled up to 60 s).
deadline=$((SECONDS + 60))
while out=$(mallory_at kms); do
  ((SECONDS < deadline)) || e2e_fail "KMS still accepts revoked admin:mallory after 60 s"
  sleep 0.5
done
grep -q "revoked" <<<"$out" || e2e_fail "KMS refused mallory, but not as revoked: $out"
# She cannot take part in dual control any more either, and alice still works everywhere.
# shellcheck disable=SC2046
must_refuse "revoked" rklctl pki requests $(ca_flags "$(mallory_flags)")
for svc in "${RKL_SERVICES[@]}"; do
  # shellcheck disable=SC2046
  rklctl health --target "$(rkl_addr "$svc")" --authority "$svc" $(rkl_admin_flags alice) \
    >/dev/null || e2e_fail "$svc refuses alice after mallory's revocation"
done
state=$(e2e_sql rkl_ca "SELECT state FROM ca_certificates WHERE serial_hex = '$mallory_serial'")
[[ "$state" == revoked ]] || e2e_fail "the CA records mallory's certificate as '$state'"
n=$(ca_audit_count "action = 'certificate.revoke' AND serial_hex = '$mallory_serial'
  AND actor = 'admin:alice' AND result = 'OK'")
((n == 1)) || e2e_fail "$n audit records of the revocation, expected 1"
e2e_log "3. revoked admin:mallory: refused at once by the 4 notified services, by KMS within its refresh interval"

# ---- the flow still works ---------------------------------------------------------------------
e2e_pos provision --sn E2E-CUSTODY-1 >"$RKL_STATE/logs/pos-provision.out" \
  2>"$RKL_STATE/logs/pos-provision.err" || {
  tail -5 "$RKL_STATE/logs/pos-provision.err" >&2
  e2e_fail "terminal E2E-CUSTODY-1: provision failed"
}
# shellcheck disable=SC2046
rklctl kms terminal get E2E-CUSTODY-1 $(e2e_admin) | grep -q " state=INSTALLED " ||
  e2e_fail "terminal E2E-CUSTODY-1 is not INSTALLED at KMS"
e2e_log "a terminal still provisions end to end"
e2e_leakage_sweep
