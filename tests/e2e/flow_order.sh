#!/usr/bin/env bash
# e2e_flow_order: an older package that waited in MTMS's backoff never overwrites a newer
# one for the same SN.
#   bash tests/e2e/flow_order.sh <build dir> <port base>
#
# KMS is down when terminal E2E-ORDER-1 submits package A: MTMS's forwarder fails to send it
# and backs off (an hour here). KMS comes back (and MTMS restarts, so its channel to KMS is
# fresh; A's backoff is in the database and stays); the terminal makes a new transport key and
# the operator submits package B, which MTMS forwards at once. Then an administrator's
# `forward-now` makes A due. A must be marked superseded (REJECTED, reason "superseded…",
# audited `package.supersede`) without reaching KMS (no `tk.submit` refusal, one `tk.receive`
# and no `tk.supersede` at KMS), and the terminal — which holds B's transport key — must
# authenticate and end INSTALLED with the same TMK KCV on both sides. On a KMS/MTMS that
# forwards A after B, KMS replaces B's key by A's and the terminal can never authenticate.
# Then the leakage sweep.
set -euo pipefail
# shellcheck source=tests/e2e/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
e2e_init flow_order "$2" "$1"
# A package that failed once waits until forward-now (no timing involved).
export RKL_MTMS_FORWARDER_INITIAL_BACKOFF=1h RKL_MTMS_FORWARDER_MAX_BACKOFF=1h

e2e_up
e2e_log "deployment up"

sn=E2E-ORDER-1
e2e_pos_env
pos_step() {
  rkl_pos "$1" --sn "$sn" >>"$RKL_STATE/logs/pos-$sn.out" 2>>"$RKL_STATE/logs/pos-$sn.err" || {
    tail -5 "$RKL_STATE/logs/pos-$sn.err" >&2
    e2e_fail "terminal $sn: $1 failed"
  }
}
# Polls an SQL query on rkl_mtms until it prints $2, for at most $3 seconds.
wait_mtms() {
  local sql=$1 want=$2 limit=$3 i got=""
  for ((i = 0; i < limit * 5; i++)); do
    got=$(e2e_sql rkl_mtms "$sql")
    [[ "$got" == "$want" ]] && return 0
    sleep 0.2
  done
  e2e_fail "MTMS: '$sql' gives '$got', expected '$want' within ${limit}s"
}
row() {  # state and attempts of the package of $sn with the $1-th created_at (1 = oldest)
  e2e_sql rkl_mtms "SELECT state, attempts FROM sn_key_mtms WHERE sn = '$sn'
    ORDER BY created_at_ms OFFSET $(($1 - 1)) LIMIT 1"
}

rkl_stop kms
e2e_log "KMS stopped"
pos_step manufacture
pos_step install-cert
pos_step generate-tk
pos_step submit
wait_mtms "SELECT count(*) FROM sn_key_mtms WHERE sn = '$sn' AND state = 'RECEIVED'
  AND attempts >= 1" 1 180
e2e_log "package A failed to reach KMS and backs off: $(row 1)"

rkl_start kms
rkl_wait_healthy kms 120
# MTMS's channel to KMS may still be in gRPC's reconnect backoff from the outage; a restarted
# MTMS connects afresh on its first call. A's row keeps its backoff (it is in the database).
rkl_stop mtms
rkl_start mtms
rkl_wait_healthy mtms 120
pos_step generate-tk
pos_step submit
# B goes out at once; if its first attempt failed it would wait an hour like A: say so.
for ((i = 0; i < 900; i++)); do
  b=$(row 2)
  [[ "$b" == "FORWARDED "* ]] && break
  [[ "$b" == "RECEIVED 0" || -z "$b" ]] || e2e_fail "package B was not forwarded at once: $b"
  ((i < 899)) || e2e_fail "package B not forwarded within 180 s: $b"
  sleep 0.2
done
[[ "$(row 2)" == "FORWARDED "* ]] || e2e_fail "the newer package B is not the forwarded one: $(row 2)"
[[ "$(row 1)" == "RECEIVED "* ]] || e2e_fail "package A left its backoff early: $(row 1)"
e2e_log "package B forwarded; A still waiting: $(row 1)"

# shellcheck disable=SC2046
rklctl mtms forward-now --mtms "$(rkl_addr mtms)" --authority mtms $(rkl_admin_flags) \
  >"$RKL_STATE/logs/forward-now.out" 2>&1 || e2e_fail "rklctl mtms forward-now failed"
wait_mtms "SELECT count(*) FROM sn_key_mtms WHERE sn = '$sn' AND state = 'RECEIVED'" 0 180
reason=$(e2e_sql rkl_mtms "SELECT state, reason FROM sn_key_mtms WHERE sn = '$sn'
  ORDER BY created_at_ms LIMIT 1")
[[ "$reason" == "REJECTED superseded:"* ]] || e2e_fail "package A: expected superseded, got '$reason'"
[[ "$(row 2)" == "FORWARDED "* ]] || e2e_fail "package B changed: $(row 2)"
n=$(e2e_sql rkl_mtms "SELECT count(*) FROM audit WHERE sn = '$sn' AND action = 'package.supersede'")
((n == 1)) || e2e_fail "MTMS audit: $n package.supersede records, expected 1"
for check in "tk.submit 0" "tk.receive 1" "tk.supersede 0"; do
  read -r action want <<<"$check"
  n=$(e2e_sql rkl_kms "SELECT count(*) FROM audit WHERE sn = '$sn' AND action = '$action'")
  ((n == want)) || e2e_fail "KMS audit: $n $action records for $sn, expected $want (A reached KMS?)"
done
e2e_log "package A superseded at MTMS, never sent: $reason"

pos_step download-tmk
# shellcheck disable=SC2046
kms=$(rklctl kms terminal get "$sn" $(e2e_admin))
pos=$(rkl_pos status --state-dir "$RKL_STATE/pos" --sn "$sn")
pos_state=$(awk '$1 == "state" {print $2}' <<<"$pos")
pos_kcv=$(awk '$1 == "TMK" && $2 == "KCV" {print $3}' <<<"$pos")
[[ "$pos_state" == INSTALLED ]] || e2e_fail "terminal $sn: the terminal is $pos_state"
[[ "$kms" == *" state=INSTALLED "* && "$kms" == *" tmk_kcv=$pos_kcv "* ]] ||
  e2e_fail "terminal $sn: KMS reports '$kms', the terminal TMK KCV $pos_kcv"
e2e_log "terminal $sn INSTALLED with the newer transport key, TMK KCV $pos_kcv on both sides"

e2e_leakage_sweep
