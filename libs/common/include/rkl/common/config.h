#pragma once
// Typed start-up configuration for every rkl program.
//
// A program declares its keys once in a ConfigSchema (type, default, required, rule,
// description). Values come from a YAML file, whose nested maps flatten to dotted keys
// (`tls: {cert_file: x}` is `tls.cert_file`), and are overridden by environment variables
// named <PREFIX>_<KEY> with dots and dashes turned into underscores and upper-cased
// (`RKL_HSM_TLS_CERT_FILE`). Precedence: environment > file > default.
//
// Loading validates everything and collects every problem before failing, so an operator
// fixes a broken deployment in one pass; each problem is one line naming the key and the
// rule, e.g. `config: db.pool_size: must be between 1 and 256, got 0`. A bad configuration is
// fatal at start-up (LoadConfigOrExit does that for main()).
//
// Secret keys (a database password, say) are never echoed: not in errors, not in the
// reference, not in Config::Describe(). Key material never belongs in configuration at all:
// keys live in the HSM and config only ever names files or indexes.
//
// Thread safety: a ConfigSchema is built single-threaded at start-up; a loaded Config is
// immutable and safe to read from any thread. Getters treat an undeclared key or a type
// mismatch as a programming error and throw std::logic_error (start-up only, per STYLE.md).

#include <cstdint>
#include <deque>
#include <functional>
#include <initializer_list>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace rkl {

enum class ConfigType { kString, kInt, kBool, kDuration, kPath, kEnum };

// The declaration of one key. Built through ConfigSchema's typed adders and the fluent
// setters below; the schema owns it.
class ConfigKey {
 public:
  // Textual default, parsed and validated exactly like a value from the file or environment.
  ConfigKey& Default(std::string text);
  ConfigKey& Required();
  // Never print the value; errors and references show `<secret>` instead.
  ConfigKey& Secret();
  // Inclusive bounds for kInt keys.
  ConfigKey& Range(int64_t min, int64_t max);

  const std::string& name() const { return name_; }
  ConfigType type() const { return type_; }
  const std::string& description() const { return description_; }
  const std::optional<std::string>& default_value() const { return default_; }
  bool required() const { return required_; }
  bool secret() const { return secret_; }
  int64_t min() const { return min_; }
  int64_t max() const { return max_; }
  const std::vector<std::string>& allowed() const { return allowed_; }
  // The environment variable that overrides this key, e.g. RKL_HSM_TLS_CERT_FILE.
  const std::string& env_var() const { return env_var_; }
  // "int [1..256]", "enum {text|json}", "duration", ... as shown in the reference.
  std::string TypeDescription() const;

 private:
  friend class ConfigSchema;
  ConfigKey(std::string name, ConfigType type, std::string description, std::string env_var)
      : name_(std::move(name)),
        type_(type),
        description_(std::move(description)),
        env_var_(std::move(env_var)) {}

  std::string name_;
  ConfigType type_;
  std::string description_;
  std::string env_var_;
  std::optional<std::string> default_;
  bool required_ = false;
  bool secret_ = false;
  int64_t min_ = INT64_MIN;
  int64_t max_ = INT64_MAX;
  std::vector<std::string> allowed_;
};

// The keys a program understands. Adders throw std::logic_error on a duplicate or malformed
// key name (a bug in the program, not in its configuration). Returned references stay valid
// for the schema's lifetime.
class ConfigSchema {
 public:
  // `env_prefix` such as "RKL_HSM"; every key's variable is <env_prefix>_<KEY>.
  explicit ConfigSchema(std::string env_prefix);

  ConfigKey& String(std::string key, std::string description);
  ConfigKey& Int(std::string key, std::string description);
  ConfigKey& Bool(std::string key, std::string description);
  // Values like "30s", "500ms", "1m30s" (absl::ParseDuration syntax); never negative.
  ConfigKey& Duration(std::string key, std::string description);
  // A file or directory that must exist and be readable when the program starts.
  // Relative paths are resolved against the working directory.
  ConfigKey& Path(std::string key, std::string description);
  ConfigKey& Enum(std::string key, std::vector<std::string> allowed, std::string description);

