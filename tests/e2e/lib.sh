# shellcheck shell=bash
# Shared by every end-to-end test in tests/e2e. Sourced, not run.
#
# Each test is one bash script that ctest runs as `bash <script> <build dir> ...`. It brings
# up a whole rkl deployment with deploy/local/rkl.sh — real processes, a private durable
# PostgreSQL cluster, mTLS between every process — in its own state directory
# <build>/e2e/<name> (wiped at start) on its own port range, so two tests can run at once.
# On exit, pass or fail, every process it started and its PostgreSQL are stopped; on success
# the state is removed, on failure it is kept and the test says where the logs are.
#
# Waits are bounded polls with generous limits: a slow machine makes a test slower, never
# red. A test fails only on a broken rule, and the message names the terminal and the step.

E2E_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)

e2e_log() { printf '[%s] e2e %s: %s\n' "$(date +%H:%M:%S)" "${E2E_NAME:-?}" "$*" >&2; }

# Brings the deployment up (rkl_up, logged to logs/rkl-up.log); if it does not come up,
# shows the log's tail and fails the case.
e2e_up() {
  rkl_up >"$RKL_STATE/logs/rkl-up.log" 2>&1 || {
    tail -30 "$RKL_STATE/logs/rkl-up.log" >&2
    e2e_fail "rkl_up: the deployment did not come up"
  }
}
e2e_fail() {
  e2e_log "FAIL: $*"
  exit 1
}

# e2e_init NAME PORT_BASE BUILD_DIR: state dir, ports, binaries, cleanup trap.
e2e_init() {
  E2E_NAME=$1
  export RKL_PORT_BASE=$2
  # The private cluster listens just above the services: no race with a concurrent test.
  export RKL_PG_PORT=$(($2 + 9))
  RKL_BIN=$(cd "$3" && pwd)
  export RKL_BIN
  export RKL_STATE="$RKL_BIN/e2e/$E2E_NAME"
  # shellcheck source=deploy/local/rkl.sh
  source "$E2E_ROOT/deploy/local/rkl.sh"

  E2E_KEYDUMP="$RKL_BIN/pos-sim/rkl-pos-keydump"
  E2E_SWEEP="$RKL_BIN/tests/e2e/e2e_leak_sweep"
  local svc bin
  for svc in "${RKL_SERVICES[@]}"; do
    bin=$(rkl_binary "$svc")
    [[ -x "$bin" ]] || e2e_fail "missing binary $bin: build it first (ninja -C $RKL_BIN)"
  done
  for bin in "$RKL_BIN/pos-sim/rkl-pos" "$RKL_BIN/tools/rklctl/rklctl" "$E2E_KEYDUMP" \
    "$E2E_SWEEP"; do
    [[ -x "$bin" ]] || e2e_fail "missing binary $bin: build it first (ninja -C $RKL_BIN)"
  done

  # A previous run of this test may have left its processes and cluster (a killed ctest).
  if [[ -e "$RKL_STATE" ]]; then
    rkl_stop_all
    rkl_pg_destroy
    rm -rf -- "${RKL_STATE:?}"
  fi
  # Another run on the same ports (a second build tree with the same RKL_E2E_PORT_OFFSET, or
  # cases whose ranges overlap) would make daemons fail to bind or, worse, talk to the other
  # run's processes: refuse to start, naming the port.
  local port
  for ((port = RKL_PORT_BASE; port <= RKL_PG_PORT; port++)); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      e2e_fail "port $port on 127.0.0.1 is already in use (ports $RKL_PORT_BASE..$RKL_PG_PORT" \
        "belong to this case): is another run using them? Give each build tree its own" \
        "-DRKL_E2E_PORT_OFFSET, at least 4000 apart"
    fi
  done
  mkdir -p "$RKL_STATE/logs"
  # Key material of the leakage sweep lives here, outside the swept tree, and is erased.
  E2E_SCRATCH=$(mktemp -d "/tmp/rkl-e2e-$E2E_NAME.XXXXXX")
  chmod 700 "$E2E_SCRATCH"
  E2E_BG_PIDS=()
  E2E_START=$(date +%s)
  trap e2e_cleanup EXIT

  # Recovery knobs of the daemons (environment overrides their config files): a restarted
  # MTMS takes over rows a killed one had claimed after 20 s instead of 2 min, and retry
  # backoff stays short, so fault tests finish in minutes. Production defaults are untouched.
  export RKL_MTMS_FORWARDER_LEASE=20s
  export RKL_MTMS_FORWARDER_MAX_BACKOFF=5s
  e2e_log "state $RKL_STATE, ports $RKL_PORT_BASE..$RKL_PG_PORT, binaries $RKL_BIN"
}

