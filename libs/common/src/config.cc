#include "rkl/common/config.h"

#include <unistd.h>
#include <yaml-cpp/yaml.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <stdexcept>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"

namespace rkl {
namespace {

constexpr std::string_view kSecretMask = "<secret>";
// Long values are cut in messages: a config error should fit on a line.
constexpr size_t kMaxShownValue = 80;

std::string TypeName(ConfigType t) {
  switch (t) {
    case ConfigType::kString:
      return "string";
    case ConfigType::kInt:
      return "int";
    case ConfigType::kBool:
      return "bool";
    case ConfigType::kDuration:
      return "duration";
    case ConfigType::kPath:
      return "path";
    case ConfigType::kEnum:
      return "enum";
  }
  return "?";
}

bool ValidKeyName(std::string_view key) {
  if (key.empty() || key.front() == '.' || key.back() == '.') return false;
  char prev = 0;
  for (char c : key) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-' || c == '.';
    if (!ok || (c == '.' && prev == '.')) return false;
    prev = c;
  }
  return true;
}

std::string EnvVarFor(const std::string& prefix, const std::string& key) {
  std::string suffix = absl::AsciiStrToUpper(key);
  for (char& c : suffix) {
    if (c == '.' || c == '-') c = '_';
  }
  return prefix.empty() ? suffix : absl::StrCat(prefix, "_", suffix);
}

std::string Shown(const ConfigKey& key, const std::string& text) {
  if (key.secret()) return std::string(kSecretMask);
  std::string v = text.size() > kMaxShownValue ? text.substr(0, kMaxShownValue) + "..." : text;
  return absl::StrCat("'", v, "'");
}

std::optional<bool> ParseBool(std::string_view text) {
  std::string t = absl::AsciiStrToLower(
      absl::StripAsciiWhitespace(absl::string_view(text.data(), text.size())));
  if (t == "true" || t == "yes" || t == "on" || t == "1") return true;
  if (t == "false" || t == "no" || t == "off" || t == "0") return false;
  return std::nullopt;
}

}  // namespace

// ---------------------------------------------------------------------------------------
// ConfigKey / ConfigSchema

ConfigKey& ConfigKey::Default(std::string text) {
  default_ = std::move(text);
  return *this;
}
ConfigKey& ConfigKey::Required() {
  required_ = true;
  return *this;
}
ConfigKey& ConfigKey::Secret() {
  secret_ = true;
  return *this;
}
ConfigKey& ConfigKey::Range(int64_t min, int64_t max) {
  if (type_ != ConfigType::kInt || min > max) {
    throw std::logic_error(absl::StrCat("config schema: ", name_, ": bad Range"));
  }
  min_ = min;
  max_ = max;
  return *this;
}

std::string ConfigKey::TypeDescription() const {
  switch (type_) {
    case ConfigType::kInt:
      if (min_ == INT64_MIN && max_ == INT64_MAX) return "int";
      if (max_ == INT64_MAX) return absl::StrCat("int >= ", min_);
      if (min_ == INT64_MIN) return absl::StrCat("int <= ", max_);
      return absl::StrCat("int [", min_, "..", max_, "]");
    case ConfigType::kEnum:
      return absl::StrCat("enum {", absl::StrJoin(allowed_, "|"), "}");
    default:
      return TypeName(type_);
  }
}

ConfigSchema::ConfigSchema(std::string env_prefix) : env_prefix_(std::move(env_prefix)) {}

ConfigKey& ConfigSchema::Add(std::string key, ConfigType type, std::string description) {
  if (!ValidKeyName(key)) {
    throw std::logic_error(absl::StrCat("config schema: invalid key name '", key, "'"));
  }
  if (Find(key) != nullptr) {
    throw std::logic_error(absl::StrCat("config schema: duplicate key '", key, "'"));
  }
  // A key may not also be a map of other keys: `tls` and `tls.cert_file` cannot both exist.
  for (const ConfigKey& k : keys_) {
    if (k.name().starts_with(key + ".") || key.starts_with(k.name() + ".")) {
      throw std::logic_error(
          absl::StrCat("config schema: key '", key, "' overlaps '", k.name(), "'"));
    }
  }
  std::string env = EnvVarFor(env_prefix_, key);
  keys_.push_back(ConfigKey(std::move(key), type, std::move(description), std::move(env)));
  return keys_.back();
}

