#include "rkl/audit/audit_log.h"

#include <fcntl.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <unistd.h>

#include <cerrno>
#include <filesystem>
#include <fstream>
#include <pqxx/pqxx>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "rkl/audit/actions.h"
#include "rkl/common/clock.h"
#include "rkl/common/json.h"
#include "rkl/common/status_macros.h"
#include "rkl/crypto/openssl_ptr.h"
#include "rkl/db/prepared.h"
#include "rkl/db/transaction.h"
#include "spdlog/spdlog.h"

namespace rkl::audit {
namespace {

constexpr size_t kMacSize = kAuditMacSize;
constexpr size_t kMaxAnchorText = kMaxAuditAnchorText;
constexpr int kAuditLockChain = 1;

constexpr char kLockChain[] = "SELECT pg_advisory_xact_lock($1, $2)";
// What Anchor() chains when the chain no longer holds the anchor in the file.
constexpr const char* kAnchorMismatchAction = action::kAuditAnchorMismatch;

// What the sealer chains in place of a pending record whose MAC does not verify.
constexpr const char* kTamperedAction = action::kAuditRecordTampered;
// Such a record breaks the chain in either spelling: a chain sealed before the dotted
// vocabulary holds the older one, under a MAC that still verifies.
bool IsTamperedRecord(const AuditEvent& e) {
  return e.action == action::kAuditRecordTampered || e.action == action::kLegacyAuditRecordTampered;
}
constexpr int kSealBatch = 2000;

// One record as a row of the JSON that insert_pending_group and insert_records read;
// `number` is the pending id or the chain seq, under the column name `number_name`.
JsonRows& AddRecordRow(JsonRows& rows, const char* number_name, uint64_t number,
                       const AuditEvent& e, const Bytes& mac) {
  return rows.Row()
      .Field(number_name, static_cast<int64_t>(number))
      .Field("at_ms", e.at_ms)
      .Field("actor", e.actor)
      .Field("action", e.action)
      .Field("sn", e.sn)
      .Field("detail", e.detail)
      .Field("result", e.result)
      .Field("request_id", e.request_id)
      .Field("mac", ToHex(mac));
}

Bytes ToBytes(const pqxx::field& f) {
  pqxx::binarystring b(f);
  return Bytes(b.data(), b.data() + b.size());
}

// A row of number, at_ms, actor, action, sn, detail, result, then any other columns; the one
// named request_id, when selected, is the record's request id.
AuditEvent EventFromRow(const pqxx::row& row) {
  AuditEvent e{.at_ms = row[1].as<int64_t>(),
               .actor = row[2].as<std::string>(),
               .action = row[3].as<std::string>(),
               .sn = row[4].as<std::string>(),
               .detail = row[5].as<std::string>(),
               .result = row[6].as<std::string>()};
  for (pqxx::row::size_type i = 7; i < row.size(); ++i) {
    if (std::string_view(row[i].name()) == "request_id") e.request_id = row[i].as<std::string>();
  }
  return e;
}

bool SameMac(const Bytes& a, const Bytes& b) {
  return a.size() == b.size() && CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

absl::StatusOr<Bytes> ChainMac(const crypto::SecretBytes& key, std::span<const uint8_t> prev,
                               uint64_t seq, const AuditEvent& e) {
  Bytes data(prev.begin(), prev.end());
  Bytes record = CanonicalAuditRecord(seq, e);
  data.insert(data.end(), record.begin(), record.end());
  return HmacSha256(key, data);
}

// Writes `text` to `path` so that a reader sees the old file or the new one, never part of
// one, and the new one survives a crash once this returns.
absl::Status WriteFileAtomically(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return absl::UnavailableError(absl::StrCat("audit anchor: cannot write ", tmp));
  bool ok = ::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size());
  ok = ::fsync(fd) == 0 && ok;
  ok = ::close(fd) == 0 && ok;
  if (!ok || ::rename(tmp.c_str(), path.c_str()) != 0) {
    ::unlink(tmp.c_str());
    return absl::UnavailableError(absl::StrCat("audit anchor: cannot write ", path));
  }
  const std::string dir = std::filesystem::path(path).parent_path().string();
  int dfd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
  return absl::OkStatus();
}

// The file's anchor; nullopt when there is no file yet.
absl::StatusOr<std::optional<AuditAnchor>> ReadAnchorFile(const ChainSpec& spec,
                                                          const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    if (errno == ENOENT) return std::optional<AuditAnchor>();
    return absl::UnavailableError(absl::StrCat("audit anchor: cannot read ", path));
  }
  std::string text(kMaxAnchorText + 1, '\0');
  in.read(text.data(), static_cast<std::streamsize>(text.size()));
  text.resize(static_cast<size_t>(in.gcount()));
  absl::StatusOr<AuditAnchor> anchor = ParseAuditAnchor(spec, text);
  if (!anchor.ok()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "audit anchor file ", path, " does not hold an anchor (", anchor.status().message(),
        "); it is left as it is: look at it, then move it away to anchor afresh"));
  }
  return std::optional<AuditAnchor>(*std::move(anchor));
}

}  // namespace

