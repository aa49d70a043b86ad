#include "hsm_key_source.h"

#include "absl/strings/str_cat.h"

namespace rkl::ca {

namespace {

std::string Trimmed(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return std::string(s);
}

}  // namespace

absl::StatusOr<std::map<std::string, std::string, std::less<>>> ParseHsmEndpoints(
    std::string_view text) {
  std::map<std::string, std::string, std::less<>> endpoints;
  while (!text.empty()) {
    const size_t comma = text.find(',');
    const std::string item = Trimmed(text.substr(0, comma));
    text = comma == std::string_view::npos ? std::string_view() : text.substr(comma + 1);
    if (item.empty()) continue;
    const size_t eq = item.find('=');
    const std::string id = Trimmed(std::string_view(item).substr(0, eq));
    const std::string target =
        eq == std::string::npos ? std::string() : Trimmed(std::string_view(item).substr(eq + 1));
    if (id.empty() || target.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("hsm.endpoints: \"", item, "\" is not hsm-id=host:port"));
    }
    if (!endpoints.emplace(id, target).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("hsm.endpoints: HSM ", id, " is given more than once"));
    }
  }
  return endpoints;
}

}  // namespace rkl::ca
