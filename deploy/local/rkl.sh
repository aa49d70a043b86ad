# shellcheck shell=bash
# Runs a whole rkl deployment on this machine: PKI, CA, two HSMs, MTMS and KMS with mTLS
# on loopback. Sourced by deploy/local/demo and by the end-to-end tests; not run directly.
#
# Everything lives in $RKL_STATE:
#   pki/        rklctl pki init output (service identities, CA bundle, terminal root, operator card)
#   secrets/    database DSNs (<svc>.dsn the runtime role, <svc>-owner.dsn the owner that
#               migrates), CA master key, LMKs, MTMS's and KMS's audit MAC keys, operator
#               PIN (all mode 0600)
#   config/     one YAML file per process
#   logs/       one log per process
#   run/        pid files
#   pos/        the simulated terminals' secure modules
#   manufacturer/  the terminal manufacturer's TR-34 KRD CA (krd-ca.p12 under a PIN in
#               secrets/krd-ca.pin, krd-ca.pem), which certifies TR-34 terminals' device keys
#   anchors/    each HSM's audit anchor, <hsm>.anchor (docs/hsm.md, Audit)
#   ceremony.env  PK/MAK key indexes and KCVs of both HSMs (no key material)
# Ports: RKL_PORT_BASE (default 50051) + 0 ca, +1 hsm-mtms, +2 hsm-kms, +3 mtms, +4 kms.
# Metrics (docs/operations.md "Metrics"): with RKL_METRICS=1 every daemon serves Prometheus
# text on http://127.0.0.1:<its gRPC port + 1000>/metrics (metrics.listen; the demo turns it
# on, the end-to-end tests leave it off unless a case asks: tests/e2e/lib.sh e2e_metrics_on).
# rkl_metrics_url SVC names the URL, rkl_metrics_scrape SVC fetches it.
#
# People (docs/pki.md "Custody"), all from `rklctl pki init`: admins alice and bob
# (admin:alice, admin:bob — any later privileged certificate takes both: one requests, the
# other approves) and key custodians carol and dave (custodian:carol, custodian:dave — the
# only identities the HSMs accept for the PK/MAK ceremony, which needs both).

: "${RKL_STATE:?RKL_STATE must name the state directory}"
: "${RKL_BIN:?RKL_BIN must name the build directory}"
RKL_PORT_BASE=${RKL_PORT_BASE:-50051}
RKL_METRICS=${RKL_METRICS:-0}
RKL_METRICS_PORT_OFFSET=1000
RKL_SERVICES=(ca hsm-mtms hsm-kms mtms kms)
RKL_ADMINS=(alice bob)
RKL_CUSTODIANS=(carol dave)

source "$(dirname "${BASH_SOURCE[0]}")/pg.sh"

rkl_log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
rkl_die() { rkl_log "ERROR: $*"; exit 1; }

rkl_port() {
  case $1 in
    ca) echo $((RKL_PORT_BASE + 0)) ;;
    hsm-mtms) echo $((RKL_PORT_BASE + 1)) ;;
    hsm-kms) echo $((RKL_PORT_BASE + 2)) ;;
    mtms) echo $((RKL_PORT_BASE + 3)) ;;
    kms) echo $((RKL_PORT_BASE + 4)) ;;
  esac
}
rkl_addr() { echo "localhost:$(rkl_port "$1")"; }

# The Prometheus endpoint of a daemon (whether or not RKL_METRICS turned it on).
rkl_metrics_port() {
  local p
  p=$(rkl_port "$1")
  [[ -n "$p" ]] || { echo "rkl_metrics_port: unknown process '$1' (one of: ${RKL_SERVICES[*]})" >&2; return 1; }
  echo $((p + RKL_METRICS_PORT_OFFSET))
}
rkl_metrics_url() {
  local p
  p=$(rkl_metrics_port "$1") || return 1
  echo "http://127.0.0.1:$p/metrics"
}

# Prints a daemon's /metrics (Prometheus text format) on stdout; fails, naming the URL, when
# it does not answer 200. Plain bash (HTTP/1.0 over /dev/tcp): no curl needed.
rkl_metrics_scrape() {
  local svc=$1 port status line
  port=$(rkl_metrics_port "$svc") || return 1
  (
    exec 3<>"/dev/tcp/127.0.0.1/$port" ||
      { echo "rkl_metrics_scrape: nothing listens on $(rkl_metrics_url "$svc")" >&2; exit 1; }
    printf 'GET /metrics HTTP/1.0\r\nHost: 127.0.0.1:%s\r\nAccept: text/plain\r\n\r\n' "$port" >&3
    IFS= read -r status <&3 || status=""
    status=${status%$'\r'}
    [[ "$status" =~ ^HTTP/1\.[01]\ 200 ]] ||
      { echo "rkl_metrics_scrape: $(rkl_metrics_url "$svc") answered '${status:-nothing}'" >&2; exit 1; }
    while IFS= read -r line <&3; do
      [[ -z "${line%$'\r'}" ]] && break
    done
    cat <&3
  )
}