  const std::string& env_prefix() const { return env_prefix_; }
  const std::deque<ConfigKey>& keys() const { return keys_; }
  const ConfigKey* Find(std::string_view key) const;

  // A copy that checks only the keys starting with one of `prefixes` ("db." covers db.dsn).
  // Every other key is still known (an unknown key stays an error) but optional and read as
  // plain text, so a file it names need not exist and only GetString() reads it. For a run
  // that uses only those keys, e.g. a daemon's --migrate-only.
  ConfigSchema CheckingOnly(const std::vector<std::string>& prefixes) const;

 private:
  ConfigKey& Add(std::string key, ConfigType type, std::string description);

  std::string env_prefix_;
  std::deque<ConfigKey> keys_;  // deque: references handed out stay valid on growth
};

// Where a value came from; shown by Describe() and in error messages.
enum class ConfigSource { kDefault, kFile, kEnvironment };

// A validated configuration. Copyable; immutable after loading.
class Config {
 public:
  // True if the key has a value (from any source, including its default).
  bool Has(std::string_view key) const;

  const std::string& GetString(std::string_view key) const;  // kString, kPath, kEnum
  int64_t GetInt(std::string_view key) const;
  bool GetBool(std::string_view key) const;
  absl::Duration GetDuration(std::string_view key) const;
  const std::string& GetPath(std::string_view key) const;
  const std::string& GetEnum(std::string_view key) const;

  // One `key = value  (source)` line per set key, secrets shown as <secret>; safe to log.
  std::string Describe() const;

 private:
  friend class ConfigLoader;
  struct Value {
    ConfigType type = ConfigType::kString;
    bool secret = false;
    std::string text;  // as given, trimmed
    ConfigSource source = ConfigSource::kDefault;
    int64_t int_value = 0;
    bool bool_value = false;
    absl::Duration duration_value;
  };
  const Value& Lookup(std::string_view key, std::initializer_list<ConfigType> types) const;

  std::map<std::string, Value, std::less<>> values_;
};

// Returns the value of an environment variable, or nullopt when unset. Injected so tests
// do not touch the process environment.
using EnvLookup = std::function<std::optional<std::string>(const std::string& name)>;
EnvLookup ProcessEnvironment();

// Loads `file_path` (empty: no file, environment and defaults only), applies the
// environment and validates. On any problem returns INVALID_ARGUMENT whose message is every
// problem, one `config: <key>: <rule>` per line.
absl::StatusOr<Config> LoadConfig(const ConfigSchema& schema, const std::string& file_path,
                                  const EnvLookup& env = ProcessEnvironment());
// Same, from YAML text already in memory (tests, embedded defaults).
absl::StatusOr<Config> LoadConfigFromYaml(const ConfigSchema& schema, std::string_view yaml,
                                          const EnvLookup& env = ProcessEnvironment());

enum class ReferenceFormat { kText, kMarkdown };
// Renders the schema (key, type, default, environment variable, required, description)
// for --help, --print-config-reference and the docs. Secret defaults are never shown.
std::string RenderConfigReference(const ConfigSchema& schema,
                                  ReferenceFormat format = ReferenceFormat::kText);

// A switch a program takes on its command line besides the ones LoadConfigOrExit knows,
// e.g. `--migrate-only`: `*value` becomes true when the switch is given.
struct CommandLineSwitch {
  std::string_view name;  // with the dashes: "--migrate-only"
  std::string_view help;  // one line for --help
  bool* value;
  // Non-empty: when the switch is given, only keys with these prefixes are checked
  // (ConfigSchema::CheckingOnly), since that run reads nothing else.
  std::vector<std::string> checks_only = {};
};

// The start-up path for a daemon's main(). Understands:
//   --config=FILE | --config FILE   (else the <PREFIX>_CONFIG environment variable, else none)
//   --print-config-reference[=markdown]   prints the reference to stdout and exits 0
//   --help                          prints usage plus the reference and exits 0
//   each of `switches`
// Any other argument, or an invalid configuration, prints a fatal message naming every
// problem to stderr and exits with status 2.
Config LoadConfigOrExit(const ConfigSchema& schema, std::string_view program, int argc,
                        const char* const* argv,
                        std::initializer_list<CommandLineSwitch> switches = {});

}  // namespace rkl
