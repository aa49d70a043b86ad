#include "audit_log.h"

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>

#include <pqxx/pqxx>

#include "absl/strings/str_cat.h"
#include "rkl/common/json.h"
#include "rkl/common/status_macros.h"
#include "rkl/crypto/kdf.h"
#include "rkl/crypto/openssl_ptr.h"
#include "rkl/db/prepared.h"
#include "rkl/db/transaction.h"
#include "spdlog/spdlog.h"

namespace rkl::hsm {
namespace {

constexpr size_t kMacSize = 32;
// Any fixed number: the class of pg_advisory_xact_lock(int, int) keys used by rkl-hsm, and
// the object within it.
constexpr int kAuditLockClass = 0x524B4C48;  // "RKLH"
constexpr int kAuditLockChain = 1;

constexpr char kLockChain[] = "SELECT pg_advisory_xact_lock($1, $2)";
constexpr char kChainHead[] = "SELECT seq, mac FROM hsm_audit ORDER BY seq DESC LIMIT 1";
// A sealed batch in one statement (one round trip, not one per record).
constexpr char kInsertRecords[] =
    "INSERT INTO hsm_audit (seq, at_ms, actor, action, sn, detail, result, mac) "
    "SELECT x.seq, x.at_ms, x.actor, x.action, x.sn, x.detail, x.result, decode(x.mac, 'hex') "
    "FROM jsonb_to_recordset($1::jsonb) AS x(seq bigint, at_ms bigint, actor text, "
    "action text, sn text, detail text, result text, mac text)";
constexpr char kAllRecords[] =
    "SELECT seq, at_ms, actor, action, sn, detail, result, mac FROM hsm_audit ORDER BY seq";
constexpr char kInsertPending[] =
    "INSERT INTO hsm_audit_pending (id, at_ms, actor, action, sn, detail, result, mac) "
    "VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";
// A group of pending records in one statement; mac as hex text.
constexpr char kInsertPendingGroup[] =
    "INSERT INTO hsm_audit_pending (id, at_ms, actor, action, sn, detail, result, mac) "
    "SELECT x.id, x.at_ms, x.actor, x.action, x.sn, x.detail, x.result, decode(x.mac, 'hex') "
    "FROM jsonb_to_recordset($1::jsonb) AS x(id bigint, at_ms bigint, actor text, action text, "
    "sn text, detail text, result text, mac text)";
constexpr char kPendingBatch[] =
    "SELECT id, at_ms, actor, action, sn, detail, result, mac FROM hsm_audit_pending "
    "ORDER BY id LIMIT $1";
constexpr char kAllPending[] =
    "SELECT id, at_ms, actor, action, sn, detail, result, mac FROM hsm_audit_pending "
    "ORDER BY id";
constexpr char kDeletePending[] = "DELETE FROM hsm_audit_pending WHERE id = ANY($1::bigint[])";

constexpr char kPendingTag[] = "RKL-HSM-AUDIT-PENDING-1";
// What the sealer chains in place of a pending record whose MAC does not verify.
constexpr char kTamperedAction[] = "audit_record_tampered";
constexpr int kSealBatch = 2000;

// One record as a row of the JSON that kInsertPendingGroup and kInsertRecords read;
// `number` is the pending id or the chain seq, under the column name `number_name`.
void AddRecordRow(JsonRows& rows, const char* number_name, uint64_t number, const AuditEvent& e,
                  const Bytes& mac) {
  rows.Row()
      .Field(number_name, static_cast<int64_t>(number))
      .Field("at_ms", e.at_ms)
      .Field("actor", e.actor)
      .Field("action", e.action)
      .Field("sn", e.sn)
      .Field("detail", e.detail)
      .Field("result", e.result)
      .Field("mac", ToHex(mac));
}

void PutBigEndian(Bytes& out, uint64_t v, int bytes) {
  for (int i = bytes - 1; i >= 0; --i) out.push_back(static_cast<uint8_t>(v >> (8 * i)));
}

void PutText(Bytes& out, const std::string& s) {
  PutBigEndian(out, s.size(), 4);
  out.insert(out.end(), s.begin(), s.end());
}

Bytes ToBytes(const pqxx::field& f) {
  pqxx::binarystring b(f);
  return Bytes(b.data(), b.data() + b.size());
}

AuditEvent EventFromRow(const pqxx::row& row) {
  return AuditEvent{row[1].as<int64_t>(),     row[2].as<std::string>(), row[3].as<std::string>(),
                    row[4].as<std::string>(), row[5].as<std::string>(), row[6].as<std::string>()};
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

}  // namespace

absl::StatusOr<crypto::SecretBytes> DeriveAuditKey(const crypto::SecretBytes& lmk,
                                                   const std::string& hsm_id) {
  return crypto::KdfCounterCmac(crypto::CipherFamily::kAes, lmk, "RKL-HSM-AUDIT", hsm_id, 256);
}

namespace {

// An HMAC context with its digest (SHA-256) set, copied for every MAC: fetching HMAC and
// SHA-256 by name takes a lock on OpenSSL's provider store each time. Only read (copied)
// after it is made, so it is safe to share between threads. Null if OpenSSL lacks either.
const EVP_MAC_CTX* HmacSha256Template() {
  static EVP_MAC_CTX* const ctx = [] {
    EVP_MAC* mac = EVP_MAC_fetch(nullptr, "HMAC", nullptr);
    EVP_MAC_CTX* made = mac != nullptr ? EVP_MAC_CTX_new(mac) : nullptr;
    EVP_MAC_free(mac);  // the context holds its own reference
    char digest[] = "SHA256";
    OSSL_PARAM params[] = {OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest, 0),
                           OSSL_PARAM_construct_end()};
    if (made != nullptr && EVP_MAC_CTX_set_params(made, params) != 1) {
      EVP_MAC_CTX_free(made);
      made = nullptr;
    }
    return made;
  }();
  return ctx;
}

}  // namespace

absl::StatusOr<Bytes> HmacSha256(const crypto::SecretBytes& key, std::span<const uint8_t> data) {
  const EVP_MAC_CTX* tmpl = HmacSha256Template();
  if (tmpl == nullptr) return absl::InternalError("HMAC unavailable");
  crypto::EvpMacCtxPtr ctx(EVP_MAC_CTX_dup(tmpl));
  auto k = key.RevealSecret();
  Bytes out(kMacSize);
  size_t out_len = 0;
  if (!ctx || EVP_MAC_init(ctx.get(), k.data(), k.size(), nullptr) != 1 ||
      EVP_MAC_update(ctx.get(), data.data(), data.size()) != 1 ||
      EVP_MAC_final(ctx.get(), out.data(), &out_len, out.size()) != 1 || out_len != kMacSize) {
    return absl::InternalError("HMAC-SHA256 failed");
  }
  return out;
}

absl::StatusOr<Bytes> PendingAuditMac(const crypto::SecretBytes& key, uint64_t id,
                                      const AuditEvent& event) {
  Bytes data(kPendingTag, kPendingTag + sizeof(kPendingTag) - 1);
  PutBigEndian(data, id, 8);
  Bytes record = CanonicalAuditRecord(0, event);
  data.insert(data.end(), record.begin(), record.end());
  return HmacSha256(key, data);
}

Bytes CanonicalAuditRecord(uint64_t seq, const AuditEvent& e) {
  Bytes out;
  PutBigEndian(out, seq, 8);
  PutBigEndian(out, static_cast<uint64_t>(e.at_ms), 8);
  PutText(out, e.actor);
  PutText(out, e.action);
  PutText(out, e.sn);
  PutText(out, e.detail);
  PutText(out, e.result);
  return out;
}

PgAuditLog::PgAuditLog(db::ConnectionPool& pool, crypto::SecretBytes audit_key)
    : pool_(pool), writer_pool_(pool), audit_key_(std::move(audit_key)) {}

PgAuditLog::PgAuditLog(db::ConnectionPool& pool, db::ConnectionPool& writer_pool,
                       crypto::SecretBytes audit_key)
    : pool_(pool), writer_pool_(writer_pool), audit_key_(std::move(audit_key)) {}

absl::Status PgAuditLog::Append(const AuditEvent& event) {
  return db::RunInTransaction(pool_,
                              [&](pqxx::work& tx) { return AppendInTransaction(tx, event); });
}

absl::StatusOr<PgAuditLog::PreparedPending> PgAuditLog::PreparePending(pqxx::transaction_base& tx,
                                                                       const AuditEvent& e) {
  PreparedPending out{.id = pending_ids_.Next(tx)};
  RKL_ASSIGN_OR_RETURN(out.mac, PendingAuditMac(audit_key_, out.id, e));
  return out;
}

absl::Status PgAuditLog::AppendInTransaction(pqxx::transaction_base& tx, const AuditEvent& e) {
  RKL_ASSIGN_OR_RETURN(PreparedPending p, PreparePending(tx, e));
  db::Exec(tx, kInsertPending, p.id, e.at_ms, e.actor, e.action, e.sn, e.detail, e.result,
           pqxx::binarystring(p.mac.data(), p.mac.size()));
  return absl::OkStatus();
}

absl::Status PgAuditLog::AppendGrouped(std::span<const AuditEvent> events) {
  if (events.empty()) return absl::InternalError("audit: an empty group append");
  absl::MutexLock lock(&group_mu_);
  const uint64_t mine = next_group_;
  for (const AuditEvent& event : events) group_queue_.push_back(&event);
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
    RKL_ASSIGN_OR_RETURN(Bytes mac, PendingAuditMac(audit_key_, (*ids)[i], e));
    AddRecordRow(rows, "id", (*ids)[i], e, mac);
  }
  const std::string json = rows.Finish();
  return db::RunAutocommitWrite(writer_pool_, [&](db::OneStatement& stmt) {
    stmt.Exec(kInsertPendingGroup, json);
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
    db::Exec(tx, kLockChain, kAuditLockClass, kAuditLockChain);
    pqxx::result pending = db::Exec(tx, kPendingBatch, limit);
    if (pending.empty()) return uint64_t{0};
    pqxx::result head = db::Exec(tx, kChainHead);
    uint64_t seq = 0;
    Bytes prev(kMacSize, 0);
    if (!head.empty()) {
      seq = head[0][0].as<uint64_t>();
      prev = ToBytes(head[0][1]);
    }
    std::string ids = "{";
    JsonRows records;
    for (const auto& row : pending) {
      const uint64_t id = row[0].as<uint64_t>();
      AuditEvent e = EventFromRow(row);
      RKL_ASSIGN_OR_RETURN(Bytes expected, PendingAuditMac(audit_key_, id, e));
      if (!SameMac(expected, ToBytes(row[7]))) {
        // Its content cannot be trusted, so none of it goes into the chain.
        spdlog::error("audit: pending record {} failed its MAC; chained as tampered", id);
        e = AuditEvent{.at_ms = e.at_ms,
                       .actor = "hsm",
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
    db::Exec(tx, kInsertRecords, records.Finish());
    db::Exec(tx, kDeletePending, ids);
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

void PgAuditLog::SealerLoop(absl::Duration interval) {
  while (true) {
    bool stopping;
    {
      absl::MutexLock lock(&mu_);
      mu_.AwaitWithTimeout(absl::Condition(&stop_), interval);
      stopping = stop_;
    }
    absl::StatusOr<uint64_t> sealed = Seal();
    if (!sealed.ok()) {
      // Nothing is lost: the records stay pending, durable, until a later pass.
      spdlog::warn("audit: sealing pending records failed (will retry): {}",
                   sealed.status().ToString());
    }
    if (stopping) return;
  }
}

absl::StatusOr<AuditVerification> PgAuditLog::Verify() {
  RKL_RETURN_IF_ERROR(Seal().status());
  return db::RunInTransaction(
      pool_,
      [&](pqxx::work& tx) -> absl::StatusOr<AuditVerification> {
        AuditVerification v;
        Bytes prev(kMacSize, 0);
        uint64_t expected_seq = 1;
        for (const auto& row : db::Exec(tx, kAllRecords)) {
          uint64_t seq = row[0].as<uint64_t>();
          AuditEvent e = EventFromRow(row);
          Bytes stored = ToBytes(row[7]);
          ++v.records_checked;
          RKL_ASSIGN_OR_RETURN(Bytes mac, ChainMac(audit_key_, prev, seq, e));
          if (seq != expected_seq || !SameMac(stored, mac) || e.action == kTamperedAction) {
            v.intact = false;
            v.first_broken_seq = seq;
            return v;
          }
          prev = std::move(stored);
          expected_seq = seq + 1;
        }
        // Records committed since the seal above: checked by their own MACs.
        for (const auto& row : db::Exec(tx, kAllPending)) {
          ++v.records_checked;
          RKL_ASSIGN_OR_RETURN(
              Bytes mac, PendingAuditMac(audit_key_, row[0].as<uint64_t>(), EventFromRow(row)));
          if (!SameMac(ToBytes(row[7]), mac)) {
            v.intact = false;
            v.first_broken_seq = expected_seq;
            return v;
          }
        }
        return v;
      },
      db::TransactionOptions{.isolation = db::IsolationLevel::kRepeatableRead, .read_only = true});
}

}  // namespace rkl::hsm