namespace {
// INSERT of the records in $1, a JSON array of AddRecordRow rows, into `table`, whose number
// column is `number_name`.
std::string InsertRecordsFromJson(const std::string& table, const std::string& number_name) {
  return absl::StrCat("INSERT INTO ", table, " (", number_name,
                      ", at_ms, actor, action, sn, detail, result, mac, request_id) SELECT x.",
                      number_name,
                      ", x.at_ms, x.actor, x.action, x.sn, x.detail, x.result, decode(x.mac, "
                      "'hex'), x.request_id FROM jsonb_to_recordset($1::jsonb) AS x(",
                      number_name,
                      " bigint, at_ms bigint, actor text, action text, sn text, detail text, "
                      "result text, mac text, request_id text)");
}
}  // namespace

// Every statement of the chain, with the spec's table names spliced in (identifiers this code
// controls, never input).
struct PgAuditLog::Statements {
  explicit Statements(const ChainSpec& spec) {
    const std::string& chain = spec.chain_table;
    const std::string& pending = spec.pending_table;
    chain_head = absl::StrCat("SELECT seq, mac FROM ", chain, " ORDER BY seq DESC LIMIT 1");
    // A sealed batch, or a group of pending records, in one statement (one round trip, not
    // one per record); mac as hex text.
    insert_records = InsertRecordsFromJson(chain, "seq");
    all_records =
        absl::StrCat("SELECT seq, at_ms, actor, action, sn, detail, result, mac, request_id FROM ",
                     chain, " ORDER BY seq");
    insert_pending =
        absl::StrCat("INSERT INTO ", pending,
                     " (id, at_ms, actor, action, sn, detail, result, mac, request_id) "
                     "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)");
    insert_pending_group = InsertRecordsFromJson(pending, "id");
    pending_batch =
        absl::StrCat("SELECT id, at_ms, actor, action, sn, detail, result, mac, request_id FROM ",
                     pending, " ORDER BY id LIMIT $1");
    all_pending =
        absl::StrCat("SELECT id, at_ms, actor, action, sn, detail, result, mac, request_id FROM ",
                     pending, " ORDER BY id");
    // A sealing pass: the batch with the chain's head in one read (after the lock), then
    // the chained records and the deletion of the batch in one write.
    seal_batch = absl::StrCat(
        "SELECT p.id, p.at_ms, p.actor, p.action, p.sn, p.detail, p.result, p.mac, "
        "p.request_id, h.seq AS head_seq, h.mac AS head_mac FROM (",
        pending_batch, ") p LEFT JOIN (", chain_head, ") h ON true ORDER BY p.id");
    any_pending = absl::StrCat("SELECT EXISTS (SELECT 1 FROM ", pending, ")");
    seal_write = absl::StrCat("WITH chained AS (", insert_records, ") DELETE FROM ", pending,
                              " WHERE id = ANY($2::bigint[])");
    record_mac = absl::StrCat("SELECT mac FROM ", chain, " WHERE seq = $1");
  }
  std::string chain_head, insert_records, all_records, insert_pending, insert_pending_group,
      pending_batch, all_pending, record_mac, seal_batch, seal_write, any_pending;
};

