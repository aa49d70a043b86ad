#include "ca_config.h"

#include "absl/strings/str_cat.h"
#include "rkl/common/status_macros.h"

namespace rkl::ca {

void DeclarePolicyConfig(ConfigSchema& schema) {
  const CaPolicy d;
  auto days = [&](const std::string& key, int def, const std::string& what) {
    schema.Int(key, what).Default(std::to_string(def)).Range(1, 36500);
  };
  schema.String("policy.organization", "O attribute of every certificate subject (empty: none)")
      .Default(d.organization);
  schema
      .Enum("policy.terminal_root_key", {"rsa-3072", "rsa-2048"},
            "key of terminal-root (HsmRCRT); terminals verify RSA, PROTOCOL §1 says 3072")
      .Default(std::string(KeySpecName(d.terminal_root_key)));
  schema
      .Enum("policy.kdh_ca_key", {"rsa-3072", "rsa-2048"},
            "key of kdh-ca (TR-34 KDH certificates); terminals verify RSA")
      .Default(std::string(KeySpecName(d.kdh_ca_key)));
  schema.Enum("policy.operator_ca_key", {"ec-p256", "rsa-2048", "rsa-3072"}, "key of operator-ca")
      .Default(std::string(KeySpecName(d.operator_ca_key)));
  schema.Enum("policy.service_ca_key", {"ec-p256", "rsa-2048", "rsa-3072"}, "key of service-ca")
      .Default(std::string(KeySpecName(d.service_ca_key)));
  schema
      .Enum("policy.bootstrap_leaf_key", {"ec-p256", "rsa-2048", "rsa-3072"},
            "key of the service and admin certificates `rklctl pki init` writes")
      .Default(std::string(KeySpecName(d.bootstrap_leaf_key)));
  days("policy.terminal_root_days", d.terminal_root_validity_days, "terminal-root validity, days");
  days("policy.kdh_ca_days", d.kdh_ca_validity_days, "kdh-ca validity, days");
  days("policy.operator_ca_days", d.operator_ca_validity_days, "operator-ca validity, days");
  days("policy.service_ca_days", d.service_ca_validity_days, "service-ca validity, days");
  days("policy.work_days", d.work_validity_days,
       "HSM work certificate validity, days (default and ceiling)");
  days("policy.kdh_days", d.kdh_validity_days,
       "TR-34 KDH certificate validity, days (default and ceiling)");
  days("policy.operator_days", d.operator_validity_days,
       "operator certificate validity, days (default and ceiling)");
  days("policy.service_days", d.service_validity_days,
       "service/admin certificate validity, days (default and ceiling)");
  schema.Duration("policy.crl_validity", "nextUpdate - thisUpdate of every CRL; re-signed at half")
      .Default("168h");
  schema
      .Duration("policy.request_ttl",
                "how long a certificate request waits for a second admin's approval")
      .Default("24h");
  schema.Duration("policy.backdate", "notBefore is this far before issuance (clock skew)")
      .Default("5m");
}

absl::StatusOr<CaPolicy> PolicyFromConfig(const Config& config) {
  CaPolicy p;
  p.organization = config.GetString("policy.organization");
  RKL_ASSIGN_OR_RETURN(p.terminal_root_key,
                       KeySpecFromName(config.GetEnum("policy.terminal_root_key")));
  RKL_ASSIGN_OR_RETURN(p.kdh_ca_key, KeySpecFromName(config.GetEnum("policy.kdh_ca_key")));
  RKL_ASSIGN_OR_RETURN(p.operator_ca_key,
                       KeySpecFromName(config.GetEnum("policy.operator_ca_key")));
  RKL_ASSIGN_OR_RETURN(p.service_ca_key, KeySpecFromName(config.GetEnum("policy.service_ca_key")));
  RKL_ASSIGN_OR_RETURN(p.bootstrap_leaf_key,
                       KeySpecFromName(config.GetEnum("policy.bootstrap_leaf_key")));
  p.terminal_root_validity_days = static_cast<int>(config.GetInt("policy.terminal_root_days"));
  p.kdh_ca_validity_days = static_cast<int>(config.GetInt("policy.kdh_ca_days"));
  p.operator_ca_validity_days = static_cast<int>(config.GetInt("policy.operator_ca_days"));
  p.service_ca_validity_days = static_cast<int>(config.GetInt("policy.service_ca_days"));
  p.work_validity_days = static_cast<int>(config.GetInt("policy.work_days"));
  p.kdh_validity_days = static_cast<int>(config.GetInt("policy.kdh_days"));
  p.operator_validity_days = static_cast<int>(config.GetInt("policy.operator_days"));
  p.service_validity_days = static_cast<int>(config.GetInt("policy.service_days"));
  p.crl_validity = config.GetDuration("policy.crl_validity");
  p.backdate = config.GetDuration("policy.backdate");
  p.request_ttl = config.GetDuration("policy.request_ttl");
  absl::Status s = ValidatePolicy(p);
  if (!s.ok()) return absl::InvalidArgumentError(absl::StrCat("policy: ", s.message()));
  return p;
}

}  // namespace rkl::ca
