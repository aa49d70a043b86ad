#!/usr/bin/env bash
# e2e_flow_retry: a terminal whose ConfirmInstallation answer is lost converges to INSTALLED.
#   bash tests/e2e/flow_retry.sh <build dir> <port base>
#
# rkl-pos's test switch RKL_POS_TEST_DROP_CONFIRM_REPLIES=N makes the simulator throw away
# the answers to its first N ConfirmInstallation calls after KMS acted on them, exactly what
# a lost reply looks like to the terminal.
#  1. One answer lost: the terminal repeats the same call (same session, same proof); KMS
#     answers INSTALLED again without a second install. Provisioning succeeds in one run.
#  2. Every answer of the run lost: KMS is INSTALLED, the terminal is left TMK_LOADED and the
#     run fails. `rkl-pos download-tmk` again authenticates anew, takes the same TMK and
#     confirms it: INSTALLED on both sides, same KCV, one `terminal.installed` and one
#     `install.reconfirm` in the KMS audit, one ACTIVE TMK in HSM #2.
# Then the leakage sweep.
set -euo pipefail
# shellcheck source=tests/e2e/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
e2e_init flow_retry "$2" "$1"

e2e_up
e2e_log "deployment up"

# "<terminal state> <terminal TMK KCV>" and KMS's "<state> <tmk_kcv>" for an SN.
pos_view() {
  rkl_pos status --state-dir "$RKL_STATE/pos" --sn "$1" |
    awk '$1 == "state" {s = $2} $1 == "TMK" && $2 == "KCV" {k = $3} END {print s, k}'
}
kms_view() {
  # shellcheck disable=SC2046
  rklctl kms terminal get "$1" $(e2e_admin) |
    sed -nE 's/.* state=([A-Z_]+) .* tmk_kcv=([0-9A-F]{6}).*/\1 \2/p' | head -1
}
audit_count() {
  e2e_sql rkl_kms "SELECT count(*) FROM audit WHERE sn = '$1' AND action = '$2' AND result = 'OK'"
}
assert_converged() {
  local sn=$1 pos kms
  pos=$(pos_view "$sn")
  kms=$(kms_view "$sn")
  [[ "$pos" == "INSTALLED "?????? ]] || e2e_fail "terminal $sn: the terminal is '$pos'"
  [[ "$kms" == "INSTALLED ${pos#INSTALLED }" ]] ||
    e2e_fail "terminal $sn: KMS says '$kms', the terminal '$pos'"
  (($(audit_count "$sn" terminal.installed) == 1)) ||
    e2e_fail "terminal $sn: not exactly one terminal.installed in the KMS audit"
  local active
  active=$(e2e_sql rkl_hsm_kms "SELECT count(*) FROM hsm_key
    WHERE key_type = 6 AND state = 1 AND bound_sn = '$sn'")
  ((active == 1)) || e2e_fail "terminal $sn: $active ACTIVE TMKs in HSM #2"
}

# 1. One lost answer, repeated within the run.
sn=E2E-RETRY-ONE
export RKL_POS_TEST_DROP_CONFIRM_REPLIES=1
e2e_pos provision --sn "$sn" >"$RKL_STATE/logs/pos-one.out" 2>"$RKL_STATE/logs/pos-one.err" || {
  tail -5 "$RKL_STATE/logs/pos-one.err" >&2
  e2e_fail "terminal $sn: provision failed although only one answer was lost"
}
unset RKL_POS_TEST_DROP_CONFIRM_REPLIES
grep -q "answer to ConfirmInstallation (TERMINAL_STATE_INSTALLED) is dropped" \
  "$RKL_STATE/logs/pos-one.err" || e2e_fail "terminal $sn: the test switch dropped nothing"
assert_converged "$sn"
e2e_log "terminal $sn: first confirmation answer lost, the repeat answered INSTALLED: $(kms_view "$sn")"

# 2. Every answer of the run lost: the terminal stays TMK_LOADED, KMS has installed it.
sn=E2E-RETRY-ALL
export RKL_POS_TEST_DROP_CONFIRM_REPLIES=1000
rc=0
e2e_pos provision --sn "$sn" >"$RKL_STATE/logs/pos-all.out" 2>"$RKL_STATE/logs/pos-all.err" || rc=$?
unset RKL_POS_TEST_DROP_CONFIRM_REPLIES
((rc == 1)) || e2e_fail "terminal $sn: provision with every answer lost exited $rc, expected 1"
[[ "$(pos_view "$sn")" == "TMK_LOADED "* ]] ||
  e2e_fail "terminal $sn: expected TMK_LOADED after the lost answers, got '$(pos_view "$sn")'"
[[ "$(kms_view "$sn")" == "INSTALLED "* ]] ||
  e2e_fail "terminal $sn: KMS should have installed it, says '$(kms_view "$sn")'"
e2e_log "terminal $sn: every confirmation answer lost; terminal TMK_LOADED, KMS INSTALLED"

e2e_pos_env
rkl_pos download-tmk --sn "$sn" >"$RKL_STATE/logs/pos-resume.out" \
  2>"$RKL_STATE/logs/pos-resume.err" || {
  tail -5 "$RKL_STATE/logs/pos-resume.err" >&2
  e2e_fail "terminal $sn: download-tmk from TMK_LOADED failed"
}
assert_converged "$sn"
(($(audit_count "$sn" install.reconfirm) == 1)) ||
  e2e_fail "terminal $sn: no install.reconfirm in the KMS audit"
e2e_log "terminal $sn: download-tmk resumed from TMK_LOADED: $(kms_view "$sn")"

e2e_leakage_sweep