PgAuditLog::PgAuditLog(db::ConnectionPool& pool, crypto::SecretBytes audit_key, ChainSpec spec)
    : PgAuditLog(pool, pool, std::move(audit_key), std::move(spec)) {}

PgAuditLog::PgAuditLog(db::ConnectionPool& pool, db::ConnectionPool& writer_pool,
                       crypto::SecretBytes audit_key, ChainSpec spec)
    : pool_(pool),
      writer_pool_(writer_pool),
      audit_key_(std::move(audit_key)),
      spec_(std::move(spec)),
      sql_(std::make_unique<const Statements>(spec_)),
      pending_ids_(spec_.pending_id_sequence, spec_.pending_id_block) {}

absl::Status PgAuditLog::Append(const AuditEvent& event) {
  return db::RunInTransaction(pool_,
                              [&](pqxx::work& tx) { return AppendInTransaction(tx, event); });
}

absl::StatusOr<PgAuditLog::PreparedPending> PgAuditLog::PreparePending(pqxx::transaction_base& tx,
                                                                       const AuditEvent& e) {
  PreparedPending out{.id = pending_ids_.Next(tx)};
  RKL_ASSIGN_OR_RETURN(out.mac, PendingAuditMac(spec_, audit_key_, out.id, e));
  return out;
}

absl::StatusOr<std::vector<PgAuditLog::PreparedPending>> PgAuditLog::PreparePending(
    std::span<const AuditEvent> events) {
  std::vector<PreparedPending> out;
  if (events.empty()) return out;
  absl::StatusOr<std::vector<uint64_t>> ids = db::RunAutocommitRead(
      writer_pool_, [&](pqxx::nontransaction& tx) -> absl::StatusOr<std::vector<uint64_t>> {
        return pending_ids_.Take(tx, events.size());
      });
  RKL_RETURN_IF_ERROR(ids.status());
  if (ids->size() != events.size()) return absl::InternalError("audit: too few record ids");
  out.reserve(events.size());
  for (size_t i = 0; i < events.size(); ++i) {
    RKL_ASSIGN_OR_RETURN(Bytes mac, PendingAuditMac(spec_, audit_key_, (*ids)[i], events[i]));
    out.push_back({.id = (*ids)[i], .mac = std::move(mac)});
  }
  return out;
}

absl::StatusOr<std::string> PgAuditLog::PreparePendingJson(std::span<const AuditEvent> events) {
  RKL_ASSIGN_OR_RETURN(std::vector<PreparedPending> pending, PreparePending(events));
  JsonRows rows;
  for (size_t i = 0; i < events.size(); ++i) {
    AddRecordRow(rows, "id", pending[i].id, events[i], pending[i].mac)
        .Field("ord", static_cast<int64_t>(i));
  }
  return rows.Finish();
}

absl::StatusOr<AuditVerification> PgAuditLog::VerifyWithAnchorText(std::string_view anchor_text) {
  if (anchor_text.empty()) return Verify(nullptr);
  RKL_ASSIGN_OR_RETURN(AuditAnchor anchor, ParseAuditAnchor(spec_, anchor_text));
  return Verify(&anchor);
}

absl::Status PgAuditLog::AppendInTransaction(pqxx::transaction_base& tx, const AuditEvent& event) {
  const AuditEvent e = WithCurrentRequestId(event);
  RKL_ASSIGN_OR_RETURN(PreparedPending p, PreparePending(tx, e));
  db::Exec(tx, sql_->insert_pending, p.id, e.at_ms, e.actor, e.action, e.sn, e.detail, e.result,
           pqxx::binarystring(p.mac.data(), p.mac.size()), e.request_id);
  return absl::OkStatus();
}