ConfigKey& ConfigSchema::String(std::string key, std::string description) {
  return Add(std::move(key), ConfigType::kString, std::move(description));
}
ConfigKey& ConfigSchema::Int(std::string key, std::string description) {
  return Add(std::move(key), ConfigType::kInt, std::move(description));
}
ConfigKey& ConfigSchema::Bool(std::string key, std::string description) {
  return Add(std::move(key), ConfigType::kBool, std::move(description));
}
ConfigKey& ConfigSchema::Duration(std::string key, std::string description) {
  return Add(std::move(key), ConfigType::kDuration, std::move(description));
}
ConfigKey& ConfigSchema::Path(std::string key, std::string description) {
  return Add(std::move(key), ConfigType::kPath, std::move(description));
}
ConfigKey& ConfigSchema::Enum(std::string key, std::vector<std::string> allowed,
                              std::string description) {
  if (allowed.empty()) {
    throw std::logic_error(absl::StrCat("config schema: enum '", key, "' has no values"));
  }
  ConfigKey& k = Add(std::move(key), ConfigType::kEnum, std::move(description));
  k.allowed_ = std::move(allowed);
  return k;
}

ConfigSchema ConfigSchema::CheckingOnly(const std::vector<std::string>& prefixes) const {
  ConfigSchema copy = *this;
  for (ConfigKey& key : copy.keys_) {
    bool checked = false;
    for (const std::string& p : prefixes) checked = checked || key.name_.starts_with(p);
    if (checked) continue;
    key.type_ = ConfigType::kString;
    key.required_ = false;
    key.min_ = INT64_MIN;
    key.max_ = INT64_MAX;
    key.allowed_.clear();
  }
  return copy;
}

const ConfigKey* ConfigSchema::Find(std::string_view key) const {
  for (const ConfigKey& k : keys_) {
    if (k.name() == key) return &k;
  }
  return nullptr;
}

// ---------------------------------------------------------------------------------------
// Config

const Config::Value& Config::Lookup(std::string_view key,
                                    std::initializer_list<ConfigType> types) const {
  auto it = values_.find(key);
  if (it == values_.end()) {
    throw std::logic_error(absl::StrCat("config: ", std::string(key), ": not set or not declared"));
  }
  for (ConfigType t : types) {
    if (it->second.type == t) return it->second;
  }
  throw std::logic_error(
      absl::StrCat("config: ", std::string(key), ": is a ", TypeName(it->second.type), " key"));
}

bool Config::Has(std::string_view key) const { return values_.find(key) != values_.end(); }

const std::string& Config::GetString(std::string_view key) const {
  return Lookup(key, {ConfigType::kString, ConfigType::kPath, ConfigType::kEnum}).text;
}
int64_t Config::GetInt(std::string_view key) const {
  return Lookup(key, {ConfigType::kInt}).int_value;
}
bool Config::GetBool(std::string_view key) const {
  return Lookup(key, {ConfigType::kBool}).bool_value;
}
absl::Duration Config::GetDuration(std::string_view key) const {
  return Lookup(key, {ConfigType::kDuration}).duration_value;
}
const std::string& Config::GetPath(std::string_view key) const {
  return Lookup(key, {ConfigType::kPath}).text;
}
const std::string& Config::GetEnum(std::string_view key) const {
  return Lookup(key, {ConfigType::kEnum}).text;
}

std::string Config::Describe() const {
  std::string out;
  for (const auto& [name, v] : values_) {
    const char* source = v.source == ConfigSource::kDefault ? "default"
                         : v.source == ConfigSource::kFile  ? "file"
                                                            : "environment";
    absl::StrAppend(&out, name, " = ", v.secret ? std::string(kSecretMask) : v.text, "  (", source,
                    ")\n");
  }
  return out;
}

