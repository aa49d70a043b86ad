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

class FakeKeyTransaction : public KeyTransaction {
 public:
  explicit FakeKeyTransaction(FakeKeyStore::State& s) : s_(s) {}

  absl::StatusOr<KeyRecord> InsertKey(const NewKey& key, int64_t now_ms) override {
    for (const auto& [index, stored] : s_.keys) {
      const KeyRecord& r = stored.record;
      if (r.state != KeyState::kActive) continue;
      if (r.label == key.label) return absl::AlreadyExistsError("hsm_key_live_label");
      bool terminal_key =
          key.type == KeyType::kTek || key.type == KeyType::kAuk || key.type == KeyType::kTmk;
      if (terminal_key && r.type == key.type && r.bound_sn == key.bound_sn) {
        return absl::AlreadyExistsError("hsm_key_one_live_per_sn");
      }
    }
    KeyRecord r{.index = s_.next_index++,
                .type = key.type,
                .algorithm = key.algorithm,
                .usage = key.usage,
                .bound_sn = key.bound_sn,
                .label = key.label,
                .kcv = key.kcv,
                .state = KeyState::kActive,
                .created_at_ms = now_ms,
                .rsa_bits = key.rsa_bits,
                .public_key_der = key.public_key_der,
                .kek_index = key.kek_index};
    s_.keys[r.index] = {r, key.material};
    return r;
  }

  absl::StatusOr<std::optional<KeyRecord>> FindKey(uint64_t index) override {
    auto it = s_.keys.find(index);
    if (it == s_.keys.end()) return std::nullopt;
    return it->second.record;
  }

  absl::StatusOr<std::vector<KeyRecord>> FindLiveKeys(KeyType type,
                                                      const std::string& sn) override {
    std::vector<KeyRecord> out;
    for (const auto& [index, stored] : s_.keys) {
      const KeyRecord& r = stored.record;
      if (r.type == type && r.bound_sn == sn && r.state == KeyState::kActive) out.push_back(r);
    }
    return out;
  }

  absl::StatusOr<std::vector<KeyRecord>> FindUndeletedKeysOf(const std::string& sn) override {
    std::vector<KeyRecord> out;
    for (const auto& [index, stored] : s_.keys) {
      const KeyRecord& r = stored.record;
      if (!sn.empty() && r.bound_sn == sn && r.state != KeyState::kDeleted) out.push_back(r);
    }
    return out;
  }

  absl::StatusOr<bool> LiveLabelExists(const std::string& label) override {
    for (const auto& [index, stored] : s_.keys) {
      if (stored.record.label == label && stored.record.state == KeyState::kActive) return true;
    }
    return false;
  }

  absl::StatusOr<crypto::SecretBytes> Unseal(const KeyRecord& record) override {
    auto it = s_.keys.find(record.index);
    if (it == s_.keys.end() || it->second.material.empty()) {
      return absl::InternalError(
          absl::StrCat("key record ", record.index, " failed its integrity check"));
    }
    return it->second.material;
  }

  absl::Status SetKeyState(uint64_t index, KeyState state, int64_t) override {
    auto& stored = s_.keys.at(index);
    stored.record.state = state;
    if (state == KeyState::kDeleted) stored.material = crypto::SecretBytes();
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
    for (const auto& comp : s_.components[id]) c.custodians.push_back(comp.custodian);
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

  absl::Status AddComponent(const std::string& ceremony_id, const std::string& custodian,
                            const std::string& kcv, const crypto::SecretBytes& component,
                            int64_t) override {
    for (const auto& c : s_.components[ceremony_id]) {
      if (c.custodian == custodian) return absl::AlreadyExistsError("duplicate custodian");
    }
    s_.components[ceremony_id].push_back({custodian, kcv, component});
    return absl::OkStatus();
  }

  absl::StatusOr<std::vector<crypto::SecretBytes>> OpenComponents(
      const std::string& ceremony_id) override {
    std::vector<crypto::SecretBytes> out;
    for (const auto& c : s_.components[ceremony_id]) out.push_back(c.component);
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
  FakeKeyStore::State& s_;
};

absl::Status FakeKeyStore::Transact(absl::FunctionRef<absl::Status(KeyTransaction&)> fn) {
  absl::MutexLock lock(&mu_);
  State before = state_;
  FakeKeyTransaction tx(state_);
  absl::Status s = fn(tx);
  if (!s.ok()) {
    state_ = std::move(before);
    return s;
  }
  audit_.AppendCommitted(tx.pending);
  return absl::OkStatus();
}

size_t FakeKeyStore::component_rows() const {
  size_t n = 0;
  for (const auto& [id, v] : state_.components) n += v.size();
  return n;
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