absl::Status PgAuditLog::AppendGrouped(std::span<const AuditEvent> events) {
  if (events.empty()) return absl::InternalError("audit: an empty group append");
  // The caller's request id, taken on the caller's thread: another thread may write the group.
  // The copies outlive the write, which this call waits for.
  std::vector<AuditEvent> stamped;
  stamped.reserve(events.size());
  for (const AuditEvent& event : events) stamped.push_back(WithCurrentRequestId(event));
  absl::MutexLock lock(&group_mu_);
  const uint64_t mine = next_group_;
  for (const AuditEvent& event : stamped) group_queue_.push_back(&event);
  ++group_members_[mine];
  while (done_group_ < mine) {
    if (flushing_) {
      group_cv_.Wait(&group_mu_);
      continue;
    }
    // Nobody is writing: this thread writes everything queued so far, its own record
    // included, as one group.
    flushing_ = true;
    const uint64_t group = next_group_++;
    std::vector<const AuditEvent*> events = std::move(group_queue_);
    group_queue_.clear();
    std::function<void()> hook = group_hook_;
    group_mu_.Unlock();
    if (hook) hook();
    absl::Status written = WriteGroup(events);
    group_mu_.Lock();
    flushing_ = false;
    done_group_ = group;
    group_status_[group] = std::move(written);
    ++groups_written_;
    group_cv_.SignalAll();
  }
  absl::Status status = group_status_[mine];
  if (--group_members_[mine] == 0) {
    group_members_.erase(mine);
    group_status_.erase(mine);
  }
  return status;
}

absl::Status PgAuditLog::WriteGroup(const std::vector<const AuditEvent*>& events) {
  // Ids first (no round trip unless the block is used up), then the group is one statement
  // in autocommit: one round trip where a transaction took three.
  absl::StatusOr<std::vector<uint64_t>> ids = db::RunAutocommitRead(
      writer_pool_, [&](pqxx::nontransaction& tx) -> absl::StatusOr<std::vector<uint64_t>> {
        return pending_ids_.Take(tx, events.size());
      });
  RKL_RETURN_IF_ERROR(ids.status());
  if (ids->size() != events.size()) return absl::InternalError("audit: too few record ids");
  JsonRows rows;
  for (size_t i = 0; i < events.size(); ++i) {
    const AuditEvent& e = *events[i];
    RKL_ASSIGN_OR_RETURN(Bytes mac, PendingAuditMac(spec_, audit_key_, (*ids)[i], e));
    AddRecordRow(rows, "id", (*ids)[i], e, mac);
  }
  const std::string json = rows.Finish();
  return db::RunAutocommitWrite(writer_pool_, [&](db::OneStatement& stmt) {
    stmt.Exec(sql_->insert_pending_group, json);
    return absl::OkStatus();
  });
}

void PgAuditLog::SetGroupHookForTest(std::function<void()> hook) {
  absl::MutexLock lock(&group_mu_);
  group_hook_ = std::move(hook);
}

size_t PgAuditLog::queued_for_test() {
  absl::MutexLock lock(&group_mu_);
  return group_queue_.size();
}

uint64_t PgAuditLog::groups_written() {
  absl::MutexLock lock(&group_mu_);
  return groups_written_;
}

absl::StatusOr<uint64_t> PgAuditLog::SealBatch(int limit) {
  return db::RunInTransaction(writer_pool_, [&](pqxx::work& tx) -> absl::StatusOr<uint64_t> {
    // The lock orders sealers across threads and replicas; under READ COMMITTED the reads
    // after it see the previous holder's committed chain and deletions.
    db::Exec(tx, kLockChain, spec_.lock_class, kAuditLockChain);
    pqxx::result pending = db::Exec(tx, sql_->seal_batch, limit);
    if (pending.empty()) return uint64_t{0};
    // Every row carries the head (NULL on an empty chain).
    uint64_t seq = 0;
    Bytes prev(kMacSize, 0);
    if (const pqxx::row& first = pending[0]; !first["head_seq"].is_null()) {
      seq = first["head_seq"].as<uint64_t>();
      prev = ToBytes(first["head_mac"]);
    }
    std::string ids = "{";
    JsonRows records;
    for (const auto& row : pending) {
      const uint64_t id = row[0].as<uint64_t>();
      AuditEvent e = EventFromRow(row);
      RKL_ASSIGN_OR_RETURN(Bytes expected, PendingAuditMac(spec_, audit_key_, id, e));
      if (!SameMac(expected, ToBytes(row[7]))) {
        // Its content cannot be trusted, so none of it goes into the chain.
        spdlog::error("audit: pending record {} failed its MAC; chained as tampered", id);
        e = AuditEvent{.at_ms = e.at_ms,
                       .actor = spec_.name,
                       .action = kTamperedAction,
                       .detail = absl::StrCat("pending record ", id,
                                              " failed its MAC; its content is not trusted"),
                       .result = "DATA_LOSS"};
      }
      ++seq;
      RKL_ASSIGN_OR_RETURN(Bytes mac, ChainMac(audit_key_, prev, seq, e));
      AddRecordRow(records, "seq", seq, e, mac);
      prev = std::move(mac);
      absl::StrAppend(&ids, ids.size() > 1 ? "," : "", id);
    }
    ids += "}";
    db::Exec(tx, sql_->seal_write, records.Finish(), ids);
    return static_cast<uint64_t>(pending.size());
  });
}