rkl_binary() {
  case $1 in
    ca) echo "$RKL_BIN/services/ca/rkl-ca" ;;
    hsm-*) echo "$RKL_BIN/hsm-sim/rkl-hsm" ;;
    mtms) echo "$RKL_BIN/services/mtms/rkl-mtms" ;;
    kms) echo "$RKL_BIN/services/kms/rkl-kms" ;;
  esac
}

rklctl() { "$RKL_BIN/tools/rklctl/rklctl" "$@"; }
rkl_pos() { "$RKL_BIN/pos-sim/rkl-pos" "$@"; }

# Admin connection flags for rklctl, as administrator $1 (default the first, alice).
rkl_admin_flags() {
  local who=${1:-${RKL_ADMINS[0]}}
  echo "--tls-ca $RKL_STATE/pki/ca-bundle.pem --tls-cert $RKL_STATE/pki/admin-$who/cert.pem" \
    "--tls-key $RKL_STATE/pki/admin-$who/key.pem"
}

# Connection flags as key custodian $1 (carol or dave).
rkl_custodian_flags() {
  local who=$1
  echo "--tls-ca $RKL_STATE/pki/ca-bundle.pem --tls-cert $RKL_STATE/pki/custodian-$who/cert.pem" \
    "--tls-key $RKL_STATE/pki/custodian-$who/key.pem"
}

# `rklctl pki revoke` flag: every service refreshes its CRL before the command returns.
rkl_notify_flags() {
  local svc list=()
  for svc in "${RKL_SERVICES[@]}"; do list+=("$svc=$(rkl_addr "$svc")"); done
  echo "--notify $(IFS=,; echo "${list[*]}")"
}

rkl_secret_file() {  # name, command that prints the content
  local f="$RKL_STATE/secrets/$1"
  [[ -s "$f" ]] && return 0
  (umask 077 && eval "$2" >"$f")
}

# PKI bootstrap (once): every service identity, both admins, both custodians, one operator card.
rkl_pki_init() {
  if [[ -s "$RKL_STATE/pki/ca-bundle.pem" ]]; then
    # A state directory from before custodians had their own certificates cannot be reused.
    [[ -s "$RKL_STATE/pki/custodian-${RKL_CUSTODIANS[0]}/cert.pem" ]] ||
      rkl_die "$RKL_STATE holds a PKI without custodian certificates (an older layout); start over with --reset"
    [[ -s "$RKL_STATE/pki/kdh-ca.pem" ]] ||
      rkl_die "$RKL_STATE holds a PKI without the TR-34 kdh-ca (an older layout); start over with --reset"
    return 0
  fi
  mkdir -p "$RKL_STATE/secrets" && chmod 700 "$RKL_STATE/secrets"
  rkl_secret_file operator.pin "head -c 9 /dev/urandom | od -An -tx1 | tr -d ' \n'; echo"
  rm -rf "$RKL_STATE/pki"
  rkl_log "PKI: bootstrapping the CA (terminal-root, operator-ca, service-ca, kdh-ca) and every identity"
  # pki init creates the CA's schema, so it runs as the database's owner.
  rklctl pki init --db "$(rkl_pg_owner_dsn ca)" --master-key-file "$RKL_STATE/secrets/ca-master.key" \
    --create-master-key --out "$RKL_STATE/pki" --operator-id operator1 \
    --admins "$(IFS=,; echo "${RKL_ADMINS[*]}")" \
    --custodians "$(IFS=,; echo "${RKL_CUSTODIANS[*]}")" \
    --operator-pin-file "$RKL_STATE/secrets/operator.pin" >"$RKL_STATE/logs/pki-init.log" ||
    { cat "$RKL_STATE/logs/pki-init.log" >&2; rkl_die "pki init failed"; }
}