// ---------------------------------------------------------------------------------------
// Loading

EnvLookup ProcessEnvironment() {
  return [](const std::string& name) -> std::optional<std::string> {
    const char* v = std::getenv(name.c_str());
    if (v == nullptr) return std::nullopt;
    return std::string(v);
  };
}

// Does the work of LoadConfig*; a class so the helpers share the error list.
class ConfigLoader {
 public:
  ConfigLoader(const ConfigSchema& schema, const EnvLookup& env) : schema_(schema), env_(env) {}

  void AddError(std::string key, std::string rule) {
    errors_.push_back(absl::StrCat("config: ", key, ": ", rule));
  }

  void ParseYaml(std::string_view text, const std::string& origin) {
    YAML::Node root;
    try {
      root = YAML::Load(std::string(text));
    } catch (const YAML::Exception& e) {
      // yaml-cpp's message carries line and column.
      AddError(origin, absl::StrCat("not valid YAML: ", e.what()));
      return;
    }
    if (root.IsNull()) return;  // an empty file is fine
    if (!root.IsMap()) {
      AddError(origin, "top level must be a map of keys");
      return;
    }
    Flatten(root, "");
  }

  absl::StatusOr<Config> Finish() {
    Config config;
    for (const ConfigKey& key : schema_.keys()) {
      std::optional<std::string> text;
      ConfigSource source = ConfigSource::kDefault;
      // An empty variable counts as unset: compose files often write `VAR=` to mean "none".
      if (auto e = env_ ? env_(key.env_var()) : std::nullopt; e.has_value() && !e->empty()) {
        text = *e;
        source = ConfigSource::kEnvironment;
      } else if (auto it = file_values_.find(key.name()); it != file_values_.end()) {
        text = it->second;
        source = ConfigSource::kFile;
      } else if (key.default_value().has_value()) {
        text = *key.default_value();
      }
      if (!text.has_value()) {
        if (key.required()) AddError(key.name(), "required");
        continue;
      }
      Config::Value v;
      v.type = key.type();
      v.secret = key.secret();
      v.text = *text;
      v.source = source;
      if (std::optional<std::string> rule = Validate(key, v)) {
        std::string where = source == ConfigSource::kEnvironment
                                ? absl::StrCat(" (from ", key.env_var(), ")")
                            : source == ConfigSource::kDefault ? " (default)"
                                                               : "";
        AddError(key.name(), absl::StrCat(*rule, where));
        continue;
      }
      config.values_.emplace(key.name(), std::move(v));
    }
    if (!errors_.empty()) {
      return absl::InvalidArgumentError(absl::StrJoin(errors_, "\n"));
    }
    return config;
  }

 private:
  void Flatten(const YAML::Node& map, const std::string& prefix) {
    for (const auto& entry : map) {
      std::string name;
      try {
        name = entry.first.as<std::string>();
      } catch (const YAML::Exception&) {
        AddError(prefix.empty() ? "<top>" : prefix, "map keys must be plain strings");
        continue;
      }
      std::string full = prefix.empty() ? name : absl::StrCat(prefix, ".", name);
      const YAML::Node& node = entry.second;
      const ConfigKey* key = schema_.Find(full);
      if (node.IsMap()) {
        if (key != nullptr) {
          AddError(full, "must be a single value, got a map");
        } else {
          Flatten(node, full);
        }
        continue;
      }
      if (key == nullptr) {
        AddError(full, "unknown key");
        continue;
      }
      if (node.IsSequence()) {
        AddError(full, "must be a single value, got a list");
        continue;
      }
      if (node.IsNull()) continue;  // `key:` with nothing after it means "not set here"
      file_values_[full] = node.Scalar();
    }
  }

