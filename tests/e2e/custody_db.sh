#!/usr/bin/env bash
# e2e_custody_db: no database role of the deployment can erase its tracks (issue 20, finding 5).
#   bash tests/e2e/custody_db.sh <build dir> <port base>
#
# Brings the system up (deploy/local: an owner and a runtime role per database, every daemon
# running as its runtime role) and provisions one terminal, so every audit holds records.
# Then, as the attacks themselves:
#  1. with each service's own DSN ($RKL_STATE/secrets/<svc>.dsn, the role the daemon runs
#     as): ALTER TABLE <audit> DISABLE TRIGGER USER, DELETE, UPDATE and TRUNCATE of its audit
#     table (the CA's: of ca_audit and of the certificates it issued), TRUNCATE
#     and ALTER of every table, CREATE TABLE: every one refused by PostgreSQL, and the audit
#     table, the triggers and the schema exactly as before;
#  2. as the cluster's superuser, who can: switch hsm-kms's audit trigger off and delete the
#     newest records (those the last anchor covers). `rklctl hsm audit-verify --anchor` with
#     the anchor hsm-kms keeps outside its database names the chain broken; hsm-kms refuses
#     to write a new anchor over that one (the file stays as it was) and its audit records
#     the mismatch;
#  3. (KMS's and MTMS's chains verify, also against the anchors they wrote at start-up.)
#     As the superuser: switch KMS's and MTMS's audit triggers off, edit a KMS record and
#     delete a middle MTMS record. `rklctl kms audit-verify` and `rklctl mtms audit-verify`
#     (verification in the service, which holds the audit MAC key) exit 1 naming the
#     edited record and the record after the gap.
set -euo pipefail
# shellcheck source=tests/e2e/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
e2e_init custody_db "$2" "$1"

e2e_up
e2e_log "deployment up"
sn=E2E-DB-1
# shellcheck disable=SC2046
e2e_pos provision --sn "$sn" >"$RKL_STATE/logs/pos.log" 2>&1 ||
  e2e_fail "terminal $sn: provision failed ($(tail -1 "$RKL_STATE/logs/pos.log"))"

# psql as a service's runtime role, over TCP with its password, as the daemon connects. The
# password goes through the environment of psql alone, not its command line.
as_runtime() {
  local svc=$1 sql=$2 dsn pw
  dsn=$(rkl_pg_dsn "$svc")
  pw=$(sed -nE 's/.* password=([^ ]+).*/\1/p' <<<"$dsn")
  PGPASSWORD=$pw PGCONNECT_TIMEOUT=10 /usr/bin/psql -X -q -v ON_ERROR_STOP=1 -At \
    "${dsn/ password=$pw/}" -c "$sql" 2>&1
}

# The rows of a table (those matching $3), as the superuser sees them, as one digest.
table_digest() {
  e2e_sql "$1" "SELECT count(*) || ':' || coalesce(md5(string_agg(t::text, '|' ORDER BY t::text)), '')
    FROM $2 t WHERE ${3:-true}"
}
# Tables, columns, triggers (with their enabled state) and owners of a database's schema.
schema_digest() {
  e2e_sql "$1" "SELECT md5(coalesce(string_agg(x, '|' ORDER BY x), '')) FROM (
      SELECT c.relname || '.' || a.attname || ':' || pg_get_userbyid(c.relowner) AS x
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
       WHERE n.nspname = 'public'
      UNION ALL
      SELECT tgrelid::regclass::text || '/' || tgname || ':' || tgenabled::text FROM pg_trigger
       WHERE NOT tgisinternal) s"
}

# A statement the runtime role must be refused: PostgreSQL's own refusal, nothing else.
expect_refused() {
  local svc=$1 sql=$2 out
  if out=$(as_runtime "$svc" "$sql"); then
    e2e_fail "$svc: the runtime role was allowed: $sql"
  fi
  grep -qE 'permission denied|must be owner' <<<"$out" ||
    e2e_fail "$svc: '$sql' failed, but not as a refusal: $out"
}

