# shellcheck shell=bash
# A private, durable PostgreSQL 15 cluster for the local demo and the end-to-end tests.
# Sourced, not run. Functions take the state directory from $RKL_STATE.
#
# Unlike the throwaway cluster of the pgtests, this one keeps fsync and synchronous_commit
# on: the demo and the e2e fault tests must show that every commit is durable.
# PostgreSQL refuses to run as root, so as root the server runs as `postgres`. Its data
# directory lives where that user can reach it: under $RKL_STATE when it can traverse the
# path, otherwise in /var/tmp/rkl-pg-<hash of $RKL_STATE> (recorded in $RKL_STATE/pg.dir).
# Per service one database and two login roles (docs/operations.md, "Database roles"), each
# with its own random password: the owner rkl_<svc>_owner owns the database and is used only
# to migrate (DSN in $RKL_STATE/secrets/<service>-owner.dsn); the runtime role rkl_<svc>, which
# the service runs as, may only connect until the migration step grants it its DML (DSN in
# $RKL_STATE/secrets/<service>.dsn). Both files mode 0600.

RKL_PG_BIN=${RKL_PG_BIN:-/usr/lib/postgresql/15/bin}
RKL_SERVICES_WITH_DB=(ca hsm-mtms hsm-kms mtms kms)

rkl_pg_as_owner() {
  if [[ $(id -u) -eq 0 ]]; then
    (cd / && runuser -u postgres -- "$@")
  else
    "$@"
  fi
}

rkl_pg_dir() { cat "$RKL_STATE/pg.dir"; }
rkl_pg_port() { cat "$RKL_STATE/pg.port"; }
rkl_pg_socket() { echo "$(rkl_pg_dir)/sock"; }

# A free TCP port for the cluster; RKL_PG_PORT pins it (the e2e tests derive it from their
# own port range, so two tests starting at once cannot race for the same random port).
rkl_pg_free_port() {
  if [[ -n "${RKL_PG_PORT:-}" ]]; then
    echo "$RKL_PG_PORT"
    return 0
  fi
  local p
  for p in $(shuf -i 55000-55999 -n 50); do
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      echo "$p"
      return 0
    fi
  done
  return 1
}

# psql as the cluster superuser over the private unix socket.
rkl_psql() {
  rkl_pg_as_owner /usr/bin/psql -X -q -v ON_ERROR_STOP=1 -h "$(rkl_pg_socket)" \
    -p "$(rkl_pg_port)" -U postgres "$@"
}

rkl_pg_init() {
  [[ -f "$RKL_STATE/pg.dir" && -d "$(rkl_pg_dir)/data" ]] && return 0
  local dir="$RKL_STATE/pg"
  mkdir -p "$RKL_STATE"
  if [[ $(id -u) -eq 0 ]]; then
    id postgres >/dev/null 2>&1 || { echo "no 'postgres' user: install postgresql" >&2; return 1; }
    mkdir -p "$dir" && chown postgres: "$dir"
    if ! runuser -u postgres -- test -w "$dir" 2>/dev/null; then
      dir="/var/tmp/rkl-pg-$(printf '%s' "$RKL_STATE" | sha1sum | cut -c1-12)"
      rm -rf "$RKL_STATE/pg"
      mkdir -p "$dir" && chown postgres: "$dir"
    fi
  else
    mkdir -p "$dir"
  fi
  chmod 700 "$dir"
  echo "$dir" >"$RKL_STATE/pg.dir"
  rkl_pg_free_port >"$RKL_STATE/pg.port"
  rkl_pg_as_owner mkdir -p -m 700 "$dir/sock"
  rkl_pg_as_owner "$RKL_PG_BIN/initdb" -D "$dir/data" -U postgres --auth-local=trust \
    --auth-host=scram-sha-256 --encoding=UTF8 --locale=C --no-instructions \
    >"$RKL_STATE/pg-initdb.log" 2>&1 || { cat "$RKL_STATE/pg-initdb.log" >&2; return 1; }
  rkl_pg_as_owner tee "$dir/data/pg_hba.conf" >/dev/null <<HBA
local all all              trust
host  all all 127.0.0.1/32 scram-sha-256
HBA
  rkl_pg_as_owner tee -a "$dir/data/postgresql.conf" >/dev/null <<CONF
listen_addresses = '127.0.0.1'
unix_socket_directories = '$dir/sock'
max_connections = 300
fsync = on
synchronous_commit = on
shared_buffers = 256MB
logging_collector = off
CONF
}

rkl_pg_running() {
  [[ -f "$RKL_STATE/pg.dir" ]] && rkl_pg_as_owner "$RKL_PG_BIN/pg_ctl" status -D "$(rkl_pg_dir)/data" >/dev/null 2>&1
}

rkl_pg_start() {
  rkl_pg_init
  rkl_pg_running && return 0
  local port
  port=$(rkl_pg_port)
  # The recorded port may have been taken since the last run.
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    rkl_pg_free_port >"$RKL_STATE/pg.port"
    port=$(rkl_pg_port)
  fi
  mkdir -p "$RKL_STATE/logs"
  touch "$RKL_STATE/logs/postgres.log"
  [[ $(id -u) -eq 0 ]] && chown postgres: "$RKL_STATE/logs/postgres.log"
  rkl_pg_as_owner "$RKL_PG_BIN/pg_ctl" start -D "$(rkl_pg_dir)/data" -w -t 60 \
    -o "-p $port" -l "$RKL_STATE/logs/postgres.log" >/dev/null ||
    { tail -20 "$RKL_STATE/logs/postgres.log" >&2; return 1; }
}