  // Parses v.text into v according to the key's type; returns the broken rule, if any.
  std::optional<std::string> Validate(const ConfigKey& key, Config::Value& v) {
    absl::string_view trimmed = absl::StripAsciiWhitespace(v.text);
    switch (key.type()) {
      case ConfigType::kString:
        return std::nullopt;
      case ConfigType::kInt: {
        int64_t n = 0;
        if (!absl::SimpleAtoi(trimmed, &n)) {
          return absl::StrCat("must be an integer, got ", Shown(key, v.text));
        }
        if (n < key.min() || n > key.max()) {
          std::string got = key.secret() ? std::string(kSecretMask) : absl::StrCat(n);
          if (key.max() == INT64_MAX)
            return absl::StrCat("must be at least ", key.min(), ", got ", got);
          if (key.min() == INT64_MIN)
            return absl::StrCat("must be at most ", key.max(), ", got ", got);
          return absl::StrCat("must be between ", key.min(), " and ", key.max(), ", got ", got);
        }
        v.int_value = n;
        return std::nullopt;
      }
      case ConfigType::kBool: {
        std::optional<bool> b = ParseBool(v.text);
        if (!b.has_value()) {
          return absl::StrCat("must be true or false, got ", Shown(key, v.text));
        }
        v.bool_value = *b;
        return std::nullopt;
      }
      case ConfigType::kDuration: {
        absl::Duration d;
        // absl accepts a bare "0" but nothing else without a unit, which is what we want:
        // "30" is ambiguous (seconds? milliseconds?) and must be refused.
        if (!absl::ParseDuration(std::string(trimmed), &d) || d == absl::InfiniteDuration()) {
          return absl::StrCat("must be a duration like 30s or 500ms, got ", Shown(key, v.text));
        }
        if (d < absl::ZeroDuration()) {
          return absl::StrCat("must not be negative, got ", Shown(key, v.text));
        }
        v.duration_value = d;
        return std::nullopt;
      }
      case ConfigType::kPath: {
        if (v.text.empty()) return std::string("must be a path, got an empty value");
        std::error_code ec;
        if (!std::filesystem::exists(v.text, ec)) {
          return absl::StrCat("path ", Shown(key, v.text), " does not exist");
        }
        if (::access(v.text.c_str(), R_OK) != 0) {
          return absl::StrCat("path ", Shown(key, v.text), " is not readable");
        }
        return std::nullopt;
      }
      case ConfigType::kEnum: {
        for (const std::string& a : key.allowed()) {
          if (a == v.text) return std::nullopt;
        }
        return absl::StrCat("must be one of ", absl::StrJoin(key.allowed(), ", "), "; got ",
                            Shown(key, v.text));
      }
    }
    return std::nullopt;
  }

  const ConfigSchema& schema_;
  const EnvLookup& env_;
  std::map<std::string, std::string> file_values_;
  std::vector<std::string> errors_;
};

absl::StatusOr<Config> LoadConfigFromYaml(const ConfigSchema& schema, std::string_view yaml,
                                          const EnvLookup& env) {
  ConfigLoader loader(schema, env);
  loader.ParseYaml(yaml, "<yaml>");
  return loader.Finish();
}

absl::StatusOr<Config> LoadConfig(const ConfigSchema& schema, const std::string& file_path,
                                  const EnvLookup& env) {
  ConfigLoader loader(schema, env);
  if (!file_path.empty()) {
    std::ifstream in(file_path, std::ios::binary);
    if (!in) {
      loader.AddError(file_path, "cannot read the configuration file");
    } else {
      std::ostringstream text;
      text << in.rdbuf();
      loader.ParseYaml(text.str(), file_path);
    }
  }
  return loader.Finish();
}

// ---------------------------------------------------------------------------------------
// Reference

namespace {

std::string DefaultShown(const ConfigKey& key) {
  if (!key.default_value().has_value()) return key.required() ? "(required)" : "(none)";
  if (key.secret()) return std::string(kSecretMask);
  return *key.default_value();
}

std::string MarkdownCell(std::string_view s) {
  return absl::StrReplaceAll(absl::string_view(s.data(), s.size()), {{"|", "\\|"}, {"\n", " "}});
}

}  // namespace

