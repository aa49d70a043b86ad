#!/usr/bin/env bash
# e2e_metrics: every process's Prometheus metrics after a fleet, checked against what happened.
#   bash tests/e2e/metrics.sh <build dir> <port base>
#
# Brings the deployment up with the /metrics endpoints on (off by default in the other cases)
# and KMS locking an SN at its first failed proof, runs a 20-terminal fleet and puts one more
# terminal's transport key at KMS (TK_RECEIVED), then metrics_e2e (gtest) scrapes every
# process: the fleet's deliveries, translations and HSM commands are counted exactly, no SN
# appears in any series, and the refusals metrics_e2e itself causes (calls past an SN's
# volume budget, one wrong proof) move the rate-limit, auth-failure and lockout counters by
# exactly what it caused.
set -euo pipefail
# shellcheck source=tests/e2e/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
e2e_init metrics "$2" "$1"
[[ -x "$RKL_BIN/tests/e2e/metrics_e2e" ]] || e2e_fail "missing $RKL_BIN/tests/e2e/metrics_e2e"

e2e_metrics_on
export RKL_KMS_LOCKOUT_THRESHOLD=1
e2e_up
e2e_log "deployment up, metrics on"

count=20 prefix=E2E-METRICS
e2e_log "fleet: $count terminals"
if ! e2e_pos fleet --count "$count" --concurrency 4 --prefix "$prefix" --progress plain \
  --json "$RKL_STATE/logs/fleet.json" >"$RKL_STATE/logs/pos-fleet.out" \
  2>"$RKL_STATE/logs/pos-fleet.err"; then
  cat "$RKL_STATE/logs/pos-fleet.out" >&2
  e2e_fail "the fleet reported failures"
fi
e2e_assert_fleet "$prefix" "$count"

lock_sn=E2E-LOCKME-1
e2e_pos_env
e2e_tk_at_kms "$lock_sn" "$RKL_STATE/logs/pos.log"
e2e_log "terminal $lock_sn TK_RECEIVED at KMS"

export E2E_PKI="$RKL_STATE/pki" E2E_KMS_ADDR
E2E_KMS_ADDR=$(rkl_addr kms)
for svc in ca hsm-mtms hsm-kms mtms kms; do
  var="E2E_$(tr 'a-z-' 'A-Z_' <<<"$svc")_METRICS_ADDR"
  export "$var=127.0.0.1:$(rkl_metrics_port "$svc")"
  e2e_log "$svc metrics at $(e2e_metrics_url "$svc")"
done
export E2E_FLEET_COUNT=$count E2E_FLEET_PREFIX=$prefix E2E_LOCK_SN=$lock_sn
export E2E_RATE_SN=E2E-RATE-UNKNOWN-1

e2e_log "metrics_e2e: scrape every process"
if ! "$RKL_BIN/tests/e2e/metrics_e2e" --gtest_color=no >"$RKL_STATE/logs/metrics_e2e.out" 2>&1; then
  grep -E '^\[  FAILED|Failure|Expected|Which is|actual|: ' "$RKL_STATE/logs/metrics_e2e.out" |
    head -40 >&2
  e2e_fail "metrics_e2e failed (full output: logs/metrics_e2e.out)"
fi
e2e_log "metrics_e2e: $(grep -E '^\[  PASSED' "$RKL_STATE/logs/metrics_e2e.out")"
