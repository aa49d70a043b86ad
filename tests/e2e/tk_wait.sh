#!/usr/bin/env bash
# e2e_tk_wait: a terminal's BeginAuthentication waits at KMS for its transport key.
#   bash tests/e2e/tk_wait.sh <build dir> <port base>
#
# Terminal E2E-WAIT-1 is made and has its transport key, but its package is not submitted.
# tk_wait_e2e calls BeginAuthentication for it with a long wait_ms (KMS's
# authentication.tk_wait_max raised to match) and no retry. Once KMS's rkl_kms_tk_waiters
# gauge shows the call waiting (an observable state, not a pause), the terminal submits its
# package; MTMS forwards it, KMS's insert notifies, and that one call must return OK:
# rkl_kms_tk_waits_total{result="arrived"} 1, no waiter left. Then a short wait for an SN that
# never arrives answers NOT_FOUND ({result="deadline"} 1), and the terminal downloads its TMK
# (INSTALLED).
set -euo pipefail
# shellcheck source=tests/e2e/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
e2e_init tk_wait "$2" "$1"
[[ -x "$RKL_BIN/tests/e2e/tk_wait_e2e" ]] || e2e_fail "missing $RKL_BIN/tests/e2e/tk_wait_e2e"

e2e_metrics_on
export RKL_KMS_AUTHENTICATION_TK_WAIT_MAX=10m
e2e_up
e2e_log "deployment up, metrics on"

sn=E2E-WAIT-1 log="$RKL_STATE/logs/pos-E2E-WAIT-1.log"
e2e_pos_env
for step in manufacture install-cert generate-tk; do
  rkl_pos "$step" --sn "$sn" >>"$log" 2>&1 || e2e_fail "terminal $sn: $step failed"
done
e2e_log "terminal $sn holds its transport key; its package is not submitted"

export E2E_PKI="$RKL_STATE/pki" E2E_KMS_ADDR E2E_WAIT_SN=$sn E2E_NEVER_SN=E2E-WAIT-NEVER-1
E2E_KMS_ADDR=$(rkl_addr kms)
# A sample of KMS's metrics (0 when the series is absent).
kms_metric() {
  e2e_metrics_scrape kms | awk -v k="$1" '$1 == k {v = $2} END {print v + 0}'
}
run_case() {  # $1: the test of tk_wait_e2e
  "$RKL_BIN/tests/e2e/tk_wait_e2e" --gtest_color=no --gtest_filter="TkWait.$1" \
    >"$RKL_STATE/logs/tk_wait_e2e-$1.out" 2>&1
}

run_case BeginWaitsForTheTransportKey &
begin=$!
for ((i = 0; i < 600; i++)); do
  (($(kms_metric rkl_kms_tk_waiters) == 1)) && break
  kill -0 "$begin" 2>/dev/null || e2e_fail "the BeginAuthentication call ended before KMS waited" \
    "($(grep -E 'Failure|: ' "$RKL_STATE/logs/tk_wait_e2e-BeginWaitsForTheTransportKey.out" | head -3))"
  sleep 0.2
done
(($(kms_metric rkl_kms_tk_waiters) == 1)) || e2e_fail "KMS never showed the call waiting"
e2e_log "KMS holds the terminal's BeginAuthentication, waiting for its TK"

rkl_pos submit --sn "$sn" >>"$log" 2>&1 || e2e_fail "terminal $sn: submit failed"
e2e_log "package submitted"
if ! wait "$begin"; then
  grep -E '^\[  FAILED|Failure|Expected|: ' "$RKL_STATE/logs/tk_wait_e2e-BeginWaitsForTheTransportKey.out" |
    head -20 >&2
  e2e_fail "the waiting BeginAuthentication did not return OK"
fi
arrived=$(kms_metric 'rkl_kms_tk_waits_total{result="arrived"}')
((arrived == 1)) || e2e_fail "rkl_kms_tk_waits_total{arrived} is $arrived, expected 1"
(($(kms_metric rkl_kms_tk_waiters) == 0)) || e2e_fail "a waiter is left at KMS"
e2e_log "the one BeginAuthentication call returned OK once the TK arrived"

run_case AWaitForAnSnThatNeverArrivesEndsNotFound ||
  e2e_fail "a wait for an SN that never arrives did not end NOT_FOUND"
deadline=$(kms_metric 'rkl_kms_tk_waits_total{result="deadline"}')
((deadline == 1)) || e2e_fail "rkl_kms_tk_waits_total{deadline} is $deadline, expected 1"
e2e_log "a wait for an SN that never arrives ended NOT_FOUND"

rkl_pos download-tmk --sn "$sn" >>"$log" 2>&1 || e2e_fail "terminal $sn: download-tmk failed"
# shellcheck disable=SC2046
rklctl kms terminal get "$sn" $(e2e_admin) | grep -q " state=INSTALLED " ||
  e2e_fail "terminal $sn is not INSTALLED at KMS"
e2e_log "terminal $sn INSTALLED"
