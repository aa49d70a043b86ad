#include "kms_pg_metrics.h"

#include <map>
#include <pqxx/pqxx>
#include <string>
#include <utility>

#include "absl/strings/ascii.h"
#include "kms_types.h"
#include "prometheus/gauge.h"
#include "rkl/db/prepared.h"
#include "rkl/db/transaction.h"

namespace rkl::kms {
namespace {

constexpr TerminalState kStates[] = {TerminalState::kTkReceived,   TerminalState::kAuthenticated,
                                     TerminalState::kTmkDelivered, TerminalState::kInstalled,
                                     TerminalState::kLocked,       TerminalState::kRevoked,
                                     TerminalState::kRekeyPending};
constexpr TerminalProtocol kProtocols[] = {TerminalProtocol::kPatent, TerminalProtocol::kTr34};

// Terminals by state and protocol (as stored: "INSTALLED", "patent"), and one row with the
// open sessions' count (state and protocol NULL). $1: now in Unix ms.
constexpr char kCountTerminalsAndSessions[] =
    "SELECT state, protocol, count(*) FROM terminals GROUP BY state, protocol "
    "UNION ALL "
    "SELECT NULL, NULL, count(*) FROM auth_sessions "
    "WHERE state IN ('OPEN', 'VERIFYING', 'AUTHENTICATED', 'CONFIRMING') AND expires_at_ms > $1";

struct Counts {
  std::map<std::pair<std::string, std::string>, int64_t> terminals;
  int64_t sessions = 0;
};

}  // namespace

void RegisterKmsStateMetrics(metrics::Metrics& metrics, db::ConnectionPool& pool, Clock clock) {
  auto& terminals = prometheus::BuildGauge()
                        .Name("rkl_kms_terminals")
                        .Help("Terminals by life-cycle state and key-loading protocol")
                        .Register(metrics.registry());
  // Keyed as the database stores them.
  std::map<std::pair<std::string, std::string>, prometheus::Gauge*> gauges;
  for (TerminalState state : kStates) {
    for (TerminalProtocol protocol : kProtocols) {
      const std::string state_name = TerminalStateName(state);
      const std::string protocol_name = absl::AsciiStrToLower(TerminalProtocolName(protocol));
      gauges[{state_name, protocol_name}] = &terminals.Add(
          {{"state", absl::AsciiStrToLower(state_name)}, {"protocol", protocol_name}});
    }
  }
  prometheus::Gauge* sessions = &prometheus::BuildGauge()
                                     .Name("rkl_kms_sessions_open")
                                     .Help("Authentication sessions in progress and not expired")
                                     .Register(metrics.registry())
                                     .Add({});
  metrics.OnCollect(
      "kms_terminals",
      [&pool, clock = std::move(clock), gauges = std::move(gauges), sessions]() -> absl::Status {
        const int64_t now_ms = NowUnixMs(clock);
        absl::StatusOr<Counts> counts =
            db::RunAutocommitRead(pool, [&](pqxx::nontransaction& tx) -> absl::StatusOr<Counts> {
              Counts c;
              for (const auto& row : db::Exec(tx, kCountTerminalsAndSessions, now_ms)) {
                if (row[0].is_null()) {
                  c.sessions = row[2].as<int64_t>();
                } else {
                  c.terminals[{row[0].as<std::string>(), row[1].as<std::string>()}] =
                      row[2].as<int64_t>();
                }
              }
              return c;
            });
        if (!counts.ok()) return counts.status();
        for (const auto& [key, gauge] : gauges) {
          auto it = counts->terminals.find(key);
          gauge->Set(it == counts->terminals.end() ? 0.0 : static_cast<double>(it->second));
        }
        sessions->Set(static_cast<double>(counts->sessions));
        return absl::OkStatus();
      });
}

}  // namespace rkl::kms