# The terminal manufacturer's TR-34 KRD CA (once): outside rkl, as a manufacturer would run it;
# rkl trusts its certificate (tr34.krd_ca_files of HSM #2 and KMS).
rkl_krd_ca_init() {
  [[ -s "$RKL_STATE/manufacturer/krd-ca.pem" ]] && return 0
  rkl_secret_file krd-ca.pin "head -c 9 /dev/urandom | od -An -tx1 | tr -d ' \n'; echo"
  rm -rf "$RKL_STATE/manufacturer"
  rkl_log "TR-34: the manufacturer's KRD CA (rkl-pos krd-ca init)"
  rkl_pos krd-ca init --out "$RKL_STATE/manufacturer" --pin-file "$RKL_STATE/secrets/krd-ca.pin" \
    >"$RKL_STATE/logs/krd-ca-init.log" 2>&1 ||
    { cat "$RKL_STATE/logs/krd-ca-init.log" >&2; rkl_die "krd-ca init failed"; }
}

rkl_write_configs() {
  [[ "$RKL_METRICS" =~ ^[01]$ ]] || rkl_die "RKL_METRICS must be 0 (no /metrics endpoint) or 1, not '$RKL_METRICS'"
  mkdir -p "$RKL_STATE/config" "$RKL_STATE/anchors"
  local pki="$RKL_STATE/pki" svc
  for svc in "${RKL_SERVICES[@]}"; do
    (
      umask 077
      {
        echo "listen: 127.0.0.1:$(rkl_port "$svc")"
        if [[ $RKL_METRICS == 1 ]]; then
          printf 'metrics:\n  listen: 127.0.0.1:%s\n' "$(rkl_metrics_port "$svc")"
        fi
        echo "tls:"
        echo "  cert_file: $pki/$svc/cert.pem"
        echo "  key_file: $pki/$svc/key.pem"
        echo "  ca_file: $pki/ca-bundle.pem"
        echo "db:"
        echo "  dsn: '$(rkl_pg_dsn "$svc") connect_timeout=5'"
        # Client certificates on the service-ca CRL are refused (docs/pki.md "Revocation").
        [[ $svc == ca ]] || printf 'crl:\n  ca_endpoint: %s\n' "$(rkl_addr ca)"
        case $svc in
          ca)
            echo "master_key_file: $RKL_STATE/secrets/ca-master.key"
            # The CA certifies a KDH key only as the HSM itself shows it (Hsm.GetCertifiableKey).
            # It starts before its HSMs: it calls them only when a KDH key is provisioned.
            echo "hsm:"
            echo "  endpoints: hsm-mtms=$(rkl_addr hsm-mtms),hsm-kms=$(rkl_addr hsm-kms)"
            ;;
          hsm-mtms | hsm-kms)
            echo "hsm_id: $svc"
            echo "role: ${svc#hsm-}"
            echo "lmk:"
            echo "  file: $RKL_STATE/secrets/lmk-$svc"
            echo "audit:"
            echo "  anchor_file: $RKL_STATE/anchors/$svc.anchor"
            echo "authz:"
            echo "  operational_identities: ${svc#hsm-}"
            if [[ $svc == hsm-mtms ]]; then
              echo "translation:"
              echo "  operator_ca_file: $pki/operator-ca.pem"
            else
              # TR-34 (docs/tr34.md): the KRD CAs whose terminals HSM #2 makes key tokens for.
              echo "tr34:"
              echo "  krd_ca_files: $RKL_STATE/manufacturer/krd-ca.pem"
            fi
            ;;
          mtms | kms)
            # The audit chain's MAC key (docs/kms.md, docs/mtms.md "Audit"), and where its
            # head is anchored, outside the database.
            echo "audit:"
            echo "  mac_key_file: $RKL_STATE/secrets/audit-$svc.key"
            echo "  anchor_file: $RKL_STATE/anchors/$svc.anchor"
            ;;&
          mtms)
            echo "hsm:"
            echo "  endpoint: $(rkl_addr hsm-mtms)"
            echo "  authority: hsm-mtms"
            echo "  id: hsm-mtms"
            echo "  pk_index: ${HSM_MTMS_PK_INDEX:-0}"
            echo "  mak_index: ${HSM_MTMS_MAK_INDEX:-0}"
            echo "ca:"
            echo "  endpoint: $(rkl_addr ca)"
            echo "  authority: ca"
            echo "kms:"
            echo "  endpoint: $(rkl_addr kms)"
            echo "  authority: kms"
            echo "forwarder:"
            echo "  interval: 200ms"
            ;;
          kms)
            echo "hsm:"
            echo "  endpoint: $(rkl_addr hsm-kms)"
            echo "  authority: hsm-kms"
            echo "  pk_index: ${HSM_KMS_PK_INDEX:-1}"
            echo "  mak_index: ${HSM_KMS_MAK_INDEX:-1}"
            echo "  tls:"
            echo "    cert_file: $pki/kms/cert.pem"
            echo "    key_file: $pki/kms/key.pem"
            echo "    ca_file: $pki/ca-bundle.pem"
            # Terminal RPC budgets (docs/kms.md "Rate limits"): every simulated terminal
            # comes from 127.0.0.1, so that address gets a fleet's budget; each SN keeps
            # the default.
            echo "limits:"
            echo "  per_source: {per_minute: 600000, burst: 5000}"
            # TR-34 (docs/tr34.md): the KRD CAs KMS accepts terminals from, and the CA that
            # certifies the KDH key and publishes the kdh-ca CRL.
            echo "ca:"
            echo "  endpoint: $(rkl_addr ca)"
            echo "  authority: ca"
            echo "tr34:"
            echo "  krd_ca_files: $RKL_STATE/manufacturer/krd-ca.pem"
            echo "  kdh_hsm_id: hsm-kms"
            ;;
        esac
      } >"$RKL_STATE/config/$svc.yaml"
    )
  done
}