e2e_cleanup() {
  local rc=$?
  set +e
  trap - EXIT
  local p
  for p in "${E2E_BG_PIDS[@]}"; do
    kill -0 "$p" 2>/dev/null && kill -KILL "$p" 2>/dev/null
    wait "$p" 2>/dev/null
  done
  rkl_stop_all
  rm -rf -- "${E2E_SCRATCH:?}"
  local took=$(($(date +%s) - E2E_START))
  if ((rc == 0)); then
    rkl_pg_destroy
    rm -rf -- "${RKL_STATE:?}"
    e2e_log "PASS in ${took}s"
  else
    rkl_pg_stop
    e2e_log "FAILED (exit $rc) after ${took}s; state kept in $RKL_STATE"
    e2e_log "logs: $RKL_STATE/logs"
  fi
  exit "$rc"
}

# Metrics (docs/operations.md "Metrics"). Off in every case unless it calls e2e_metrics_on
# after e2e_init and before e2e_up: then each daemon serves /metrics on its gRPC port + 1000
# (RKL_PORT_BASE+1000 .. +1004), which must be free like the case's own range.
e2e_metrics_on() {
  export RKL_METRICS=1
  local svc port
  for svc in "${RKL_SERVICES[@]}"; do
    port=$(rkl_metrics_port "$svc")
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      e2e_fail "metrics port $port of $svc on 127.0.0.1 is already in use (a case with metrics" \
        "on also owns RKL_PORT_BASE+1000..+1004): is another run or case using it?"
    fi
  done
}
# The URL of a process's /metrics (ca, hsm-mtms, hsm-kms, mtms, kms), e.g.
# http://127.0.0.1:27104/metrics for kms when RKL_PORT_BASE is 26100.
e2e_metrics_url() { rkl_metrics_url "$1" || e2e_fail "no metrics URL for '$1'"; }
# A process's /metrics text on stdout (one scrape, made when called); fails the case when
# the endpoint does not answer 200.
e2e_metrics_scrape() { rkl_metrics_scrape "$1" || e2e_fail "scraping $(rkl_metrics_url "$1") failed"; }

e2e_admin() { echo "$(rkl_admin_flags) --authority kms --kms $(rkl_addr kms)"; }

# rkl-pos with the deployment's flags and the admin certificate (KMS verification).
e2e_pos() {
  # shellcheck disable=SC2046
  rkl_pos "$1" $(rkl_pos_flags) "${@:2}"
}

# The deployment's rkl-pos settings as RKL_POS_* variables, for the single-step commands
# (manufacture, install-cert, generate-tk, submit, download-tmk), which each accept only
# their own flags: `e2e_pos_env; rkl_pos download-tmk --sn SN`.
e2e_pos_env() {
  export RKL_POS_STATE_DIR="$RKL_STATE/pos" RKL_POS_TERMINAL_ROOT="$RKL_STATE/pki/terminal-root.pem"
  export RKL_POS_MTMS="$(rkl_addr mtms)" RKL_POS_MTMS_AUTHORITY=mtms
  export RKL_POS_KMS="$(rkl_addr kms)" RKL_POS_KMS_AUTHORITY=kms
  export RKL_POS_CA_BUNDLE="$RKL_STATE/pki/ca-bundle.pem"
  export RKL_POS_OPERATOR_CARD="$RKL_STATE/pki/operator-operator1.p12"
  export RKL_POS_OPERATOR_PIN_FILE="$RKL_STATE/secrets/operator.pin"
  export RKL_POS_ADMIN_CERT="$RKL_STATE/pki/admin-${RKL_ADMINS[0]}/cert.pem"
  export RKL_POS_ADMIN_KEY="$RKL_STATE/pki/admin-${RKL_ADMINS[0]}/key.pem"
}

