#!/usr/bin/env bash
# e2e_bad_input: malformed and oversized input to every RPC of every service.
#   bash tests/e2e/bad_input.sh <build dir> <port base>
#
# Brings the system up, provisions one terminal (INSTALLED) and takes a second one as far
# as KMS holding its transport key (TK_RECEIVED), then runs bad_input_e2e (gtest) against
# the live services: each RPC gets bad SNs, wrong lengths, garbage certificates/CSRs/
# packages/key blocks, unknown indexes and enum values, huge fields just under the 1 MiB
# message limit and messages just over it, and must answer the documented code. Afterwards
# every service must be SERVING, the half-provisioned terminal must finish (the bad input
# aimed at it cost it nothing), a new terminal must provision, and no key may have leaked.
set -euo pipefail
# shellcheck source=tests/e2e/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
e2e_init bad_input "$2" "$1"
# This test puts dozens of malformed calls to one SN in a second, each to see its own
# answer; the per-SN rate limits (docs/kms.md and docs/mtms.md "Rate limits", tested in
# kms_pgtest and mtms_pgtest) would answer most of them RESOURCE_EXHAUSTED first. Give this
# deployment's SNs room.
export RKL_KMS_LIMITS_PER_SN_BURST=100000
export RKL_MTMS_LIMITS_PER_SN_BURST=100000

e2e_up
e2e_log "deployment up"

export RKL_POS_STATE_DIR="$RKL_STATE/pos"
export RKL_POS_TERMINAL_ROOT="$RKL_STATE/pki/terminal-root.pem"
export RKL_POS_MTMS RKL_POS_KMS
RKL_POS_MTMS=$(rkl_addr mtms)
RKL_POS_KMS=$(rkl_addr kms)
export RKL_POS_MTMS_AUTHORITY=mtms RKL_POS_KMS_AUTHORITY=kms
export RKL_POS_CA_BUNDLE="$RKL_STATE/pki/ca-bundle.pem"
export RKL_POS_OPERATOR_CARD="$RKL_STATE/pki/operator-operator1.p12"
export RKL_POS_OPERATOR_PIN_FILE="$RKL_STATE/secrets/operator.pin"
pos_log="$RKL_STATE/logs/pos.log"

installed=E2E-BAD-INSTALLED
pending=E2E-BAD-PENDING
rkl_pos provision --sn "$installed" >>"$pos_log" 2>&1 || e2e_fail "terminal $installed: provision failed"
e2e_tk_at_kms "$pending" "$pos_log"
e2e_log "terminal $installed INSTALLED, terminal $pending TK_RECEIVED at KMS"

# shellcheck disable=SC1091
source "$RKL_STATE/ceremony.env"
export E2E_PKI="$RKL_STATE/pki"
export E2E_CA_ADDR E2E_HSM_MTMS_ADDR E2E_HSM_KMS_ADDR E2E_MTMS_ADDR E2E_KMS_ADDR
E2E_CA_ADDR=$(rkl_addr ca)
E2E_HSM_MTMS_ADDR=$(rkl_addr hsm-mtms)
E2E_HSM_KMS_ADDR=$(rkl_addr hsm-kms)
E2E_MTMS_ADDR=$(rkl_addr mtms)
E2E_KMS_ADDR=$(rkl_addr kms)
export E2E_HSM_MTMS_PK_INDEX=$HSM_MTMS_PK_INDEX E2E_HSM_KMS_PK_INDEX=$HSM_KMS_PK_INDEX
export E2E_HSM_KMS_MAK_INDEX=$HSM_KMS_MAK_INDEX
export E2E_OPERATOR_CARD=$RKL_POS_OPERATOR_CARD E2E_OPERATOR_PIN_FILE=$RKL_POS_OPERATOR_PIN_FILE
export E2E_PENDING_SN=$pending E2E_INSTALLED_SN=$installed

e2e_log "bad_input_e2e: every RPC of ca, hsm-mtms, hsm-kms, mtms, kms"
if ! "$RKL_BIN/tests/e2e/bad_input_e2e" --gtest_color=no >"$RKL_STATE/logs/bad_input_e2e.out" 2>&1; then
  grep -E '^\[  FAILED|Failure|Expected|Which is|actual|: ' "$RKL_STATE/logs/bad_input_e2e.out" |
    head -60 >&2
  e2e_fail "bad_input_e2e failed (full output: logs/bad_input_e2e.out)"
fi
e2e_log "bad_input_e2e: $(grep -E '^\[  PASSED' "$RKL_STATE/logs/bad_input_e2e.out")"
# Defects reported to the service owners (bad_input_e2e.cc kKnownDefectHugeField).
grep '^KNOWN DEFECT' "$RKL_STATE/logs/bad_input_e2e.out" >&2 || true

# Every daemon is still alive (same pid) and SERVING.
for svc in "${RKL_SERVICES[@]}"; do
  rkl_running "$svc" || e2e_fail "$svc is no longer running after the bad input"
done
e2e_wait_all_healthy 30

# The terminal the bad input was aimed at finishes normally; a new one provisions.
rkl_pos download-tmk --sn "$pending" >>"$pos_log" 2>&1 ||
  e2e_fail "terminal $pending: download-tmk failed after the bad input ($(tail -1 "$pos_log"))"
after=E2E-BAD-AFTER
rkl_pos provision --sn "$after" >>"$pos_log" 2>&1 || e2e_fail "terminal $after: provision failed after the bad input"
for sn in "$pending" "$after"; do
  # shellcheck disable=SC2046
  rklctl kms terminal get "$sn" $(e2e_admin) | grep -q " state=INSTALLED " ||
    e2e_fail "terminal $sn: not INSTALLED at KMS"
done
e2e_log "after the bad input: $pending and $after INSTALLED"

e2e_leakage_sweep