rkl_pid() { cat "$RKL_STATE/run/$1.pid" 2>/dev/null; }
# True only if $2 is a live process running $1's binary: a pid file left by an earlier run
# may name a pid the system has since given to an unrelated process, which must never be
# signalled.
rkl_is_our_process() {
  local svc=$1 p=$2 exe
  [[ -n "$p" ]] && kill -0 "$p" 2>/dev/null || return 1
  exe=$(readlink -f "/proc/$p/exe" 2>/dev/null) || return 1
  [[ "${exe% (deleted)}" == "$(readlink -f "$(rkl_binary "$svc")")" ]]
}
rkl_running() { local p; p=$(rkl_pid "$1") && rkl_is_our_process "$1" "$p"; }

# The migration step of one service (docs/operations.md, "Database roles"): its binary with
# --migrate-only applies the schema as the database's owner and grants the runtime role its
# privileges, then exits. The owner's DSN reaches only that process, through its environment
# (never a command line, never a config file): the service itself runs as the runtime role.
rkl_migrate() {
  local svc=$1 var
  case $svc in
    ca) var=RKL_CA_DB_OWNER_DSN ;;
    hsm-*) var=RKL_HSM_DB_OWNER_DSN ;;
    mtms) var=RKL_MTMS_DB_OWNER_DSN ;;
    kms) var=RKL_KMS_DB_OWNER_DSN ;;
  esac
  mkdir -p "$RKL_STATE/logs"
  if ! (
    export "$var=$(rkl_pg_owner_dsn "$svc") connect_timeout=5"
    exec "$(rkl_binary "$svc")" --config "$RKL_STATE/config/$svc.yaml" --migrate-only
  ) >>"$RKL_STATE/logs/$svc.log" 2>&1; then
    tail -5 "$RKL_STATE/logs/$svc.log" >&2
    rkl_die "$svc: the migration step failed (log: $RKL_STATE/logs/$svc.log)"
  fi
}

rkl_start() {
  local svc=$1
  rkl_running "$svc" && return 0
  rkl_migrate "$svc"
  mkdir -p "$RKL_STATE/run" "$RKL_STATE/logs"
  local bin
  bin=$(rkl_binary "$svc")
  "$bin" --config "$RKL_STATE/config/$svc.yaml" >>"$RKL_STATE/logs/$svc.log" 2>&1 &
  echo $! >"$RKL_STATE/run/$svc.pid"
}

rkl_wait_healthy() {
  local svc=$1 wait=${2:-60}
  if ! rklctl health --target "$(rkl_addr "$svc")" --authority "$svc" --wait "$wait" \
    $(rkl_admin_flags) >/dev/null 2>"$RKL_STATE/logs/health-$svc.err"; then
    tail -15 "$RKL_STATE/logs/$svc.log" >&2
    rkl_die "$svc did not become healthy in ${wait}s (log: $RKL_STATE/logs/$svc.log)"
  fi
}