absl::StatusOr<uint64_t> PgAuditLog::Seal() {
  uint64_t total = 0;
  while (true) {
    RKL_ASSIGN_OR_RETURN(uint64_t n, SealBatch(kSealBatch));
    total += n;
    if (n < static_cast<uint64_t>(kSealBatch)) return total;
  }
}

void PgAuditLog::Start(absl::Duration interval) {
  absl::MutexLock lock(&mu_);
  if (sealer_.joinable()) return;
  stop_ = false;
  sealer_ = std::thread([this, interval] { SealerLoop(interval); });
}

void PgAuditLog::Stop() {
  {
    absl::MutexLock lock(&mu_);
    if (!sealer_.joinable()) return;
    stop_ = true;
  }
  sealer_.join();
  absl::MutexLock lock(&mu_);
  sealer_ = std::thread();
}

PgAuditLog::~PgAuditLog() { Stop(); }

namespace {

// Whether any pending record has committed, in one autocommit statement (`sql`).
absl::StatusOr<bool> AnyPending(db::ConnectionPool& pool, const std::string& sql) {
  return db::RunAutocommitRead(pool, [&](pqxx::nontransaction& tx) -> absl::StatusOr<bool> {
    return db::Exec(tx, sql)[0][0].as<bool>();
  });
}

}  // namespace

void PgAuditLog::SealerLoop(absl::Duration interval) {
  // After a pass that found nothing, the next one first asks (one autocommit statement)
  // whether anything is pending, and takes the lock only if so: an idle pass costs one
  // statement instead of a transaction. After a pass that sealed, it goes straight on.
  bool busy = true;
  while (true) {
    bool stopping;
    {
      absl::MutexLock lock(&mu_);
      mu_.AwaitWithTimeout(absl::Condition(&stop_), interval);
      stopping = stop_;
    }
    if (!busy && !stopping) {
      absl::StatusOr<bool> pending = AnyPending(writer_pool_, sql_->any_pending);
      if (pending.ok() && !*pending) {
        if (absl::StatusOr<bool> anchored = AnchorIfDue(); !anchored.ok()) {
          spdlog::warn("audit: anchoring failed: {}", anchored.status().ToString());
        }
        continue;
      }
    }
    absl::StatusOr<uint64_t> sealed = Seal();
    busy = !sealed.ok() || *sealed > 0;
    if (!sealed.ok()) {
      // Nothing is lost: the records stay pending, durable, until a later pass.
      spdlog::warn("audit: sealing pending records failed (will retry): {}",
                   sealed.status().ToString());
    } else if (absl::StatusOr<bool> anchored = AnchorIfDue(); !anchored.ok()) {
      // A refused anchor was logged (critical) by Anchor(); a failed write is retried.
      spdlog::warn("audit: anchoring failed: {}", anchored.status().ToString());
    }
    if (stopping) return;
  }
}