rkl_pg_stop() {
  rkl_pg_running || return 0
  rkl_pg_as_owner "$RKL_PG_BIN/pg_ctl" stop -D "$(rkl_pg_dir)/data" -m fast -w -t 60 >/dev/null
}

# Simulates a database crash: immediate shutdown (no checkpoint; recovery replays the WAL at
# the next start), as the e2e fault test does in the middle of a fleet.
rkl_pg_crash() {
  rkl_pg_running || return 0
  rkl_pg_as_owner "$RKL_PG_BIN/pg_ctl" stop -D "$(rkl_pg_dir)/data" -m immediate -w -t 60 >/dev/null
}

# Creates (once) both roles and the database of every service; writes the two DSN files. A
# state directory from before the owner/runtime split (the runtime role owned its database)
# is converted in place: the owner role is created and takes over the database and all it
# holds, and the runtime role keeps only CONNECT until the next migration step grants it.
rkl_pg_provision() {
  mkdir -p "$RKL_STATE/secrets" && chmod 700 "$RKL_STATE/secrets"
  local svc name owner pw owner_pw dsn_file owner_file
  for svc in "${RKL_SERVICES_WITH_DB[@]}"; do
    name="rkl_${svc//-/_}"
    owner="${name}_owner"
    dsn_file="$RKL_STATE/secrets/$svc.dsn"
    owner_file="$RKL_STATE/secrets/$svc-owner.dsn"
    [[ -s "$dsn_file" && -s "$owner_file" ]] && continue
    owner_pw=$(head -c 18 /dev/urandom | od -An -tx1 | tr -d ' \n')
    if [[ ! -s "$dsn_file" ]]; then
      pw=$(head -c 18 /dev/urandom | od -An -tx1 | tr -d ' \n')
      # Passwords go through stdin, never the command line (ps).
      {
        printf '\\set pw %s\n\\set owner_pw %s\n' "$pw" "$owner_pw"
        cat <<'SQL'
SELECT format('CREATE ROLE %I LOGIN PASSWORD %L', :'owner', :'owner_pw') \gexec
SELECT format('CREATE ROLE %I LOGIN PASSWORD %L', :'name', :'pw') \gexec
SELECT format('CREATE DATABASE %I OWNER %I', :'name', :'owner') \gexec
SQL
      } | rkl_psql -d postgres -v name="$name" -v owner="$owner"
      (umask 077 && printf 'host=127.0.0.1 port=%s dbname=%s user=%s password=%s\n' \
        "$(rkl_pg_port)" "$name" "$name" "$pw" >"$dsn_file")
    else
      # Before the split: the runtime role owns the database and its tables.
      {
        printf '\\set owner_pw %s\n' "$owner_pw"
        cat <<'SQL'
SELECT format('CREATE ROLE %I LOGIN', :'owner')
  WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'owner') \gexec
SELECT format('ALTER ROLE %I PASSWORD %L', :'owner', :'owner_pw') \gexec
SQL
      } | rkl_psql -d postgres -v owner="$owner"
      rkl_psql -d "$name" -v name="$name" -v owner="$owner" <<'SQL'
SELECT format('REASSIGN OWNED BY %I TO %I', :'name', :'owner') \gexec
SQL
    fi
    # Only the runtime role connects besides the owner; nobody makes temporary tables.
    rkl_psql -d postgres -v name="$name" <<'SQL'
SELECT format('REVOKE ALL ON DATABASE %I FROM PUBLIC', :'name') \gexec
SELECT format('GRANT CONNECT ON DATABASE %I TO %I', :'name', :'name') \gexec
SQL
    (umask 077 && printf 'host=127.0.0.1 port=%s dbname=%s user=%s password=%s\n' \
      "$(rkl_pg_port)" "$name" "$owner" "$owner_pw" >"$owner_file")
  done
}

# The DSN of a service's runtime role, with the current port (the port can change between
# runs).
rkl_pg_dsn() {
  sed -E "s/port=[0-9]+/port=$(rkl_pg_port)/" "$RKL_STATE/secrets/$1.dsn"
}
# The DSN of the role that owns a service's database: for the migration step only.
rkl_pg_owner_dsn() {
  sed -E "s/port=[0-9]+/port=$(rkl_pg_port)/" "$RKL_STATE/secrets/$1-owner.dsn"
}

rkl_pg_destroy() {
  [[ -f "$RKL_STATE/pg.dir" ]] || return 0
  rkl_pg_stop || true
  local dir
  dir=$(rkl_pg_dir)
  case "$dir" in
    "$RKL_STATE"/pg | /var/tmp/rkl-pg-*) rm -rf -- "$dir" ;;
  esac
  rm -f "$RKL_STATE/pg.dir" "$RKL_STATE/pg.port"
}