# The KCV of a clear key, computed by OpenSSL alone (PROTOCOL §1): AES: CMAC of a zero
# block; TDES: ECB of a zero block. Independent of rkl's own crypto.
e2e_openssl_kcv() {  # algorithm (AES128, AES256, TDES2), key hex
  local alg=$1 hex=$2 out
  case $alg in
    AES128 | AES256)
      local cipher=AES-128-CBC
      [[ $alg == AES256 ]] && cipher=AES-256-CBC
      out=$(printf '\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0' |
        openssl mac -cipher "$cipher" -macopt "hexkey:$hex" CMAC)
      ;;
    TDES2)
      out=$(printf '\0\0\0\0\0\0\0\0' |
        openssl enc -des-ede-ecb -K "$hex" -nopad |
        od -An -tx1 | tr -d ' \n')
      ;;
  esac
  printf '%s' "${out:0:6}" | tr 'a-f' 'A-F'
}

# One terminal that must be INSTALLED with the TMK of algorithm $2: KMS (admin RPC) says
# INSTALLED with that algorithm; the terminal says INSTALLED with the same TMK KCV; openssl
# computes that KCV from the TMK the terminal holds (test-only reader). Leaves KMS's line in
# E2E_KMS_LINE and the KCV in E2E_TMK_KCV.
e2e_assert_installed() {
  local sn=$1 alg=$2 kms kms_kcv pos pos_state pos_kcv tmk_hex ossl_kcv
  # shellcheck disable=SC2046
  kms=$(rklctl kms terminal get "$sn" $(e2e_admin)) || e2e_fail "terminal $sn: KMS GetTerminal failed"
  [[ "$kms" == *" state=INSTALLED "* ]] || e2e_fail "terminal $sn: KMS reports: $kms"
  [[ "$kms" == *" algorithm=$alg "* ]] || e2e_fail "terminal $sn: KMS algorithm is not $alg: $kms"
  kms_kcv=$(sed -nE 's/.* tmk_kcv=([0-9A-F]{6}) .*/\1/p' <<<"$kms" | head -1)
  pos=$(rkl_pos status --state-dir "$RKL_STATE/pos" --sn "$sn")
  pos_state=$(awk '$1 == "state" {print $2}' <<<"$pos")
  pos_kcv=$(awk '$1 == "TMK" && $2 == "KCV" {print $3}' <<<"$pos")
  [[ "$pos_state" == INSTALLED ]] || e2e_fail "terminal $sn: the terminal is '$pos_state'"
  [[ -n "$kms_kcv" && "$pos_kcv" == "$kms_kcv" ]] ||
    e2e_fail "terminal $sn: TMK KCV terminal '$pos_kcv' vs KMS '$kms_kcv'"
  tmk_hex=$("$E2E_KEYDUMP" --state-dir "$RKL_STATE/pos" "$sn" | awk '$2 == "TMK" {print $3}')
  [[ -n "$tmk_hex" ]] || e2e_fail "terminal $sn: no TMK in the secure module"
  ossl_kcv=$(e2e_openssl_kcv "$alg" "$tmk_hex")
  unset tmk_hex
  [[ "$ossl_kcv" == "$kms_kcv" ]] ||
    e2e_fail "terminal $sn: openssl computes KCV '$ossl_kcv' of the held TMK, KMS says '$kms_kcv'"
  E2E_KMS_LINE=$kms
  E2E_TMK_KCV=$kms_kcv
}