kms="--kms $(rkl_addr kms) --authority kms $(rkl_admin_flags)"
mtms="--mtms $(rkl_addr mtms) --authority mtms $(rkl_admin_flags)"
# Verifying seals what is pending, so both chains hold the records written so far (no
# waiting on the sealer's schedule), and they are intact before any attack.
for svc in kms mtms; do
  flags=$kms
  [[ $svc == mtms ]] && flags=$mtms
  # shellcheck disable=SC2086
  out=$(rklctl $svc audit-verify $flags) || e2e_fail "$svc: the untouched audit chain: $out"
  grep -q "audit chain intact" <<<"$out" || e2e_fail "$svc audit-verify: $out"
  e2e_log "$svc: $out"
  # The anchor the service wrote at start-up is its own and its chain still holds it.
  grep -q "^rkl-$svc-audit-anchor v1 $svc=" "$RKL_STATE/anchors/$svc.anchor" ||
    e2e_fail "$svc: no anchor of its own in $RKL_STATE/anchors/$svc.anchor"
  # shellcheck disable=SC2086
  out=$(rklctl $svc audit-verify $flags --anchor "$RKL_STATE/anchors/$svc.anchor") ||
    e2e_fail "$svc: the chain does not verify against its own anchor: $out"
done

# ---- 1. the runtime role of every service ----------------------------------------------
# Each service's records, as "service:table:column"; the CA's are its audit and what it
# issued (revocable, but never rewritable).
targets=()
for svc in "${RKL_SERVICES_WITH_DB[@]}"; do
  case $svc in
    hsm-*) targets+=("$svc:hsm_audit:actor") ;;
    mtms | kms) targets+=("$svc:audit:actor") ;;
    ca) targets+=("ca:ca_audit:actor" "ca:ca_certificates:certificate_der") ;;
  esac
