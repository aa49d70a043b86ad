#include "hsm_metrics.h"

#include <array>
#include <map>
#include <pqxx/pqxx>
#include <utility>

#include "absl/strings/ascii.h"
#include "key_record_store.h"
#include "prometheus/gauge.h"
#include "rkl/db/prepared.h"
#include "rkl/db/transaction.h"

namespace rkl::hsm {
namespace {

constexpr std::array kKeyTypes = {KeyType::kRsaPrivate, KeyType::kPk,  KeyType::kMak,
                                  KeyType::kTek,        KeyType::kAuk, KeyType::kTmk};
constexpr std::array kKeyStates = {KeyState::kActive, KeyState::kSuperseded, KeyState::kDeleted};

// The whole table in one pass; key_type and state are the proto's numbers.
constexpr char kCountKeys[] =
    "SELECT key_type, state, count(*) FROM hsm_key GROUP BY key_type, state";

}  // namespace

void RegisterHsmMetrics(metrics::Metrics& metrics, db::ConnectionPool& pool,
                        bool self_test_passed) {
  prometheus::BuildGauge()
      .Name("rkl_hsm_self_test_ok")
      .Help(
          "1 when the HSM's start-up self-tests passed; 0 when one failed (every "
          "cryptographic command is then refused)")
      .Register(metrics.registry())
      .Add({})
      .Set(self_test_passed ? 1 : 0);

  auto& keys = prometheus::BuildGauge()
                   .Name("rkl_hsm_keys")
                   .Help("Key records in the HSM's database by key type and state")
                   .Register(metrics.registry());
  std::map<std::pair<int, int>, prometheus::Gauge*> gauges;
  for (KeyType type : kKeyTypes) {
    for (KeyState state : kKeyStates) {
      gauges[{static_cast<int>(type), static_cast<int>(state)}] =
          &keys.Add({{"type", absl::AsciiStrToLower(KeyTypeName(type))},
                     {"state", absl::AsciiStrToLower(KeyStateName(state))}});
    }
  }
  metrics.OnCollect("hsm_keys", [&pool, gauges = std::move(gauges)]() -> absl::Status {
    absl::StatusOr<std::map<std::pair<int, int>, int64_t>> counts = db::RunAutocommitRead(
        pool,
        [](pqxx::nontransaction& tx) -> absl::StatusOr<std::map<std::pair<int, int>, int64_t>> {
          std::map<std::pair<int, int>, int64_t> out;
          for (const auto& row : db::Exec(tx, kCountKeys)) {
            out[{row[0].as<int>(), row[1].as<int>()}] = row[2].as<int64_t>();
          }
          return out;
        });
    if (!counts.ok()) return counts.status();
    for (const auto& [key, gauge] : gauges) {
      auto it = counts->find(key);
      gauge->Set(it == counts->end() ? 0.0 : static_cast<double>(it->second));
    }
    return absl::OkStatus();
  });
}

}  // namespace rkl::hsm