# Stops one process: SIGTERM (graceful), or SIGKILL with $2 = -9.
rkl_stop() {
  local svc=$1 sig=${2:-TERM} p
  p=$(rkl_pid "$svc") || return 0
  [[ -n "$p" ]] || return 0
  if rkl_is_our_process "$svc" "$p"; then
    kill "-$sig" "$p" 2>/dev/null || true
    local i
    for i in $(seq 1 100); do
      kill -0 "$p" 2>/dev/null || break
      sleep 0.1
    done
    kill -0 "$p" 2>/dev/null && kill -KILL "$p" 2>/dev/null
  fi
  rm -f "$RKL_STATE/run/$svc.pid"
}

rkl_stop_all() {
  local svc
  for svc in kms mtms hsm-kms hsm-mtms ca; do rkl_stop "$svc"; done
}

# One ceremony on one HSM, by both custodians: prints "<index> <kcv>".
rkl_ceremony_one() {
  local hsm=$1 type=$2 label=$3 out id
  local a=${RKL_CUSTODIANS[0]} b=${RKL_CUSTODIANS[1]}
  local target="--hsm $(rkl_addr "$hsm") --authority $hsm"
  out=$(rklctl hsm ceremony begin $target $(rkl_custodian_flags "$a") --label "$label" \
    --type "$type" --components 2) || rkl_die "ceremony begin on $hsm failed"
  id=$(awk '{print $2}' <<<"$out")
  rklctl hsm ceremony add-component $target $(rkl_custodian_flags "$a") --ceremony "$id" \
    --component-file "$RKL_STATE/secrets/custodian-$a-$type.component" >/dev/null ||
    rkl_die "custodian $a could not add the $type component on $hsm"
  rklctl hsm ceremony add-component $target $(rkl_custodian_flags "$b") --ceremony "$id" \
    --component-file "$RKL_STATE/secrets/custodian-$b-$type.component" >/dev/null ||
    rkl_die "custodian $b could not add the $type component on $hsm"
  out=$(rklctl hsm ceremony complete $target $(rkl_custodian_flags "$b") --ceremony "$id") ||
    rkl_die "ceremony complete on $hsm failed"
  awk '{print $3, $5}' <<<"$out"  # "key index N KCV XXXXXX"
}

# S101: PK and MAK from two custodians' components, entered into BOTH HSMs; both must show
# the same KCVs. Dev components are generated into 0600 files, shown only as KCVs, and
# erased once both HSMs hold the keys.
rkl_ceremony() {
  [[ -s "$RKL_STATE/ceremony.env" ]] && return 0
  local type who
  for type in PK MAK; do
    for who in "${RKL_CUSTODIANS[@]}"; do
      rm -f "$RKL_STATE/secrets/custodian-$who-$type.component"
      rklctl hsm component new --out "$RKL_STATE/secrets/custodian-$who-$type.component" |
        sed "s|^|  custodian $who $type component: |; s|written to .* (mode 0600), ||" >&2
    done
  done
  local label_suffix
  label_suffix=$(date +%Y%m%d%H%M%S)
  read -r m_pk m_pk_kcv < <(rkl_ceremony_one hsm-mtms PK "PK-$label_suffix")
  read -r m_mak m_mak_kcv < <(rkl_ceremony_one hsm-mtms MAK "MAK-$label_suffix")
  read -r k_pk k_pk_kcv < <(rkl_ceremony_one hsm-kms PK "PK-$label_suffix")
  read -r k_mak k_mak_kcv < <(rkl_ceremony_one hsm-kms MAK "MAK-$label_suffix")
  rkl_log "ceremony: PK  KCV hsm-mtms=$m_pk_kcv hsm-kms=$k_pk_kcv"
  rkl_log "ceremony: MAK KCV hsm-mtms=$m_mak_kcv hsm-kms=$k_mak_kcv"
  [[ -n "$m_pk_kcv" && "$m_pk_kcv" == "$k_pk_kcv" && "$m_mak_kcv" == "$k_mak_kcv" ]] ||
    rkl_die "the two HSMs do not hold the same PK/MAK (KCVs differ)"
  for type in PK MAK; do
    for who in "${RKL_CUSTODIANS[@]}"; do
      shred -u "$RKL_STATE/secrets/custodian-$who-$type.component" 2>/dev/null ||
        rm -f "$RKL_STATE/secrets/custodian-$who-$type.component"
    done
  done
  cat >"$RKL_STATE/ceremony.env" <<ENV
HSM_MTMS_PK_INDEX=$m_pk
HSM_MTMS_MAK_INDEX=$m_mak
HSM_KMS_PK_INDEX=$k_pk
HSM_KMS_MAK_INDEX=$k_mak
PK_KCV=$m_pk_kcv
MAK_KCV=$m_mak_kcv
ENV
}

