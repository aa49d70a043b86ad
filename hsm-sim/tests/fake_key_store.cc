#include "fake_key_store.h"

#include <random>

#include "absl/strings/str_cat.h"

namespace rkl::hsm::testing {

absl::Status FakeAuditLog::Append(const AuditEvent& event) {
  absl::MutexLock lock(&mu_);
  events_.push_back(event);
  return absl::OkStatus();
}

void FakeAuditLog::AppendCommitted(const std::vector<AuditEvent>& events) {
  absl::MutexLock lock(&mu_);
  events_.insert(events_.end(), events.begin(), events.end());
}

absl::StatusOr<AuditVerification> FakeAuditLog::Verify(const AuditAnchor* anchor) {
  absl::MutexLock lock(&mu_);
  AuditVerification v{.records_checked = events_.size()};
  if (anchor != nullptr) v.anchor_seq = anchor->seq;
  if (anchor != nullptr && anchor->seq > events_.size()) {
    v.intact = false;
    v.first_broken_seq = events_.size() + 1;
    v.finding = "records were removed";
  }
  return v;
}

absl::StatusOr<AuditAnchor> FakeAuditLog::Anchor() {
  absl::MutexLock lock(&mu_);
  return AuditAnchor{.instance_id = "fake", .seq = events_.size(), .head_mac = Bytes(32, 0)};
}

std::vector<AuditEvent> FakeAuditLog::events() const {
  absl::MutexLock lock(&mu_);
  return events_;
}

class FakeKeyRecordTransaction : public KeyRecordTransaction {
 public:
  explicit FakeKeyRecordTransaction(FakeKeyRecordStore::State& s) : s_(s) {}

  absl::StatusOr<uint64_t> NextKeyIndex() override { return s_.next_index++; }

  absl::Status InsertKeys(std::span<const KeyRecord> records) override {
    for (const KeyRecord& key : records) {
      for (const auto& [index, r] : s_.keys) {
        if (r.state != KeyState::kActive) continue;
        if (r.label == key.label) return absl::AlreadyExistsError("hsm_key_live_label");
        bool terminal_key =
            key.type == KeyType::kTek || key.type == KeyType::kAuk || key.type == KeyType::kTmk;
        if (terminal_key && r.type == key.type && r.bound_sn == key.bound_sn) {
          return absl::AlreadyExistsError("hsm_key_one_live_per_sn");
        }
      }
      KeyRecord r = key;
      r.state = KeyState::kActive;
      s_.keys[r.index] = std::move(r);
    }
    return absl::OkStatus();
  }

  absl::StatusOr<std::optional<KeyRecord>> FindKey(uint64_t index) override {
    auto it = s_.keys.find(index);
    if (it == s_.keys.end()) return std::nullopt;
    return it->second;
  }

  absl::StatusOr<std::vector<KeyRecord>> FindLiveKeys(KeyType type,
                                                      const std::string& sn) override {
    std::vector<KeyRecord> out;
    for (const auto& [index, r] : s_.keys) {
      if (r.type == type && r.bound_sn == sn && r.state == KeyState::kActive) out.push_back(r);
    }
    return out;
  }

  absl::StatusOr<std::vector<KeyRecord>> FindUndeletedKeysOf(const std::string& sn) override {
    std::vector<KeyRecord> out;
    for (const auto& [index, r] : s_.keys) {
      if (!sn.empty() && r.bound_sn == sn && r.state != KeyState::kDeleted) out.push_back(r);
    }
    return out;
  }

  absl::StatusOr<bool> LiveLabelExists(const std::string& label) override {
    for (const auto& [index, r] : s_.keys) {
      if (r.label == label && r.state == KeyState::kActive) return true;
    }
    return false;
  }

  absl::Status SetKeyState(uint64_t index, KeyState state, int64_t) override {
    KeyRecord& r = s_.keys.at(index);
    r.state = state;
    if (state == KeyState::kDeleted) {
      r.nonce.clear();
      r.sealed.clear();
    }
    return absl::OkStatus();
  }

  absl::Status InsertCeremony(const Ceremony& c) override {
    s_.ceremonies[c.id] = c;
    return absl::OkStatus();
  }

  absl::StatusOr<std::optional<Ceremony>> FindCeremony(const std::string& id) override {
    auto it = s_.ceremonies.find(id);
    if (it == s_.ceremonies.end()) return std::nullopt;
    Ceremony c = it->second;
    c.custodians.clear();
    for (const auto& comp : s_.components[id]) c.custodians.push_back(comp.sealed.custodian);
    return c;
  }

  absl::StatusOr<std::vector<Ceremony>> FindExpiredCeremonies(int64_t now_ms) override {
    std::vector<Ceremony> out;
    for (const auto& [id, c] : s_.ceremonies) {
      if (c.state == CeremonyState::kOpen && c.expires_at_ms <= now_ms) out.push_back(c);
    }
    return out;
  }

  absl::Status SetCeremonyState(const std::string& id, CeremonyState state,
                                uint64_t result_key_index) override {
    s_.ceremonies.at(id).state = state;
    s_.ceremonies.at(id).result_key_index = result_key_index;
    return absl::OkStatus();
  }

  absl::Status InsertComponent(const std::string& ceremony_id, const std::string& kcv,
                               const SealedComponent& component, int64_t) override {
    for (const auto& c : s_.components[ceremony_id]) {
      if (c.sealed.custodian == component.custodian) {
        return absl::AlreadyExistsError("duplicate custodian");
      }
    }
    s_.components[ceremony_id].push_back({component, kcv});
    return absl::OkStatus();
  }

  absl::StatusOr<std::vector<SealedComponent>> FindComponents(
      const std::string& ceremony_id) override {
    std::vector<SealedComponent> out;
    for (const auto& c : s_.components[ceremony_id]) out.push_back(c.sealed);
    return out;
  }

  absl::Status DeleteComponents(const std::string& ceremony_id) override {
    s_.components.erase(ceremony_id);
    return absl::OkStatus();
  }

  absl::Status Audit(const AuditEvent& event) override {
    pending.push_back(event);
    return absl::OkStatus();
  }

  std::vector<AuditEvent> pending;

 private:
  FakeKeyRecordStore::State& s_;
};

absl::Status FakeKeyRecordStore::Transact(
    absl::FunctionRef<absl::Status(KeyRecordTransaction&)> fn) {
  absl::MutexLock lock(&mu_);
  State before = state_;
  FakeKeyRecordTransaction tx(state_);
  absl::Status s = fn(tx);
  if (!s.ok()) {
    state_ = std::move(before);
    return s;
  }
  audit_.AppendCommitted(tx.pending);
  return absl::OkStatus();
}

size_t FakeKeyRecordStore::component_rows() const {
  size_t n = 0;
  for (const auto& [id, v] : state_.components) n += v.size();
  return n;
}

crypto::SecretBytes TestLmk(uint8_t seed) {
  crypto::SecretBytes lmk(32);
  std::span<uint8_t> bytes = lmk.RevealSecretMutable();
  for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<uint8_t>(seed * 31 + i);
  return lmk;
}

crypto::RandomSource DeterministicRandom(uint64_t seed) {
  auto engine = std::make_shared<std::mt19937_64>(seed);
  auto mu = std::make_shared<absl::Mutex>();
  return [engine, mu](std::span<uint8_t> out) {
    absl::MutexLock lock(mu.get());
    for (uint8_t& b : out) b = static_cast<uint8_t>((*engine)());
  };
}

}  // namespace rkl::hsm::testing