# psql -At on a service database (as the cluster superuser, over the private socket).
e2e_sql() {
  local db=$1 sql=$2
  rkl_psql -d "$db" -At -F ' ' -c "$sql"
}

# Takes terminal $1 through manufacture, install-cert, generate-tk and submit (rkl-pos's
# single steps, RKL_POS_* from e2e_pos_env; output appended to $2), then waits (bounded) until
# MTMS has forwarded its transport key: KMS holds it as TK_RECEIVED.
e2e_tk_at_kms() {
  local sn=$1 log=$2 step i
  for step in manufacture install-cert generate-tk submit; do
    rkl_pos "$step" --sn "$sn" >>"$log" 2>&1 || e2e_fail "terminal $sn: $step failed"
  done
  for ((i = 0; i < 600; i++)); do
    # shellcheck disable=SC2046
    if rklctl kms terminal get "$sn" $(e2e_admin) 2>/dev/null | grep -q " state=TK_RECEIVED "; then
      return 0
    fi
    sleep 0.2
  done
  e2e_fail "terminal $sn: KMS never received its transport key"
}

# Count of INSTALLED terminals KMS reports (admin RPC); empty if KMS does not answer.
e2e_kms_installed() {
  # shellcheck disable=SC2046
  rklctl kms stats $(e2e_admin) 2>/dev/null | sed -nE 's/^(TERMINAL_STATE_)?INSTALLED=([0-9]+)$/\2/p'
}

# Waits until KMS reports at least $1 INSTALLED terminals, while background pid $2 runs.
e2e_wait_installed() {
  local want=$1 pid=$2 limit=${3:-600} n i
  for ((i = 0; i < limit * 5; i++)); do
    n=$(e2e_kms_installed)
    if [[ -n "$n" ]] && ((n >= want)); then
      echo "$n"
      return 0
    fi
    kill -0 "$pid" 2>/dev/null || e2e_fail "the fleet exited before $want terminals were INSTALLED"
    sleep 0.2
  done
  e2e_fail "fewer than $want terminals INSTALLED after ${limit}s"
}

# Transient failures the fleet has met and retried so far (rkl-pos logs each retry).
e2e_fleet_retries() {
  grep -c 'resuming in' "$RKL_STATE/logs/pos-fleet.err" 2>/dev/null || true
}

# Waits until the fleet (background pid $2) has retried more than $1 times, at most $3 s.
e2e_wait_fleet_retries_above() {
  local before=$1 pid=$2 limit=$3 i
  for ((i = 0; i < limit * 5; i++)); do
    (($(e2e_fleet_retries) > before)) && return 0
    kill -0 "$pid" 2>/dev/null || e2e_fail "the fleet exited while waiting for it to meet the outage"
    sleep 0.2
  done
  e2e_fail "no terminal of the fleet met the outage within ${limit}s"
}