# Brings the whole system up (idempotent: reuses whatever state exists).
rkl_up() {
  mkdir -p "$RKL_STATE/logs" "$RKL_STATE/run" "$RKL_STATE/secrets"
  chmod 700 "$RKL_STATE/secrets"
  rkl_log "PostgreSQL: private cluster in $(cat "$RKL_STATE/pg.dir" 2>/dev/null || echo "$RKL_STATE/pg")"
  rkl_pg_start
  rkl_pg_provision
  rkl_pki_init
  rkl_krd_ca_init
  local svc
  for svc in hsm-mtms hsm-kms; do
    [[ -s "$RKL_STATE/secrets/lmk-$svc" ]] ||
      rklctl hsm lmk new --out "$RKL_STATE/secrets/lmk-$svc" | sed "s|^|  $svc LMK: |" >&2
  done
  # The audit MAC keys of MTMS and KMS: 32 random bytes as hex, readable by the daemons'
  # user only (their KCVs are logged at start-up and bound to each database).
  for svc in mtms kms; do
    [[ -s "$RKL_STATE/secrets/audit-$svc.key" ]] || (
      umask 077
      head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$RKL_STATE/secrets/audit-$svc.key"
    )
  done
  [[ -s "$RKL_STATE/ceremony.env" ]] && source "$RKL_STATE/ceremony.env"
  rkl_write_configs
  rkl_log "starting rkl-ca and both rkl-hsm instances (mTLS)"
  for svc in ca hsm-mtms hsm-kms; do rkl_start "$svc"; done
  for svc in ca hsm-mtms hsm-kms; do rkl_wait_healthy "$svc"; done
  if [[ ! -s "$RKL_STATE/ceremony.env" ]]; then
    rkl_log "key ceremony: PK and MAK from custodians ${RKL_CUSTODIANS[*]} into both HSMs"
    rkl_ceremony
  fi
  source "$RKL_STATE/ceremony.env"
  rkl_write_configs
  rkl_log "starting rkl-mtms and rkl-kms"
  for svc in mtms kms; do rkl_start "$svc"; done
  for svc in mtms kms; do rkl_wait_healthy "$svc"; done
  rkl_log "MTMS work key (S201-S203): HSM #1 generates Pu/Pr, the CA signs HsmWCRT"
  rklctl mtms work-key provision --mtms "$(rkl_addr mtms)" --authority mtms \
    $(rkl_admin_flags) | sed 's/^/  /' >&2 || rkl_die "work key provisioning failed"
  rkl_kdh_provision
}

# TR-34 (once): HSM #2 generates the KDH signing key, the CA's kdh-ca certifies it.
rkl_kdh_provision() {
  local target="--kms $(rkl_addr kms) --authority kms"
  # shellcheck disable=SC2046
  if rklctl kms kdh list $target $(rkl_admin_flags) 2>/dev/null | grep -q 'active'; then
    return 0
  fi
  rkl_log "TR-34 KDH key: HSM #2 generates it, kdh-ca certifies it"
  # shellcheck disable=SC2046
  rklctl kms kdh provision $target $(rkl_admin_flags) | sed 's/^/  /' >&2 ||
    rkl_die "KDH key provisioning failed"
}

# Common flags of rkl-pos against this deployment.
rkl_pos_flags() {
  echo "--state-dir $RKL_STATE/pos --terminal-root $RKL_STATE/pki/terminal-root.pem" \
    "--mtms $(rkl_addr mtms) --mtms-authority mtms --kms $(rkl_addr kms) --kms-authority kms" \
    "--ca-bundle $RKL_STATE/pki/ca-bundle.pem" \
    "--operator-card $RKL_STATE/pki/operator-operator1.p12" \
    "--operator-pin-file $RKL_STATE/secrets/operator.pin" \
    "--admin-cert $RKL_STATE/pki/admin-${RKL_ADMINS[0]}/cert.pem" \
    "--admin-key $RKL_STATE/pki/admin-${RKL_ADMINS[0]}/key.pem"
}

# The flags rkl-pos needs on top of rkl_pos_flags for TR-34 terminals: the kdh-ca burned in
# at manufacture, and the manufacturer's KRD CA that certifies each terminal's device key.
rkl_pos_tr34_flags() {
  echo "--kdh-ca $RKL_STATE/pki/kdh-ca.pem --krd-ca-card $RKL_STATE/manufacturer/krd-ca.p12" \
    "--krd-ca-pin-file $RKL_STATE/secrets/krd-ca.pin"
}
