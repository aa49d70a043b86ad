#!/usr/bin/env bash
# e2e_tr34: TR-34 terminals (docs/tr34.md) against one deployment that also serves
# patent-protocol terminals, over real processes.
#   bash tests/e2e/tr34.sh <build dir> <port base>
#
# For each TMK algorithm, one TR-34 terminal is manufactured (device key in its secure module,
# certified by the manufacturer's KRD CA; kdh-ca burned in) and provisioned: CT_KDH checked,
# RT_KRD sent, the two-pass key token from HSM #2 verified and installed, the install proof
# accepted. KMS (admin RPC) must report it INSTALLED with protocol TR34 and the TMK KCV the
# terminal shows; openssl must compute that KCV from the TMK the terminal holds; HSM #2 must
# hold exactly one ACTIVE TMK for the SN, bound to the KRD KMS recorded. Refusals over the
# real processes, each leaving the terminal's secure module byte-identical and HSM #2's TMK
# unchanged: provisioning an INSTALLED terminal again; a second device claiming a bound SN
# (genuine KRD CA, another device key); a terminal certified by a KRD CA rkl does not trust.
# Then a mixed fleet (patent and TR-34 terminals at once) must satisfy every fleet invariant
# (lib.sh e2e_assert_fleet), and the leakage sweep (TMKs and device keys of the TR-34
# terminals included) must find no key anywhere.
set -euo pipefail
# shellcheck source=tests/e2e/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
e2e_init tr34 "$2" "$1"

e2e_up
e2e_log "deployment up (PKI with kdh-ca, manufacturer's KRD CA, both HSMs, ceremony, MTMS, KMS, work key, KDH key)"

# rkl-pos for TR-34 terminals of this deployment; TR34_STATE_DIR, when set, replaces the
# simulator's state directory (another device), TR34_KRD_CA_CARD the KRD CA that certifies.
tr34_pos() {
  local flags
  flags="$(rkl_pos_flags) $(rkl_pos_tr34_flags)"
  [[ -z "${TR34_STATE_DIR:-}" ]] || flags=${flags/--state-dir $RKL_STATE\/pos /--state-dir $TR34_STATE_DIR }
  [[ -z "${TR34_KRD_CA_CARD:-}" ]] ||
    flags=${flags/--krd-ca-card $RKL_STATE\/manufacturer\/krd-ca.p12/--krd-ca-card $TR34_KRD_CA_CARD}
  # shellcheck disable=SC2086
  rkl_pos "$1" $flags --protocol tr34 "${@:2}"
}
module_sum() { sha256sum "$RKL_STATE/pos/$1/secure_module.sealed" | awk '{print $1}'; }
hsm_tmk() {  # the ACTIVE TMK rows of HSM #2 for SN $1: "key_index bound_krd"
  e2e_sql rkl_hsm_kms "SELECT key_index, bound_krd FROM hsm_key WHERE key_type = 6
    AND state = 1 AND bound_sn = '$1' ORDER BY key_index"
}
# Runs a command that must exit 1 with a message matching $1 on stderr.
must_refuse() {
  local want=$1 name=$2 rc=0
  shift 2
  "$@" >"$RKL_STATE/logs/$name.out" 2>"$RKL_STATE/logs/$name.err" || rc=$?
  ((rc == 1)) || e2e_fail "$name: exited $rc, expected a refusal (1): $(tail -2 "$RKL_STATE/logs/$name.err")"
  grep -qE "$want" "$RKL_STATE/logs/$name.err" ||
    e2e_fail "$name: refused, but not for '$want': $(tail -2 "$RKL_STATE/logs/$name.err")"
}