done
for target in "${targets[@]}"; do
  IFS=: read -r svc audit column <<<"$target"
  db="rkl_${svc//-/_}"
  # The records there now must stay as they are; the service may append meanwhile.
  existing=true
  [[ $audit == ca_certificates ]] ||
    existing="seq <= $(e2e_sql "$db" "SELECT coalesce(max(seq), 0) FROM $audit")"
  role=$(as_runtime "$svc" "SELECT current_user") || e2e_fail "$svc: its DSN does not connect: $role"
  [[ "$role" == "$db" ]] || e2e_fail "$svc: the service's DSN logs in as '$role', expected '$db'"
  [[ $(e2e_sql "$db" "SELECT rolsuper FROM pg_roles WHERE rolname = '$role'") == f ]] ||
    e2e_fail "$svc: the runtime role $role is a superuser"
  owned=$(e2e_sql "$db" "SELECT count(*) FROM pg_class c JOIN pg_namespace n
    ON n.oid = c.relnamespace WHERE n.nspname = 'public' AND pg_get_userbyid(c.relowner) = '$role'")
  [[ "$owned" == 0 ]] || e2e_fail "$svc: the runtime role $role owns $owned objects of its schema"
  rows=$(e2e_sql "$db" "SELECT count(*) FROM $audit")
  ((rows > 0)) || e2e_fail "$svc: $audit is empty; the attacks below would prove nothing"
  before_table=$(table_digest "$db" "$audit" "$existing")
  before_schema=$(schema_digest "$db")

  expect_refused "$svc" "ALTER TABLE $audit DISABLE TRIGGER USER"
  expect_refused "$svc" "DELETE FROM $audit"
  expect_refused "$svc" "UPDATE $audit SET $column = $column"
  expect_refused "$svc" "TRUNCATE $audit"
  while read -r table; do
    expect_refused "$svc" "TRUNCATE $table"
    expect_refused "$svc" "ALTER TABLE $table ADD COLUMN e2e_intruder int"
  done < <(e2e_sql "$db" "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
  expect_refused "$svc" "CREATE TABLE e2e_intruder (x int)"

  [[ $(table_digest "$db" "$audit" "$existing") == "$before_table" ]] ||
    e2e_fail "$svc: $audit changed"
  [[ $(schema_digest "$db") == "$before_schema" ]] || e2e_fail "$svc: the schema changed"
  e2e_log "$svc: runtime role $role refused (trigger, DELETE, UPDATE, TRUNCATE of $audit;" \
    "TRUNCATE and ALTER of every table; CREATE); $audit ($rows rows) and schema unchanged"
done

# ---- 2. a superuser removes hsm-kms's newest audit records ------------------------------
hsm="--hsm $(rkl_addr hsm-kms) --authority hsm-kms $(rkl_admin_flags)"
anchor_file="$RKL_STATE/anchors/hsm-kms.anchor"
# shellcheck disable=SC2086
rklctl hsm audit-anchor $hsm >"$E2E_SCRATCH/printed.anchor" ||
  e2e_fail "rklctl hsm audit-anchor failed"
printed_seq=$(sed -nE 's/.* seq=([0-9]+) .*/\1/p' "$E2E_SCRATCH/printed.anchor")
# The HSM's own file holds that anchor, or a newer one of its schedule.
seq=$(sed -nE 's/^rkl-hsm-audit-anchor v1 hsm=hsm-kms seq=([0-9]+) .*/\1/p' "$anchor_file")
[[ -n "$seq" && -n "$printed_seq" ]] && ((seq >= printed_seq)) ||
  e2e_fail "the anchor file ($(cat "$anchor_file")) does not hold the anchor hsm-kms printed"
((seq > 2)) || e2e_fail "the anchor covers only $seq records"
for anchor in "$E2E_SCRATCH/printed.anchor" "$anchor_file"; do
  # shellcheck disable=SC2086
  out=$(rklctl hsm audit-verify $hsm --anchor "$anchor") ||
    e2e_fail "the audit chain does not verify against a fresh anchor: $out"
done
# Every record after seq - 2 goes, so whatever anchor the file holds by now (its seq is at
# least $seq) names a record that is gone.
rkl_psql -d rkl_hsm_kms -c "ALTER TABLE hsm_audit DISABLE TRIGGER USER" \
  -c "DELETE FROM hsm_audit WHERE seq > $((seq - 2))" \
  -c "ALTER TABLE hsm_audit ENABLE TRIGGER USER" >/dev/null
e2e_log "superuser: deleted hsm-kms audit records after $((seq - 2)) (the anchor holds $seq)"
cp "$anchor_file" "$E2E_SCRATCH/anchor.kept"

# shellcheck disable=SC2086
if out=$(rklctl hsm audit-verify $hsm --anchor "$anchor_file"); then
  e2e_fail "audit-verify --anchor accepted a chain whose newest records were deleted: $out"
fi
grep -q "audit chain BROKEN at record" <<<"$out" || e2e_fail "audit-verify --anchor: $out"
e2e_log "audit-verify --anchor: $out"
# shellcheck disable=SC2086
if out=$(rklctl hsm audit-anchor $hsm 2>&1); then
  e2e_fail "hsm-kms wrote a new anchor over one its chain no longer holds: $out"
fi
grep -q "FAILED_PRECONDITION" <<<"$out" || e2e_fail "audit-anchor refused, but not as expected: $out"
cmp -s "$anchor_file" "$E2E_SCRATCH/anchor.kept" || e2e_fail "the anchor file changed"
# shellcheck disable=SC2086
rklctl hsm audit-verify $hsm >/dev/null 2>&1 || true  # seals what is pending
mismatch=$(e2e_sql rkl_hsm_kms "SELECT count(*) FROM hsm_audit
  WHERE action = 'audit.anchor_mismatch' AND result = 'DATA_LOSS'")
((mismatch >= 1)) || e2e_fail "hsm-kms's audit holds no audit.anchor_mismatch record"
e2e_log "hsm-kms refused to anchor over the lost records (file kept; $mismatch mismatch record(s))"

# ---- 3. a superuser edits a KMS audit record and deletes an MTMS one ---------------------
# As the superuser, with the trigger off: what a database administrator could do unseen
# before the chain. $3 is the statement, on record $4.
superuser_edit() {
  rkl_psql -d "$1" -c "ALTER TABLE $2 DISABLE TRIGGER USER" -c "$3" \
    -c "ALTER TABLE $2 ENABLE TRIGGER USER" >/dev/null
}
# audit-verify must exit 1 (not 0, not an error) and name record $3.
expect_broken_at() {
  local svc=$1 flags=$2 seq=$3 out rc=0
  # shellcheck disable=SC2086
  out=$(rklctl "$svc" audit-verify $flags 2>&1) || rc=$?
  ((rc == 1)) || e2e_fail "$svc audit-verify exited $rc after the edit: $out"
  grep -q "audit chain BROKEN at record $seq " <<<"$out" ||
    e2e_fail "$svc audit-verify does not name record $seq: $out"
  e2e_log "$svc audit-verify (exit 1): $out"
}
kms_seq=$(e2e_sql rkl_kms "SELECT min(seq) FROM audit WHERE sn = '$sn'")
[[ -n "$kms_seq" ]] || e2e_fail "kms: no chained audit record for $sn"
superuser_edit rkl_kms audit "UPDATE audit SET result = 'DENIED' WHERE seq = $kms_seq"
e2e_log "superuser: edited KMS audit record $kms_seq"
expect_broken_at kms "$kms" "$kms_seq"

mtms_max=$(e2e_sql rkl_mtms "SELECT coalesce(max(seq), 0) FROM audit")
((mtms_max >= 2)) || e2e_fail "mtms: only $mtms_max chained audit records"
superuser_edit rkl_mtms audit "DELETE FROM audit WHERE seq = 1"
e2e_log "superuser: deleted MTMS audit record 1 of $mtms_max"
expect_broken_at mtms "$mtms" 2

e2e_leakage_sweep