std::string RenderConfigReference(const ConfigSchema& schema, ReferenceFormat format) {
  std::string out;
  if (format == ReferenceFormat::kMarkdown) {
    out = "| key | type | default | environment | description |\n|---|---|---|---|---|\n";
    for (const ConfigKey& k : schema.keys()) {
      std::string def = DefaultShown(k);
      absl::StrAppend(
          &out, "| `", k.name(), "` | ", MarkdownCell(k.TypeDescription()), " | ",
          k.default_value().has_value() ? absl::StrCat("`", MarkdownCell(def), "`") : def, " | `",
          k.env_var(), "` | ", MarkdownCell(k.description()), k.secret() ? " (secret)" : "",
          " |\n");
    }
    return out;
  }
  for (const ConfigKey& k : schema.keys()) {
    absl::StrAppend(&out, k.name(), "  (", k.TypeDescription(), k.secret() ? ", secret" : "",
                    ")\n    default: ", DefaultShown(k), "\n    env:     ", k.env_var(), "\n    ",
                    k.description(), "\n");
  }
  return out;
}

Config LoadConfigOrExit(const ConfigSchema& schema, std::string_view program, int argc,
                        const char* const* argv,
                        std::initializer_list<CommandLineSwitch> switches) {
  std::string prog(program);
  std::string file;
  if (const char* env = std::getenv(EnvVarFor(schema.env_prefix(), "config").c_str())) {
    file = env;
  }
  auto usage = [&] {
    std::string text = absl::StrCat("usage: ", prog, " [--config=FILE]");
    for (const CommandLineSwitch& s : switches)
      absl::StrAppend(&text, " [", std::string(s.name), "]");
    absl::StrAppend(&text,
                    " [--print-config-reference[=markdown]] [--help]\n"
                    "Configuration file: --config or ",
                    EnvVarFor(schema.env_prefix(), "config"),
                    "; each key can be overridden by its environment variable.\n");
    for (const CommandLineSwitch& s : switches) {
      absl::StrAppend(&text, "  ", std::string(s.name), "  ", std::string(s.help), "\n");
    }
    return text;
  };
  for (const CommandLineSwitch& s : switches) *s.value = false;
  auto find_switch = [&](std::string_view arg) -> const CommandLineSwitch* {
    for (const CommandLineSwitch& s : switches) {
      if (s.name == arg) return &s;
    }
    return nullptr;
  };
  for (int i = 1; i < argc; ++i) {
    std::string_view arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      std::cout << usage() << "\n" << RenderConfigReference(schema);
      std::exit(0);
    } else if (arg == "--print-config-reference") {
      std::cout << RenderConfigReference(schema);
      std::exit(0);
    } else if (arg == "--print-config-reference=markdown") {
      std::cout << RenderConfigReference(schema, ReferenceFormat::kMarkdown);
      std::exit(0);
    } else if (arg.starts_with("--config=")) {
      file = std::string(arg.substr(9));
    } else if (arg == "--config" && i + 1 < argc) {
      file = argv[++i];
    } else if (const CommandLineSwitch* s = find_switch(arg); s != nullptr) {
      *s->value = true;
    } else {
      std::cerr << prog << ": fatal: unknown argument '" << arg << "'\n" << usage();
      std::exit(2);
    }
  }
  std::optional<ConfigSchema> narrowed;
  for (const CommandLineSwitch& s : switches) {
    if (*s.value && !s.checks_only.empty()) narrowed.emplace(schema.CheckingOnly(s.checks_only));
  }
  absl::StatusOr<Config> config = LoadConfig(narrowed ? *narrowed : schema, file);
  if (!config.ok()) {
    std::cerr << prog << ": fatal: invalid configuration"
              << (file.empty() ? std::string() : " (" + file + ")") << ":\n"
              << config.status().message() << "\n";
    std::exit(2);
  }
  return *std::move(config);
}

}  // namespace rkl
