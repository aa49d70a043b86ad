#include "audit_verify.h"

#include <fstream>
#include <iostream>

#include "absl/strings/ascii.h"

namespace rkl::rklctl {

void AddAuditVerifyCommand(
    CLI::App* parent, const std::string& service_name, const std::string& flag,
    const std::string& default_target,
    std::function<v1::VerifyAuditChainResponse(const Endpoint&, const v1::VerifyAuditChainRequest&)>
        verify) {
  auto anchor_file = std::make_shared<std::string>();
  auto endpoint = std::make_shared<Endpoint>();
  auto* cmd = parent->add_subcommand(
      "audit-verify",
      "verify the audit chain (and with --anchor that it still holds the anchored record); "
      "exit 1 and name the first broken record if not");
  AddEndpointOptions(cmd, *endpoint, flag, default_target);
  cmd->add_option("--anchor", *anchor_file,
                  "an anchor of this " + service_name + " (its audit.anchor_file" +
                      (service_name == "HSM" ? ", or saved from audit-anchor" : "") +
                      "): also detects the newest records removed");
  cmd->callback([anchor_file, endpoint, verify = std::move(verify), service_name] {
    v1::VerifyAuditChainRequest req;
    if (!anchor_file->empty()) {
      std::ifstream in(*anchor_file, std::ios::binary);
      if (!in) {
        std::cerr << "rklctl " << absl::AsciiStrToLower(service_name)
                  << ": read anchor: " << *anchor_file << ": cannot be read (NOT_FOUND)\n";
        throw CLI::RuntimeError(2);
      }
      std::string text(4096, '\0');
      in.read(text.data(), static_cast<std::streamsize>(text.size()));
      text.resize(static_cast<size_t>(in.gcount()));
      req.set_anchor(std::string(absl::StripAsciiWhitespace(text)));
    }
    v1::VerifyAuditChainResponse r = verify(*endpoint, req);
    if (r.intact()) {
      std::cout << "audit chain intact: " << r.records_checked() << " records";
      if (!anchor_file->empty()) std::cout << "; holds anchored record " << r.anchor_seq();
      std::cout << "\n";
      return;
    }
    std::cout << "audit chain BROKEN at record " << r.first_broken_seq() << " ("
              << r.records_checked() << " records checked): " << r.finding() << "\n";
    throw CLI::RuntimeError(1);
  });
}

}  // namespace rkl::rklctl
