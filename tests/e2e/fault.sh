#!/usr/bin/env bash
# e2e_fault_<target>: a crash in the middle of a 200-terminal mixed fleet (patent-protocol
# and TR-34 terminals alternating, `rkl-pos fleet --protocol mixed`), then recovery.
#   bash tests/e2e/fault.sh <build dir> <port base> kms|hsm-kms|mtms|postgres
#
# `rkl-pos fleet --count 200 --concurrency 16` runs in the background; once KMS reports
# some terminals INSTALLED (and while the fleet is still going), the target is killed with
# SIGKILL (PostgreSQL: an immediate shutdown, i.e. a crash with WAL recovery on restart),
# left down until a terminal of the fleet has met the outage, and restarted. The fleet rides it out with its bounded retry
# of transient failures; any terminal it still reports failed is resumed where it stopped
# with `rkl-pos provision --sn` (as a real terminal retries). The test fails if a terminal
# is lost (not at KMS), stuck (not INSTALLED after the bounded waits), installed twice, or
# shares its TMK (lib.sh e2e_assert_fleet), and if any clear key leaked into a database,
# a log or an output during the fault (lib.sh e2e_leakage_sweep).
set -euo pipefail
# shellcheck source=tests/e2e/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
target=${3:?usage: fault.sh <build dir> <port base> kms|hsm-kms|mtms|postgres}
case $target in
  kms | hsm-kms | mtms | postgres) ;;
  *) echo "fault.sh: unknown target $target" >&2; exit 2 ;;
esac
e2e_init "fault_${target//-/_}" "$2" "$1"

COUNT=200
CONCURRENCY=16
prefix="E2E-F-$(tr '[:lower:]' '[:upper:]' <<<"${target//-/}")"

e2e_up
e2e_log "deployment up; mixed fleet of $COUNT terminals ($prefix-*, half TR-34), $CONCURRENCY at a time"

# shellcheck disable=SC2046
rkl_pos fleet $(rkl_pos_flags) $(rkl_pos_tr34_flags) --protocol mixed --count "$COUNT" \
  --concurrency "$CONCURRENCY" --prefix "$prefix" \
  --progress plain --forwarding-timeout 120s --json "$RKL_STATE/logs/fleet.json" \
  >"$RKL_STATE/logs/pos-fleet.out" 2>"$RKL_STATE/logs/pos-fleet.err" &
fleet=$!
E2E_BG_PIDS+=("$fleet")

# Strike once the flow runs at full speed but most of the fleet is still to come.
installed=$(e2e_wait_installed 10 "$fleet")
((installed < COUNT)) || e2e_fail "the fleet finished before the fault could be injected"
retries_before=$(e2e_fleet_retries)
case $target in
  postgres)
    e2e_log "CRASH: PostgreSQL immediate shutdown with $installed/$COUNT INSTALLED"
    rkl_pg_crash
    ;;
  *)
    e2e_log "CRASH: kill -9 $target (pid $(rkl_pid "$target")) with $installed/$COUNT INSTALLED"
    rkl_stop "$target" KILL
    ;;
esac
kill -0 "$fleet" 2>/dev/null || e2e_fail "the fleet ended while $target was down"
# Down until a terminal has met the outage (an event, however slow the machine): a restart
# before any terminal noticed would test nothing.
e2e_wait_fleet_retries_above "$retries_before" "$fleet" 300
kill -0 "$fleet" 2>/dev/null || e2e_fail "the fleet ended while $target was down"

case $target in
  postgres)
    rkl_pg_start || e2e_fail "PostgreSQL did not restart"
    e2e_log "PostgreSQL restarted (crash recovery done); waiting for every service"
    e2e_wait_all_healthy 180
    ;;
  *)
    rkl_start "$target"
    rkl_wait_healthy "$target" 180
    e2e_log "$target restarted and SERVING"
    ;;
esac

# Bounded: 200 terminals with retries finish in a few minutes even on a loaded machine.
fleet_rc=0
e2e_wait_pid "$fleet" 900 || fleet_rc=$?
E2E_BG_PIDS=()
e2e_log "fleet exited $fleet_rc: $(grep -E 'succeeded|failed' "$RKL_STATE/logs/pos-fleet.out" | head -2 | tr '\n' ' ')"
((fleet_rc == 0)) || sed -n '/failures by reason/,/^$/p' "$RKL_STATE/logs/pos-fleet.out" >&2
e2e_log "terminals that met the outage and resumed: $(e2e_fleet_retries) retries by the fleet"

e2e_resume_unfinished "$prefix"
e2e_assert_fleet "$prefix" "$COUNT"

# The outage must have been noticed and recovered from, not silently skipped: the fault hit
# a running system (the fleet was mid-way), and every service is healthy again.
e2e_wait_all_healthy 60
e2e_leakage_sweep
