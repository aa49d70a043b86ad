#!/usr/bin/env bash
# e2e_flow_leakage: the full flow for one AES128, one AES256 and one TDES2 terminal and a
# small fleet, then the leakage sweep over everything the run left behind.
#   bash tests/e2e/flow_leakage.sh <build dir> <port base>
#
# For each algorithm: `rkl-pos provision --algorithm X` through real MTMS/KMS/HSMs; KMS
# (admin RPC) reports INSTALLED with the algorithm and a TMK KCV equal to the one the
# terminal shows (`rkl-pos status`); the clear TMK the terminal holds (test-only reader)
# has exactly that KCV, computed independently by the openssl CLI; provisioning the
# INSTALLED terminal again is refused. Then a 12-terminal fleet must satisfy every fleet
# invariant (lib.sh e2e_assert_fleet), and the leakage sweep must find no key anywhere.
set -euo pipefail
# shellcheck source=tests/e2e/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
e2e_init flow_leakage "$2" "$1"

e2e_up
e2e_log "deployment up (PKI, CA, both HSMs, ceremony, MTMS, KMS, work key)"


for alg in AES128 AES256 TDES2; do
  sn="E2E-FLOW-$alg"
  if ! e2e_pos provision --sn "$sn" --algorithm "$alg" >"$RKL_STATE/logs/pos-provision-$alg.out" \
    2>"$RKL_STATE/logs/pos-provision-$alg.err"; then
    tail -5 "$RKL_STATE/logs/pos-provision-$alg.err" >&2
    e2e_fail "terminal $sn: provision failed"
  fi
  e2e_assert_installed "$sn" "$alg"
  kms_kcv=$E2E_TMK_KCV
  e2e_log "terminal $sn ($alg): INSTALLED at KMS and terminal, TMK KCV $kms_kcv (checked by openssl)"

  # Negative: an INSTALLED terminal is not provisioned twice.
  rc=0
  e2e_pos provision --sn "$sn" >"$RKL_STATE/logs/pos-reprovision-$alg.out" \
    2>"$RKL_STATE/logs/pos-reprovision-$alg.err" || rc=$?
  ((rc == 1)) || e2e_fail "terminal $sn: provisioning an INSTALLED terminal again exited $rc"
  grep -q "already INSTALLED" "$RKL_STATE/logs/pos-reprovision-$alg.err" ||
    e2e_fail "terminal $sn: the second provision was not refused as already INSTALLED"
done

# Three distinct terminals, three distinct TMKs (and exactly one ACTIVE TMK each in HSM #2).
n=$(e2e_sql rkl_hsm_kms "SELECT count(DISTINCT bound_sn) FROM hsm_key
  WHERE key_type = 6 AND state = 1 AND bound_sn LIKE 'E2E-FLOW-%'")
((n == 3)) || e2e_fail "HSM #2 holds ACTIVE TMKs for $n of the 3 flow terminals"

e2e_log "fleet: 12 terminals, 4 at a time"
if ! e2e_pos fleet --count 12 --concurrency 4 --prefix E2E-FLEET --progress plain \
  --json "$RKL_STATE/logs/fleet.json" >"$RKL_STATE/logs/pos-fleet.out" \
  2>"$RKL_STATE/logs/pos-fleet.err"; then
  cat "$RKL_STATE/logs/pos-fleet.out" >&2
  e2e_fail "the fleet reported failures"
fi
grep -q '"succeeded":12' "$RKL_STATE/logs/fleet.json" || e2e_fail "fleet JSON: not 12 succeeded"
grep -q '"kms_verified_installed":12' "$RKL_STATE/logs/fleet.json" ||
  e2e_fail "fleet JSON: KMS did not verify 12 INSTALLED"
e2e_assert_fleet E2E-FLEET 12

# Controls: the fleet check must fail on a lost, a stuck and a twice-installed terminal,
# for that reason. (Each runs in a subshell, where a failed check ends only the subshell.)
control_must_fail() {  # expected message, count
  local out
  if out=$( (e2e_assert_fleet E2E-FLEET "$2") 2>&1); then
    e2e_fail "control: the fleet check passed, expected: $1"
  fi
  grep -q "$1" <<<"$out" || e2e_fail "control: expected '$1', the check said: $(tail -1 <<<"$out")"
}
control_must_fail "KMS lists 12 terminals with prefix E2E-FLEET, expected 13" 13
e2e_sql rkl_kms "UPDATE terminals SET state = 'TMK_DELIVERED' WHERE sn = 'E2E-FLEET-000002'"
control_must_fail "KMS reports 11 of 12 terminals INSTALLED" 12
e2e_sql rkl_kms "UPDATE terminals SET state = 'INSTALLED' WHERE sn = 'E2E-FLEET-000002'"
# (A superuser's record, far past the chain's end, so no seal reaches it; its MAC is junk.)
e2e_sql rkl_kms "INSERT INTO audit (seq, at_ms, actor, action, sn, detail, result, mac)
  SELECT coalesce(max(seq), 0) + 1000000, 0, 'e2e-control', 'terminal.installed',
  'E2E-FLEET-000003', 'control', 'OK', '\\x00'::bytea FROM audit"
control_must_fail "terminals installed more than once (sn count): E2E-FLEET-000003 2" 12
e2e_log "controls: the fleet check caught a lost, a stuck and a twice-installed terminal"

e2e_leakage_sweep