# Waits for background pid $1 for at most $2 seconds; returns its exit status.
e2e_wait_pid() {
  local pid=$1 limit=$2 i
  for ((i = 0; i < limit * 2; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.5
  done
  kill -0 "$pid" 2>/dev/null && e2e_fail "background process $pid still running after ${limit}s (a stuck terminal?)"
  local rc=0
  wait "$pid" || rc=$?
  return "$rc"
}

e2e_wait_all_healthy() {
  local svc
  for svc in "${RKL_SERVICES[@]}"; do rkl_wait_healthy "$svc" "${1:-120}"; done
}

# A terminal the simulator did not finish is resumed where it stopped, as a real terminal
# retries: `rkl-pos provision --sn` on the existing secure module. Bounded.
e2e_resume_unfinished() {
  local prefix=$1 sn state rest
  local -a unfinished=()
  while read -r sn state rest; do
    [[ "$sn" == "$prefix"-* && "$state" != INSTALLED ]] && unfinished+=("$sn")
  done < <(rkl_pos status --state-dir "$RKL_STATE/pos")
  ((${#unfinished[@]} == 0)) && return 0
  e2e_log "resuming ${#unfinished[@]} unfinished terminal(s): ${unfinished[*]}"
  for sn in "${unfinished[@]}"; do
    # shellcheck disable=SC2046
    if ! e2e_pos provision --sn "$sn" --retries 4 $(rkl_pos_tr34_flags) \
      >>"$RKL_STATE/logs/pos-resume.out" \
      2>>"$RKL_STATE/logs/pos-resume.err"; then
      e2e_log "terminal $sn: provision (resume) failed: $(tail -1 "$RKL_STATE/logs/pos-resume.err")"
    fi
  done
}

# The proof a fault test exists for. For the COUNT terminals <prefix>-000001..:
#  - KMS (admin RPC) lists exactly COUNT, every one INSTALLED (none lost, none stuck);
#  - every simulated terminal holds a TMK whose KCV is the one KMS recorded;
#  - the KMS audit shows exactly one `terminal.installed` per SN (none twice);
#  - the KMS database holds COUNT distinct TMK indexes; HSM #2 holds exactly one ACTIVE TMK
#    per SN, COUNT in all, at the index KMS recorded (no TMK shared or duplicated);
#  - the TMKs the terminals actually hold are pairwise different (and so are TEKs and AUKs of
#    patent-protocol terminals and the device keys of TR-34 terminals).
e2e_assert_fleet() {
  local prefix=$1 count=$2 out="$E2E_SCRATCH/assert"
  mkdir -p "$out"
  local like="${prefix}-%"

  # shellcheck disable=SC2046
  rklctl kms terminal list --prefix "$prefix-" --all $(e2e_admin) >"$out/kms-list" ||
    e2e_fail "rklctl kms terminal list failed"
  local listed installed
  listed=$(grep -c "^$prefix-" "$out/kms-list" || true)
  installed=$(grep -c "^$prefix-.* state=INSTALLED " "$out/kms-list" || true)
  ((listed == count)) || e2e_fail "KMS lists $listed terminals with prefix $prefix, expected $count (lost terminals)"
  if ((installed != count)); then
    grep -v " state=INSTALLED " "$out/kms-list" | grep "^$prefix-" | head -20 >&2
    e2e_fail "KMS reports $installed of $count terminals INSTALLED (stuck ones above)"
  fi

  # The simulator's view, and the same TMK KCV on both sides.
  rkl_pos status --state-dir "$RKL_STATE/pos" | awk -v p="$prefix-" 'index($1, p) == 1' \
    >"$out/pos-status"
  local sims
  sims=$(wc -l <"$out/pos-status")
  ((sims == count)) || e2e_fail "the simulator holds $sims terminals with prefix $prefix, expected $count"
  sed -nE 's/^([A-Z0-9-]+) +state=INSTALLED +algorithm=[A-Z0-9]+ +tmk_kcv=([0-9A-F]{6}) .*/\1 \2/p' \
    "$out/kms-list" | sort >"$out/kms-kcv"
  local sn state tmk kms_kcv
  local -A kms_kcvs=()
  while read -r sn kms_kcv; do kms_kcvs[$sn]=$kms_kcv; done <"$out/kms-kcv"
  while read -r sn state _ _ _ tmk _; do
    kms_kcv=${kms_kcvs[$sn]:-}
    [[ -n "$kms_kcv" ]] || e2e_fail "terminal $sn: no TMK KCV at KMS"
    [[ "$tmk" == "$kms_kcv" ]] ||
      e2e_fail "terminal $sn: the terminal's TMK KCV $tmk differs from KMS's $kms_kcv"
    # A terminal left TMK_LOADED (its confirmation's answer lost) is stuck, not done: re-running
    # download-tmk finishes it (docs/pos-sim.md), and the resume above has done so.
    [[ "$state" == INSTALLED ]] ||
      e2e_fail "terminal $sn: the terminal is $state, KMS says INSTALLED (stuck terminal)"
  done <"$out/pos-status"

  # None twice: exactly one install per SN in the KMS audit — its chain and the records not
  # yet sealed into it (each record is in one of the two; one statement, one snapshot).
  local twice once records="(SELECT sn, action FROM audit UNION ALL
    SELECT sn, action FROM audit_pending) a"
  twice=$(e2e_sql rkl_kms "SELECT sn, count(*) FROM $records WHERE action = 'terminal.installed'
    AND sn LIKE '$like' GROUP BY sn HAVING count(*) <> 1")
  [[ -z "$twice" ]] || e2e_fail "terminals installed more than once (sn count): $twice"
  once=$(e2e_sql rkl_kms "SELECT count(DISTINCT sn) FROM $records
    WHERE action = 'terminal.installed' AND sn LIKE '$like'")
  ((once == count)) || e2e_fail "the KMS audit shows $once installs for $count terminals"

  # No TMK duplicated: distinct indexes at KMS, one ACTIVE TMK per SN in HSM #2, same index.
  local row
  row=$(e2e_sql rkl_kms "SELECT count(*), count(DISTINCT tmk_index), count(tmk_index)
    FROM terminals WHERE sn LIKE '$like'")
  [[ "$row" == "$count $count $count" ]] ||
    e2e_fail "KMS terminals/distinct TMK indexes/TMK indexes = $row, expected $count each"
  twice=$(e2e_sql rkl_hsm_kms "SELECT bound_sn, count(*) FROM hsm_key WHERE key_type = 6
    AND state = 1 AND bound_sn LIKE '$like' GROUP BY bound_sn HAVING count(*) <> 1")
  [[ -z "$twice" ]] || e2e_fail "HSM #2 holds more than one ACTIVE TMK for (sn count): $twice"
  e2e_sql rkl_hsm_kms "SELECT bound_sn, key_index FROM hsm_key WHERE key_type = 6
    AND state = 1 AND bound_sn LIKE '$like' ORDER BY bound_sn" >"$out/hsm-tmk"
  e2e_sql rkl_kms "SELECT sn, tmk_index FROM terminals WHERE sn LIKE '$like' ORDER BY sn" \
    >"$out/kms-tmk"
  local active
  active=$(wc -l <"$out/hsm-tmk")
  ((active == count)) || e2e_fail "HSM #2 holds $active ACTIVE TMKs for $count terminals"
  if ! diff -q "$out/hsm-tmk" "$out/kms-tmk" >/dev/null; then
    diff "$out/kms-tmk" "$out/hsm-tmk" | head -10 >&2
    e2e_fail "KMS's TMK index differs from HSM #2's ACTIVE TMK for the terminals above"
  fi

  # The keys themselves, as the terminals hold them (test-only reader): pairwise distinct.
  "$E2E_KEYDUMP" --state-dir "$RKL_STATE/pos" >"$out/keys" || e2e_fail "rkl-pos-keydump failed"
  # Patent-protocol terminals hold a TEK and an AUK, TR-34 terminals a KRD key (their device
  # key) instead; KMS says which is which.
  local kind n dups want tr34
  tr34=$(grep -c "^$prefix-.* protocol=TR34" "$out/kms-list" || true)
  for kind in TMK TEK AUK KRDKEY; do
    case $kind in
      TMK) want=$count ;;
      TEK | AUK) want=$((count - tr34)) ;;
      KRDKEY) want=$tr34 ;;
    esac
    n=$(awk -v p="$prefix-" -v k="$kind" 'index($1, p) == 1 && $2 == k' "$out/keys" | wc -l)
    ((n == want)) || e2e_fail "$n of $count terminals hold a $kind, expected $want"
    dups=$(awk -v p="$prefix-" -v k="$kind" 'index($1, p) == 1 && $2 == k {print $3}' \
      "$out/keys" | sort | uniq -d | wc -l)
    ((dups == 0)) || e2e_fail "$dups ${kind}s are shared by two or more terminals"
  done
  rm -rf -- "$out"
  e2e_log "verified: $count/$count INSTALLED at KMS, KCVs match, one install each in the audit, $count distinct TMK indexes, one ACTIVE TMK per SN in HSM #2, $count pairwise different TMKs ($tr34 of them TR-34)"
}

# The leakage sweep. Every clear key a test terminal knows (TEK, AUK, TMK, via the test-only
# rkl-pos-keydump) is searched — raw, upper/lower hex, base64 (standard and URL-safe) at
# every alignment — in: a pg_dump of every database of the cluster, the PostgreSQL data
# directory itself (tables, WAL), every log, the simulator's outputs, and everything under
# the state directory (PKI, configs, secrets, sealed secure modules). Zero hits required.
# A control first plants one key, in every form, into a scratch copy of a real log and
# requires the same sweep to find all of them, so the sweep is shown able to fail.
e2e_leakage_sweep() {
  local keys="$E2E_SCRATCH/keys" dump="$RKL_STATE/sweep"
  "$E2E_KEYDUMP" --state-dir "$RKL_STATE/pos" >"$keys" || e2e_fail "rkl-pos-keydump failed"
  local nkeys
  nkeys=$(wc -l <"$keys")
  ((nkeys > 0)) || e2e_fail "no terminal keys to search for"

  mkdir -p "$dump"
  local db
  for db in postgres $(e2e_sql postgres "SELECT datname FROM pg_database
      WHERE datname LIKE 'rkl_%' ORDER BY 1"); do
    rkl_pg_as_owner "$RKL_PG_BIN/pg_dump" -h "$(rkl_pg_socket)" -p "$(rkl_pg_port)" -U postgres \
      -d "$db" >"$dump/pg_dump-$db.sql" || e2e_fail "pg_dump $db failed"
  done
  local dbs
  dbs=$(find "$dump" -name 'pg_dump-rkl_*' | wc -l)
  ((dbs == ${#RKL_SERVICES_WITH_DB[@]})) ||
    e2e_fail "dumped $dbs service databases, expected ${#RKL_SERVICES_WITH_DB[@]}"

  # Control: the sweep must find a planted key in every form.
  local control="$E2E_SCRATCH/control"
  mkdir -p "$control"
  cp "$RKL_STATE/logs/kms.log" "$control/kms.log.copy"
  "$E2E_SWEEP" --keys "$keys" --plant "$control/kms.log.copy" >"$E2E_SCRATCH/planted" ||
    e2e_fail "could not plant the control key"
  local forms found
  forms=$(wc -l <"$E2E_SCRATCH/planted")
  found=0
  "$E2E_SWEEP" --keys "$keys" "$control" >"$E2E_SCRATCH/control.out" || found=$?
  ((found == 1)) || e2e_fail "control: the sweep did not report the planted key (exit $found)"
  local form
  while read -r form; do
    grep -q " as $form\$" "$E2E_SCRATCH/control.out" ||
      e2e_fail "control: the sweep missed the key planted as $form"
  done <"$E2E_SCRATCH/planted"
  e2e_log "leakage control: a planted key was found in all $forms forms"

  local pgdir
  pgdir=$(rkl_pg_dir)
  local -a roots=("$RKL_STATE")
  [[ "$pgdir" == "$RKL_STATE"/* ]] || roots+=("$pgdir")
  if ! "$E2E_SWEEP" --keys "$keys" "${roots[@]}" >"$RKL_STATE/logs/leak-sweep.out"; then
    head -20 "$RKL_STATE/logs/leak-sweep.out" >&2
    e2e_fail "LEAK: clear terminal keys found (above; full list in logs/leak-sweep.out)"
  fi
  e2e_log "leakage sweep: $(tail -1 "$RKL_STATE/logs/leak-sweep.out")"
  rm -f -- "$keys"
}
