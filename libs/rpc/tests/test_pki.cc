#include "test_pki.h"

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <sstream>

namespace rkl::rpc::testing {
namespace {

class PkiBuilder {
 public:
  explicit PkiBuilder(std::string dir) : dir_(std::move(dir)) {}

  void Ca(const std::string& name) {
    Run("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1"
        " -keyout " +
        Path(name + ".key") + " -out " + Path(name + ".pem") + " -subj '/CN=" + name +
        "'"
        " -addext 'basicConstraints=critical,CA:TRUE'"
        " -addext 'keyUsage=critical,keyCertSign,cRLSign'");
  }

  // `file` names the output files; `cn` and `sans` the certificate's identity.
  void Leaf(const std::string& ca, const std::string& file, const std::string& cn,
            const std::vector<std::string>& sans) {
    std::string san_list;
    for (const std::string& s : sans) san_list += (san_list.empty() ? "DNS:" : ",DNS:") + s;
    std::ofstream(Path(file + ".ext")) << "basicConstraints=CA:FALSE\n"
                                          "keyUsage=critical,digitalSignature,keyEncipherment\n"
                                          "extendedKeyUsage=serverAuth,clientAuth\n"
                                          "subjectAltName="
                                       << san_list << "\n";
    Run("openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout " +
        Path(file + ".key") + " -out " + Path(file + ".csr") + " -subj '/CN=" + cn + "'");
    Run("openssl x509 -req -days 1 -set_serial " + std::to_string(++serial_) + " -in " +
        Path(file + ".csr") + " -CA " + Path(ca + ".pem") + " -CAkey " + Path(ca + ".key") +
        " -extfile " + Path(file + ".ext") + " -out " + Path(file + ".pem"));
  }

 private:
  std::string Path(const std::string& f) const { return dir_ + "/" + f; }

  void Run(const std::string& cmd) {
    std::string log = Path("openssl.log");
    if (std::system((cmd + " >" + log + " 2>&1").c_str()) != 0) {
      std::ifstream in(log);
      std::cerr << "test PKI: command failed: " << cmd << "\n" << in.rdbuf() << "\n";
      std::abort();
    }
  }

  std::string dir_;
  int serial_ = 1000;
};

std::string MakeTempDir() {
  std::string tmpl = (std::filesystem::temp_directory_path() / "rkl-rpc-pki-XXXXXX").string();
  if (::mkdtemp(tmpl.data()) == nullptr) std::abort();
  return tmpl;
}

}  // namespace

TestPki::TestPki() : dir_(MakeTempDir()) {
  PkiBuilder b(dir_);
  b.Ca("service-ca");
  b.Ca("foreign-ca");
  b.Leaf("service-ca", "kms", "kms", {"kms", "localhost"});
  b.Leaf("service-ca", "mtms", "mtms", {"mtms"});
  b.Leaf("service-ca", "admin-alice", "admin:alice", {"admin:alice"});
  b.Leaf("service-ca", "mismatch", "mtms", {"kms"});
  b.Leaf("foreign-ca", "foreign-mtms", "mtms", {"mtms"});
}

const TestPki& TestPki::Get() {
  static TestPki* pki = [] {
    auto* p = new TestPki();
    // Remove the keys when the test binary exits normally.
    static std::string dir = p->dir_;
    std::atexit([] { std::filesystem::remove_all(dir); });
    return p;
  }();
  return *pki;
}

TlsFiles TestPki::Server() const { return {dir_ + "/kms.pem", dir_ + "/kms.key", ca_file()}; }

TlsFiles TestPki::Client(const std::string& name) const {
  std::string file = name == "admin:alice" ? "admin-alice" : name;
  return {dir_ + "/" + file + ".pem", dir_ + "/" + file + ".key", ca_file()};
}

TlsFiles TestPki::ForeignClient() const {
  return {dir_ + "/foreign-mtms.pem", dir_ + "/foreign-mtms.key", ca_file()};
}

TlsFiles TestPki::AnonymousClient() const { return {"", "", ca_file()}; }

}  // namespace rkl::rpc::testing
