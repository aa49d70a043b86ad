#!/usr/bin/env bash
# e2e_request_id: one request id per terminal flow, through every process (docs/operations.md,
# "Request ids").
#   bash tests/e2e/request_id.sh <build dir> <port base>
#
# Two terminals are provisioned one after the other; rkl-pos logs each flow's id when it
# starts ("terminal <sn>: flow starts request_id=<id>"). For each terminal the id must be in
# the log of MTMS (SubmitTransportKey), HSM #1 (the translation MTMS's forwarder asked for),
# KMS (the forwarder's SubmitTransportKeys call, KMS's intake line for the package, and the
# terminal's own calls) and HSM #2 (KMS's
# calls for the terminal); no log line may carry both terminals' ids, or the id of one and
# the SN of the other. The audit chains of MTMS, HSM #1, KMS and HSM #2 must hold records of
# the terminal under its id (KMS: its receipt, authentication, delivery and installation;
# HSM #2: the import, the delivery and the install proof), and none of the other terminal. KMS logs JSON here
# (RKL_KMS_LOG_FORMAT=json): each of its lines with the id must parse as JSON, and carry the
# id as its "request_id" field (the RPC interceptor's line, written outside the handler, in
# its message: "rpc <method> request_id=<id> ...").
set -euo pipefail
# shellcheck source=tests/e2e/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
e2e_init request_id "$2" "$1"
export RKL_KMS_LOG_FORMAT=json

e2e_up
e2e_log "deployment up"

sns=(E2E-RID-1 E2E-RID-2)
declare -A id
for sn in "${sns[@]}"; do
  if ! e2e_pos provision --sn "$sn" >"$RKL_STATE/logs/pos-$sn.out" 2>"$RKL_STATE/logs/pos-$sn.err"; then
    tail -5 "$RKL_STATE/logs/pos-$sn.err" >&2
    e2e_fail "terminal $sn: provision failed"
  fi
  e2e_assert_installed "$sn" AES128
  id[$sn]=$(sed -n "s/.* terminal $sn: flow starts request_id=\([0-9a-f]*\)$/\1/p" \
    "$RKL_STATE/logs/pos-$sn.err")
  [[ "${id[$sn]}" =~ ^[0-9a-f]{32}$ ]] ||
    e2e_fail "terminal $sn: rkl-pos logged no flow id ('${id[$sn]}'; $RKL_STATE/logs/pos-$sn.err)"
  e2e_log "terminal $sn INSTALLED under request id ${id[$sn]}"
done
[[ "${id[E2E-RID-1]}" != "${id[E2E-RID-2]}" ]] || e2e_fail "both terminals got id ${id[E2E-RID-1]}"

# Seals every pending audit record (VerifyAuditChain seals first), so the chains are complete.
for svc in mtms kms; do
  # shellcheck disable=SC2046
  rklctl "$svc" audit-verify --"$svc" "$(rkl_addr "$svc")" --authority "$svc" $(rkl_admin_flags) \
    >"$RKL_STATE/logs/audit-verify-$svc.out" 2>&1 || e2e_fail "$svc: audit chain does not verify"
done

# Lines of $1's log with request id $2: ` request_id=<id>` (text lines, and the RPC line in
# both formats, whose message names it) or a JSON "request_id" field.
lines_with() {
  grep -E -e "request_id=$2( |\"|$)" -e "\"request_id\":\"$2\"" "$RKL_STATE/logs/$1.log" || true
}