absl::Status PgAuditLog::CheckAnchorMac(const AuditAnchor& anchor) {
  RKL_ASSIGN_OR_RETURN(Bytes expected, AuditAnchorMac(spec_, audit_key_, anchor));
  if (!SameMac(expected, anchor.mac) || anchor.head_mac.size() != kMacSize) {
    return absl::UnauthenticatedError(
        absl::StrCat("anchor: MAC does not verify (not an anchor of this ",
                     absl::AsciiStrToUpper(spec_.name), ", or altered)"));
  }
  return absl::OkStatus();
}

absl::StatusOr<AuditVerification> PgAuditLog::Verify(const AuditAnchor* anchor) {
  if (anchor != nullptr) RKL_RETURN_IF_ERROR(CheckAnchorMac(*anchor));
  RKL_RETURN_IF_ERROR(Seal().status());
  return db::RunInTransaction(
      pool_,
      [&](pqxx::work& tx) -> absl::StatusOr<AuditVerification> {
        AuditVerification v;
        if (anchor != nullptr) v.anchor_seq = anchor->seq;
        Bytes prev(kMacSize, 0);
        uint64_t expected_seq = 1;
        for (const auto& row : db::Exec(tx, sql_->all_records)) {
          uint64_t seq = row[0].as<uint64_t>();
          AuditEvent e = EventFromRow(row);
          Bytes stored = ToBytes(row[7]);
          ++v.records_checked;
          RKL_ASSIGN_OR_RETURN(Bytes mac, ChainMac(audit_key_, prev, seq, e));
          if (seq != expected_seq || !SameMac(stored, mac) || IsTamperedRecord(e)) {
            v.intact = false;
            v.first_broken_seq = seq;
            v.finding = seq != expected_seq ? absl::StrCat("record ", expected_seq, " is missing")
                        : IsTamperedRecord(e)
                            ? absl::StrCat("record ", seq, " replaces a tampered pending record")
                            : absl::StrCat("record ", seq, " does not match its MAC");
            return v;
          }
          if (anchor != nullptr && seq == anchor->seq && !SameMac(stored, anchor->head_mac)) {
            // Chained correctly, yet not the record the service anchored: only someone with the
            // audit key could have made it.
            v.intact = false;
            v.first_broken_seq = seq;
            v.finding =
                absl::StrCat("record ", seq, " is not the one anchored at unix ms ", anchor->at_ms);
            return v;
          }
          prev = std::move(stored);
          expected_seq = seq + 1;
        }
        if (anchor != nullptr && anchor->seq >= expected_seq) {
          v.intact = false;
          v.first_broken_seq = expected_seq;
          v.finding = absl::StrCat("the chain ends at record ", expected_seq - 1,
                                   " but the anchor of unix ms ", anchor->at_ms, " holds record ",
                                   anchor->seq, ": records ", expected_seq, "..", anchor->seq,
                                   " were removed");
          return v;
        }
        // Records committed since the seal above: checked by their own MACs.
        for (const auto& row : db::Exec(tx, sql_->all_pending)) {
          ++v.records_checked;
          RKL_ASSIGN_OR_RETURN(Bytes mac, PendingAuditMac(spec_, audit_key_, row[0].as<uint64_t>(),
                                                          EventFromRow(row)));
          if (!SameMac(ToBytes(row[7]), mac)) {
            v.intact = false;
            v.first_broken_seq = expected_seq;
            v.finding = "a pending record does not match its MAC";
            return v;
          }
        }
        return v;
      },
      db::TransactionOptions{.isolation = db::IsolationLevel::kRepeatableRead, .read_only = true});
}

void PgAuditLog::ConfigureAnchors(AnchorOptions options) {
  absl::MutexLock lock(&anchor_mu_);
  anchor_options_ = std::move(options);
  last_anchor_ms_.reset();
}

absl::Status PgAuditLog::CheckChainHolds(const AuditAnchor& anchor) {
  if (anchor.seq == 0) return absl::OkStatus();  // an empty chain holds nothing to lose
  absl::StatusOr<bool> holds =
      db::RunAutocommitRead(pool_, [&](pqxx::nontransaction& tx) -> absl::StatusOr<bool> {
        pqxx::result r = db::Exec(tx, sql_->record_mac, static_cast<int64_t>(anchor.seq));
        return !r.empty() && SameMac(ToBytes(r[0][0]), anchor.head_mac);
      });
  RKL_RETURN_IF_ERROR(holds.status());
  if (*holds) return absl::OkStatus();
  return absl::FailedPreconditionError(absl::StrCat(
      "the audit chain no longer holds record ", anchor.seq, " as anchored at unix ms ",
      anchor.at_ms, ": records were removed or replaced since"));
}

