#include "memory_kms_repository.h"

#include <algorithm>
#include <set>

#include "absl/status/status.h"
#include "rkl/common/status_macros.h"

namespace rkl::kms::testing {

void MemoryKmsRepository::Append(const std::vector<AuditEntry>& audit) {
  for (AuditEntry e : audit) {
    e.seq = audit_.size() + 1;
    audit_.push_back(std::move(e));
  }
}

absl::StatusOr<TerminalRecord> MemoryKmsRepository::GetTerminal(const std::string& sn) {
  absl::MutexLock lock(&mu_);
  auto it = terminals_.find(sn);
  if (it == terminals_.end()) return absl::NotFoundError("sn: no such terminal");
  return it->second;
}

absl::Status MemoryKmsRepository::InsertTerminal(const TerminalRecord& terminal,
                                                 const std::vector<AuditEntry>& audit) {
  absl::MutexLock lock(&mu_);
  if (terminals_.contains(terminal.sn)) {
    return absl::AlreadyExistsError("unique violation on constraint terminals_pkey");
  }
  TerminalRecord t = terminal;
  t.version = 1;
  terminals_.emplace(t.sn, std::move(t));
  Append(audit);
  return absl::OkStatus();
}

absl::StatusOr<std::vector<bool>> MemoryKmsRepository::InsertFirstTransportKeys(
    std::span<const FirstTransportKey> rows) {
  std::vector<bool> inserted;
  for (const FirstTransportKey& row : rows) {
    absl::Status s = InsertTerminal(row.terminal, row.audit);
    if (!s.ok() && s.code() != absl::StatusCode::kAlreadyExists) return s;
    inserted.push_back(s.ok());
  }
  return inserted;
}

absl::Status MemoryKmsRepository::UpdateTerminal(const TerminalRecord& terminal,
                                                 bool cancel_sessions,
                                                 const std::vector<AuditEntry>& audit) {
  absl::MutexLock lock(&mu_);
  return UpdateLocked(terminal, cancel_sessions, audit);
}

absl::StatusOr<bool> MemoryKmsRepository::UpdateTerminalAndMoveSession(
    const TerminalRecord& terminal, const std::vector<AuditEntry>& audit, const SessionMove& move) {
  absl::MutexLock lock(&mu_);
  RKL_RETURN_IF_ERROR(UpdateLocked(terminal, false, audit));
  auto it = sessions_.find(move.id);
  if (it == sessions_.end() || it->second.state != move.from) return false;
  it->second.state = move.to;
  if (move.tmk_kcv) it->second.tmk_kcv = *move.tmk_kcv;
  return true;
}

absl::Status MemoryKmsRepository::UpdateTerminalAndInsertSession(
    const TerminalRecord& terminal, const std::vector<AuditEntry>& audit,
    const AuthSession& session) {
  absl::MutexLock lock(&mu_);
  if (sessions_.contains(session.id)) {
    return absl::AlreadyExistsError("unique violation on constraint auth_sessions_pkey");
  }
  RKL_RETURN_IF_ERROR(UpdateLocked(terminal, false, audit));
  sessions_.emplace(session.id, session);
  return absl::OkStatus();
}

absl::Status MemoryKmsRepository::UpdateLocked(const TerminalRecord& terminal, bool cancel_sessions,
                                               const std::vector<AuditEntry>& audit) {
  auto it = terminals_.find(terminal.sn);
  if (it == terminals_.end() || it->second.version != terminal.version) {
    return absl::AbortedError("terminal changed concurrently");
  }
  // The database's UNIQUE (tmk_index).
  if (terminal.tmk_index) {
    for (const auto& [sn, t] : terminals_) {
      if (sn != terminal.sn && t.tmk_index == terminal.tmk_index) {
        return absl::AlreadyExistsError("unique violation on constraint terminals_tmk_index_key");
      }
    }
  }
  TerminalRecord t = terminal;
  t.version = terminal.version + 1;
  it->second = std::move(t);
  if (terminal.consecutive_failures == 0) retry_after_ms_.erase(terminal.sn);
  if (cancel_sessions) {
    for (auto& [id, s] : sessions_) {
      if (s.sn == terminal.sn &&
          (s.state == SessionState::kOpen || s.state == SessionState::kAuthenticated)) {
        s.state = SessionState::kCancelled;
      }
    }
  }
  Append(audit);
  return absl::OkStatus();
}

absl::StatusOr<std::vector<TerminalRecord>> MemoryKmsRepository::ListTerminals(
    const TerminalFilter& filter) {
  absl::MutexLock lock(&mu_);
  std::vector<TerminalRecord> out;
  for (auto it = terminals_.upper_bound(filter.after_sn);
       it != terminals_.end() && static_cast<int>(out.size()) < filter.limit; ++it) {
    if (filter.state && it->second.state != *filter.state) continue;
    if (!it->first.starts_with(filter.sn_prefix)) continue;
    out.push_back(it->second);
  }
  return out;
}

absl::Status MemoryKmsRepository::InsertSession(const AuthSession& session,
                                                const std::vector<AuditEntry>& audit) {
  absl::MutexLock lock(&mu_);
  auto t = terminals_.find(session.sn);
  if (t == terminals_.end()) return absl::FailedPreconditionError("integrity violation");
  if (sessions_.contains(session.id)) {
    return absl::AlreadyExistsError("unique violation on constraint auth_sessions_pkey");
  }
  const TerminalState state = t->second.state;
  if ((state != TerminalState::kTkReceived && state != TerminalState::kAuthenticated &&
       state != TerminalState::kTmkDelivered && state != TerminalState::kInstalled) ||
      t->second.auk_index != session.auk_index) {
    return absl::FailedPreconditionError(
        "sn: the terminal changed while the session was being opened");
  }
  if (!sessions_.emplace(session.id, session).second) {
    return absl::AlreadyExistsError("unique violation on constraint auth_sessions_pkey");
  }
  Append(audit);
  return absl::OkStatus();
}

absl::StatusOr<AuthSession> MemoryKmsRepository::GetSession(const std::string& id) {
  absl::MutexLock lock(&mu_);
  auto it = sessions_.find(id);
  if (it == sessions_.end()) return absl::NotFoundError("session_id: no such session");
  return it->second;
}

absl::StatusOr<bool> MemoryKmsRepository::TransitionSession(
    const std::string& id, SessionState from, SessionState to,
    const std::optional<std::string>& tmk_kcv) {
  absl::MutexLock lock(&mu_);
  auto it = sessions_.find(id);
  if (it == sessions_.end() || it->second.state != from) return false;
  it->second.state = to;
  if (tmk_kcv) it->second.tmk_kcv = *tmk_kcv;
  return true;
}

absl::StatusOr<int64_t> MemoryKmsRepository::PurgeSessions(int64_t expired_before_ms) {
  absl::MutexLock lock(&mu_);
  return static_cast<int64_t>(std::erase_if(
      sessions_, [&](const auto& s) { return s.second.expires_at_ms < expired_before_ms; }));
}

absl::Status MemoryKmsRepository::AddRefusalCounts(const std::vector<RefusalCount>& counts) {
  refusal_counts_.Add(counts);
  return absl::OkStatus();
}

absl::StatusOr<std::vector<RefusalCount>> MemoryKmsRepository::ListRefusalCounts() {
  return refusal_counts_.List();
}

absl::StatusOr<int64_t> MemoryKmsRepository::PurgeRefusalCounts(int64_t before_ms) {
  return refusal_counts_.Purge(before_ms);
}

absl::StatusOr<ProofAttempt> MemoryKmsRepository::ChargeProofAttempt(
    const std::string& sn, const ProofAttemptPolicy& policy) {
  absl::MutexLock lock(&mu_);
  auto it = terminals_.find(sn);
  if (it == terminals_.end()) return absl::NotFoundError("sn: no such terminal");
  TerminalRecord& t = it->second;
  int64_t& retry_after = retry_after_ms_[sn];
  ProofAttempt a{
      .failures = t.consecutive_failures, .retry_after_ms = retry_after, .version = t.version};
  if (t.state == TerminalState::kLocked || t.state == TerminalState::kRevoked ||
      retry_after > policy.now_ms || t.consecutive_failures >= policy.lock_after) {
    return a;
  }
  int64_t wait = policy.backoff_max_ms;
  if (t.consecutive_failures < 62 &&
      policy.backoff_base_ms <= (policy.backoff_max_ms >> t.consecutive_failures)) {
    wait = std::min(policy.backoff_max_ms, policy.backoff_base_ms << t.consecutive_failures);
  }
  retry_after = policy.now_ms + wait;
  ++t.consecutive_failures;
  ++t.version;
  return ProofAttempt{.allowed = true,
                      .failures = t.consecutive_failures,
                      .retry_after_ms = retry_after,
                      .version = t.version};
}

absl::Status MemoryKmsRepository::RefundProofAttempt(const std::string& sn, int64_t now_ms) {
  absl::MutexLock lock(&mu_);
  auto it = terminals_.find(sn);
  if (it == terminals_.end()) return absl::OkStatus();
  if (it->second.consecutive_failures > 0) --it->second.consecutive_failures;
  int64_t& retry_after = retry_after_ms_[sn];
  retry_after = std::min(retry_after, now_ms);
  ++it->second.version;
  return absl::OkStatus();
}

absl::Status MemoryKmsRepository::AppendAudit(const std::vector<AuditEntry>& audit) {
  absl::MutexLock lock(&mu_);
  Append(audit);
  return absl::OkStatus();
}

absl::StatusOr<std::vector<AuditEntry>> MemoryKmsRepository::ListAudit(const std::string& sn,
                                                                       uint64_t after_seq,
                                                                       int limit) {
  absl::MutexLock lock(&mu_);
  std::vector<AuditEntry> out;
  for (const AuditEntry& e : audit_) {
    if (static_cast<int>(out.size()) >= limit) break;
    if (e.seq <= after_seq || (!sn.empty() && e.sn != sn)) continue;
    out.push_back(e);
  }
  return out;
}

absl::StatusOr<Statistics> MemoryKmsRepository::GetStatistics(
    const std::vector<std::string>& failure_actions) {
  absl::MutexLock lock(&mu_);
  Statistics st;
  std::map<std::string, uint64_t> by_state;
  std::map<std::string, uint64_t> by_protocol;
  std::set<std::string> kcvs;
  for (const auto& [sn, t] : terminals_) {
    ++by_state[TerminalStateName(t.state)];
    ++by_protocol[TerminalProtocolName(t.protocol)];
    if (!t.tmk_kcv.empty()) kcvs.insert(t.tmk_kcv);
  }
  st.terminals_by_state.assign(by_state.begin(), by_state.end());
  st.terminals_by_protocol.assign(by_protocol.begin(), by_protocol.end());
  st.terminals_total = terminals_.size();
  st.distinct_tmk_kcvs = kcvs.size();
  for (const AuditEntry& e : audit_) {
    for (const std::string& a : failure_actions) {
      if (e.action == a) ++st.auth_failures_total;
    }
  }
  return st;
}

absl::Status MemoryKmsRepository::InsertKdhKey(const KdhKeyRecord& key,
                                               const std::vector<AuditEntry>& audit) {
  absl::MutexLock lock(&mu_);
  for (const auto& [index, k] : kdh_keys_) {
    if (k.active && key.active) {
      return absl::FailedPreconditionError("kdh: a KDH key is already active");
    }
  }
  if (!kdh_keys_.emplace(key.key_index, key).second) {
    return absl::AlreadyExistsError("kdh: key index already stored");
  }
  Append(audit);
  return absl::OkStatus();
}

absl::StatusOr<std::vector<KdhKeyRecord>> MemoryKmsRepository::ListKdhKeys() {
  absl::MutexLock lock(&mu_);
  std::vector<KdhKeyRecord> out;
  for (const auto& [index, k] : kdh_keys_) out.push_back(k);
  return out;
}

absl::StatusOr<KdhKeyRecord> MemoryKmsRepository::GetActiveKdhKey() {
  absl::MutexLock lock(&mu_);
  for (const auto& [index, k] : kdh_keys_) {
    if (k.active) return k;
  }
  return absl::NotFoundError("kdh: no KDH key is provisioned");
}

}  // namespace rkl::kms::testing