for sn in "${sns[@]}"; do
  mine=${id[$sn]}
  other_sn=E2E-RID-1
  [[ $sn == E2E-RID-1 ]] && other_sn=E2E-RID-2
  other=${id[$other_sn]}
  # Where the id must have arrived, by what the line shows was served under it.
  for check in "mtms|rpc /rkl.v1.Mtms/SubmitTransportKey " \
    "hsm-mtms|rpc /rkl.v1.Hsm/TranslateTransportKey" \
    "kms|rpc /rkl.v1.Kms/SubmitTransportKey" \
    "kms|intake: sn=$sn submission " \
    "kms|rpc /rkl.v1.Kms/BeginAuthentication " \
    "kms|rpc /rkl.v1.Kms/ConfirmInstallation " \
    "hsm-kms|rpc /rkl.v1.Hsm/"; do
    svc=${check%%|*} what=${check#*|}
    lines_with "$svc" "$mine" | grep -qF "$what" ||
      e2e_fail "terminal $sn: no '$what' line with request id $mine in $svc's log"
  done
  for svc in mtms hsm-mtms kms hsm-kms; do
    n=$(lines_with "$svc" "$mine" | wc -l)
    bad=$(lines_with "$svc" "$mine" | grep -cF -e "$other" -e "$other_sn" || true)
    ((bad == 0)) || e2e_fail "terminal $sn: $bad lines of $svc's log with its id name $other_sn or its id"
    e2e_log "terminal $sn: $n lines of $svc's log carry its id, none the other terminal's"
  done
  # Negative control: the other terminal's SN never shows up under this id anywhere, but
  # the same grep finds it under its own id (so the check can fail).
  lines_with mtms "$other" | grep -qF "$other_sn" ||
    e2e_fail "control: MTMS's lines with $other_sn's id do not name $other_sn"

  # KMS's JSON lines: valid JSON, each with the id as its request_id field (the RPC line: in
  # its message), and some with the field (the handler's own lines).
  lines_with kms "$mine" | python3 -c '
import json, sys
want, fields = sys.argv[1], 0
for n, line in enumerate(sys.stdin, 1):
    try:
        rec = json.loads(line)
    except ValueError as e:
        sys.exit(f"KMS log line {n} is not JSON ({e}): {line.strip()}")
    if "request_id" in rec:
        fields += 1
        got = rec["request_id"]
        if got != want:
            sys.exit(f"KMS log line {n}: request_id {got!r}, expected {want}")
    elif not rec.get("msg", "").startswith("rpc ") or f" request_id={want} " not in rec["msg"]:
        sys.exit(f"KMS log line {n} names the id but has no request_id field: {line.strip()}")
if fields == 0:
    sys.exit("no KMS log line has a request_id field")
' "$mine" || e2e_fail "terminal $sn: KMS's JSON log lines"

  # Audit records under the id: each chain (sealed and pending), none about the other SN.
  for check in "rkl_mtms audit audit_pending" "rkl_hsm_mtms hsm_audit hsm_audit_pending" \
    "rkl_kms audit audit_pending" "rkl_hsm_kms hsm_audit hsm_audit_pending"; do
    read -r db chain pending <<<"$check"
    rows=$(e2e_sql "$db" "SELECT count(*), count(*) FILTER (WHERE sn = '$sn'),
      count(*) FILTER (WHERE sn = '$other_sn') FROM (SELECT sn, request_id FROM $chain
      UNION ALL SELECT sn, request_id FROM $pending) r WHERE request_id = '$mine'")
    read -r all of_sn of_other <<<"$rows"
    ((of_sn >= 1)) || e2e_fail "terminal $sn: $db has no audit record of $sn under its id ($rows)"
    ((of_other == 0)) || e2e_fail "terminal $sn: $db has $of_other records of $other_sn under its id"
    e2e_log "terminal $sn: $db: $all audit records under its id, $of_sn about $sn"
  done
  # The records written in one statement with their key changes carry the id too.
  n=$(e2e_sql rkl_hsm_kms "SELECT count(*) FROM (SELECT action, request_id FROM hsm_audit
    UNION ALL SELECT action, request_id FROM hsm_audit_pending) r
    WHERE request_id = '$mine' AND action IN ('tk.import_and_challenge', 'tmk.authenticate_and_deliver')")
  ((n >= 2)) || e2e_fail "terminal $sn: HSM #2 has $n import/delivery records under its id"
  n=$(e2e_sql rkl_kms "SELECT count(*) FROM audit WHERE request_id = '$mine'
    AND sn = '$sn' AND action = 'terminal.installed'")
  ((n == 1)) || e2e_fail "terminal $sn: KMS has $n terminal.installed records under its id"
done

# The chains still verify with the new field (HSMs too).
for svc in hsm-mtms hsm-kms; do
  # shellcheck disable=SC2046
  rklctl hsm audit-verify --hsm "$(rkl_addr "$svc")" --authority "$svc" $(rkl_admin_flags) \
    >"$RKL_STATE/logs/audit-verify-$svc.out" 2>&1 ||
    e2e_fail "$svc: audit chain does not verify ($(tail -1 "$RKL_STATE/logs/audit-verify-$svc.out"))"
done
e2e_log "every audit chain verifies"