for alg in AES128 AES256 TDES2; do
  sn="E2E-TR34-$alg"
  if ! tr34_pos provision --sn "$sn" --algorithm "$alg" >"$RKL_STATE/logs/pos-tr34-$alg.out" \
    2>"$RKL_STATE/logs/pos-tr34-$alg.err"; then
    tail -5 "$RKL_STATE/logs/pos-tr34-$alg.err" >&2
    e2e_fail "TR-34 terminal $sn: provision failed"
  fi
  e2e_assert_installed "$sn" "$alg"
  kms=$E2E_KMS_LINE kms_kcv=$E2E_TMK_KCV
  [[ "$kms" == *"protocol=TR34"* ]] || e2e_fail "terminal $sn: KMS does not say TR34: $kms"
  krd_id=$(sed -nE 's/.* krd_id=([0-9A-F]{64}).*/\1/p' <<<"$kms" | head -1)
  [[ -n "$krd_id" ]] || e2e_fail "terminal $sn: KMS shows no KRD id: $kms"
  rows=$(hsm_tmk "$sn")
  [[ $(wc -l <<<"$rows") == 1 && "$(awk '{print $2}' <<<"$rows")" == "$krd_id" ]] ||
    e2e_fail "terminal $sn: HSM #2's ACTIVE TMKs (index bound_krd) are '$rows', expected one bound to $krd_id"
  # An admin sees the binding (metadata only) through rklctl.
  # shellcheck disable=SC2046
  info=$(rklctl hsm key-info --index "$(awk '{print $1}' <<<"$rows")" --hsm "$(rkl_addr hsm-kms)" \
    --authority hsm-kms $(rkl_admin_flags)) || e2e_fail "rklctl hsm key-info failed"
  grep -q "^bound krd  $krd_id\$" <<<"$info" || e2e_fail "rklctl hsm key-info does not show the KRD binding"
  e2e_log "TR-34 terminal $sn ($alg): INSTALLED at KMS and terminal, TMK KCV $kms_kcv (checked by openssl), bound to KRD ${krd_id:0:16}…"
done

sn=E2E-TR34-AES128
tmk_before=$(hsm_tmk "$sn")
sum_before=$(module_sum "$sn")

# An INSTALLED terminal is not given a key token again.
must_refuse "is already INSTALLED" tr34-reprovision tr34_pos provision --sn "$sn"
[[ $(module_sum "$sn") == "$sum_before" ]] || e2e_fail "a refused provision changed the secure module"

# A second device claiming a bound SN: genuine KRD CA, its own device key.
TR34_STATE_DIR="$RKL_STATE/pos-impostor" must_refuse "PERMISSION_DENIED.*bound to another KRD" tr34-impostor \
  tr34_pos provision --sn "$sn"
[[ "$(hsm_tmk "$sn")" == "$tmk_before" ]] || e2e_fail "the impostor changed HSM #2's TMK for $sn"
e2e_log "refused: a second KRD for a bound SN; the bound terminal's TMK unchanged"

# A terminal certified by a KRD CA rkl does not trust.
rkl_pos krd-ca init --out "$E2E_SCRATCH/rogue-ca" --pin-file "$RKL_STATE/secrets/krd-ca.pin" \
  >/dev/null 2>&1 || e2e_fail "could not make the rogue KRD CA"
TR34_STATE_DIR="$RKL_STATE/pos-rogue" TR34_KRD_CA_CARD="$E2E_SCRATCH/rogue-ca/krd-ca.p12" \
  must_refuse "UNAUTHENTICATED.*issued by a KRD CA this KMS trusts" tr34-rogue-ca \
  tr34_pos provision --sn E2E-TR34-ROGUE
[[ -z "$(hsm_tmk E2E-TR34-ROGUE)" ]] || e2e_fail "HSM #2 made a TMK for a terminal of an untrusted KRD CA"
e2e_log "refused: a terminal certified by an untrusted KRD CA; no TMK made for it"

e2e_log "mixed fleet: 12 patent-protocol and 12 TR-34 terminals at once, 4 at a time each"
# shellcheck disable=SC2046
e2e_pos fleet --count 12 --concurrency 4 --prefix E2E-MIX-P --progress plain \
  --json "$RKL_STATE/logs/fleet-p.json" >"$RKL_STATE/logs/pos-fleet-p.out" \
  2>"$RKL_STATE/logs/pos-fleet-p.err" &
patent_fleet=$!
E2E_BG_PIDS+=("$patent_fleet")
tr34_rc=0
tr34_pos fleet --count 12 --concurrency 4 --prefix E2E-MIX-T --progress plain \
  --json "$RKL_STATE/logs/fleet-t.json" >"$RKL_STATE/logs/pos-fleet-t.out" \
  2>"$RKL_STATE/logs/pos-fleet-t.err" || tr34_rc=$?
patent_rc=0
e2e_wait_pid "$patent_fleet" 900 || patent_rc=$?
E2E_BG_PIDS=()
((patent_rc == 0)) || { cat "$RKL_STATE/logs/pos-fleet-p.out" >&2; e2e_fail "the patent fleet reported failures"; }
((tr34_rc == 0)) || { cat "$RKL_STATE/logs/pos-fleet-t.out" >&2; e2e_fail "the TR-34 fleet reported failures"; }
e2e_assert_fleet E2E-MIX-P 12
e2e_assert_fleet E2E-MIX-T 12

e2e_leakage_sweep
