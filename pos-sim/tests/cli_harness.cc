#include "cli_harness.h"

#include <fstream>

namespace rkl::pos::testing {
namespace {

void WriteFile(const std::string& path, const std::string& content) {
  std::ofstream out(path, std::ios::binary);
  out << content;
}

}  // namespace

CliHarness::CliHarness(FakeServers& servers) : servers_(servers) {
  const TerminalPki& pki = TerminalPki::Get();
  WriteFile(dir() + "/terminal-root.pem", pki.root.ToPem());
  WriteFile(dir() + "/operator.p12", std::string(pki.operator_p12.begin(), pki.operator_p12.end()));
  WriteFile(dir() + "/pin", std::string(kTestPin) + "\n");
}

std::vector<std::string> Concat(std::initializer_list<std::vector<std::string>> parts) {
  std::vector<std::string> out;
  for (const auto& p : parts) out.insert(out.end(), p.begin(), p.end());
  return out;
}

CliRun CliHarness::Run(std::vector<std::string> args) {
  std::ostringstream out, err;
  CliIo io;
  io.out = &out;
  io.err = &err;
  io.init_logging = false;
  io.err_is_tty = false;
  std::vector<const char*> argv = {"rkl-pos"};
  for (const auto& a : args) argv.push_back(a.c_str());
  CliRun run;
  run.exit_code = RunPosCli(static_cast<int>(argv.size()), argv.data(), io);
  run.out = out.str();
  run.err = err.str();
  return run;
}

std::vector<std::string> CliHarness::MtmsFlags() const {
  return {"--mtms",    servers_.mtms_target(), "--mtms-authority",
          "localhost", "--ca-bundle",          servers_.pki().ca_file()};
}
std::vector<std::string> CliHarness::KmsFlags() const {
  return {"--kms",     servers_.kms_target(), "--kms-authority",
          "localhost", "--ca-bundle",         servers_.pki().ca_file()};
}
std::vector<std::string> CliHarness::CardFlags() const {
  return {"--operator-card", dir() + "/operator.p12", "--operator-pin-file", dir() + "/pin"};
}
std::vector<std::string> CliHarness::RootFlags() const {
  return {"--terminal-root", dir() + "/terminal-root.pem"};
}
std::vector<std::string> CliHarness::AdminFlags() const {
  return {"--admin-cert", servers_.admin_tls().cert_file, "--admin-key",
          servers_.admin_tls().key_file};
}

std::vector<std::string> CliHarness::AllStepsFlags() const {
  return Concat({StateFlags(), RootFlags(), MtmsFlags(), KmsFlags(), CardFlags(), AdminFlags()});
}

}  // namespace rkl::pos::testing