absl::StatusOr<AuditAnchor> PgAuditLog::Anchor() {
  absl::MutexLock lock(&anchor_mu_);
  RKL_RETURN_IF_ERROR(Seal().status());
  const AnchorOptions& o = anchor_options_;
  const int64_t now = o.now_ms ? o.now_ms() : NowUnixMs(SystemClock());
  if (!o.file.empty()) {
    RKL_ASSIGN_OR_RETURN(std::optional<AuditAnchor> previous, ReadAnchorFile(spec_, o.file));
    if (previous) {
      absl::Status held = CheckAnchorMac(*previous);
      if (held.ok()) held = CheckChainHolds(*previous);
      if (!held.ok()) {
        if (absl::IsUnavailable(held)) return held;  // the database, not the chain
        const std::string what = absl::StrCat("anchor file ", o.file, ": ", held.message());
        spdlog::critical("audit: {}; the anchor file is kept as evidence", what);
        // Chained like any record, so the chain itself carries the finding from here on.
        (void)Append(AuditEvent{.at_ms = now,
                                .actor = spec_.name,
                                .action = kAnchorMismatchAction,
                                .detail = what,
                                .result = "DATA_LOSS"});
        return absl::FailedPreconditionError(absl::StrCat(
            what, ". The file is left as it is: investigate, then move it away to anchor afresh"));
      }
    }
  }
  AuditAnchor anchor{.instance_id = o.instance_id, .head_mac = Bytes(kMacSize, 0), .at_ms = now};
  absl::Status read =
      db::RunAutocommitRead(pool_, [&](pqxx::nontransaction& tx) -> absl::StatusOr<bool> {
        pqxx::result head = db::Exec(tx, sql_->chain_head);
        if (!head.empty()) {
          anchor.seq = head[0][0].as<uint64_t>();
          anchor.head_mac = ToBytes(head[0][1]);
        }
        return true;
      }).status();
  RKL_RETURN_IF_ERROR(read);
  RKL_ASSIGN_OR_RETURN(anchor.mac, AuditAnchorMac(spec_, audit_key_, anchor));
  if (!o.file.empty()) {
    RKL_RETURN_IF_ERROR(WriteFileAtomically(o.file, FormatAuditAnchor(spec_, anchor) + "\n"));
    // In the log too, so a central log store keeps every anchor, not only the latest.
    spdlog::info("audit anchor: {}", FormatAuditAnchor(spec_, anchor));
  }
  last_anchor_ms_ = now;
  return anchor;
}

absl::StatusOr<bool> PgAuditLog::AnchorIfDue() {
  {
    absl::MutexLock lock(&anchor_mu_);
    const AnchorOptions& o = anchor_options_;
    if (o.file.empty() || o.interval <= absl::ZeroDuration()) return false;
    const int64_t now = o.now_ms ? o.now_ms() : NowUnixMs(SystemClock());
    if (last_anchor_ms_ && now - *last_anchor_ms_ < absl::ToInt64Milliseconds(o.interval)) {
      return false;
    }
  }
  RKL_RETURN_IF_ERROR(Anchor().status());
  return true;
}

AuditEvent ChainedEventFromRow(const pqxx::row& row) {
  AuditEvent e = EventFromRow(row);
  e.seq = row[0].as<uint64_t>();
  return e;
}

void ToProto(const AuditVerification& v, v1::VerifyAuditChainResponse* out) {
  out->set_intact(v.intact);
  out->set_records_checked(v.records_checked);
  out->set_first_broken_seq(v.first_broken_seq);
  out->set_anchor_seq(v.anchor_seq);
  out->set_finding(v.finding);
}

}  // namespace rkl::audit
