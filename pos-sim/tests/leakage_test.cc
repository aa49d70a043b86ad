// No clear key in the simulator's files or output: run the whole flow through the CLI
// (step by step, provision and a fleet) against the fakes over gRPC, learn every
// terminal's TEK, AUK and TMK through the test-only hook, then search every file under the
// state directory, the fleet JSON, stdout, stderr and the log for each key as raw bytes,
// upper- and lower-case hex and base64 (at every alignment).

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "cli_harness.h"
#include "fakes.h"
#include "files.h"
#include "rkl/crypto/random.h"
#include "spdlog/sinks/ostream_sink.h"
#include "spdlog/spdlog.h"

namespace rkl::pos {
namespace {

using testing::CliHarness;
using testing::Concat;
using testing::FakeServersTest;

// Every textual or binary form a key could take in a file or a log line.
std::vector<std::string> Encodings(const Bytes& key) {
  const std::string raw(key.begin(), key.end());
  const std::string hex = ToHex(key);
  std::vector<std::string> out = {raw, hex, absl::AsciiStrToLower(hex)};
  // Base64 of the key starting at byte offset 0, 1 or 2 of a larger encoded buffer: keep the
  // characters that depend only on key bytes.
  for (int offset = 0; offset < 3; ++offset) {
    std::string shifted = std::string(offset, '\0') + raw;
    std::string b64 = absl::Base64Escape(shifted);
    const size_t skip = offset == 0 ? 0 : 4;         // the first quantum mixes in the padding bytes
    const size_t usable = (shifted.size() / 3) * 4;  // whole quanta only
    if (usable > skip + 8) out.push_back(b64.substr(skip, usable - skip - 4));
  }
  return out;
}

// Names of the encodings found in `haystack`.
std::vector<std::string> Find(const std::string& haystack, const Bytes& key,
                              const std::string& what) {
  std::vector<std::string> hits;
  const auto forms = Encodings(key);
  for (size_t i = 0; i < forms.size(); ++i) {
    if (haystack.find(forms[i]) != std::string::npos) hits.push_back(absl::StrCat(what, "#", i));
  }
  return hits;
}

TEST(LeakageSearchTest, FindsPlantedKeysInEveryEncoding) {
  // The search itself must be able to fail: plant each encoding and expect a hit.
  const Bytes key = crypto::RandomBytes(16);
  const auto forms = Encodings(key);
  ASSERT_GE(forms.size(), 5u);
  for (const std::string& form : forms) {
    EXPECT_FALSE(Find("prefix " + form + " suffix", key, "x").empty());
  }
  const std::string raw(key.begin(), key.end());
  EXPECT_FALSE(Find(absl::Base64Escape("ab" + raw + "cdef"), key, "x").empty());
  EXPECT_TRUE(Find("nothing here", key, "x").empty());
}

class LeakageTest : public FakeServersTest {
 protected:
  void SetUp() override {
    FakeServersTest::SetUp();
    if (HasFatalFailure()) return;
    auto sink = std::make_shared<spdlog::sinks::ostream_sink_mt>(log_);
    previous_ = spdlog::default_logger();
    auto logger = std::make_shared<spdlog::logger>("capture", sink);
    logger->set_level(spdlog::level::trace);
    spdlog::set_default_logger(logger);
  }
  void TearDown() override { spdlog::set_default_logger(previous_); }

  std::ostringstream log_;
  std::shared_ptr<spdlog::logger> previous_;
};

TEST_F(LeakageTest, NoClearKeyInStateFilesOrOutput) {
  CliHarness cli(*servers_);
  std::string output;
  auto run = [&](std::vector<std::string> args) {
    auto r = cli.Run(std::move(args));
    output += r.out + r.err;
    return r.exit_code;
  };
  const std::vector<std::string> sn = {"--sn", "LEAK-1"};
  ASSERT_EQ(run(Concat({{"manufacture"}, sn, cli.StateFlags(), cli.RootFlags()})), 0) << output;
  ASSERT_EQ(run(Concat({{"install-cert"}, sn, cli.StateFlags(), cli.MtmsFlags()})), 0) << output;
  ASSERT_EQ(run(Concat({{"generate-tk"}, sn, cli.StateFlags()})), 0) << output;
  ASSERT_EQ(run(Concat({{"submit"}, sn, cli.StateFlags(), cli.MtmsFlags(), cli.CardFlags()})), 0)
      << output;
  ASSERT_EQ(run(Concat({{"download-tmk"}, sn, cli.StateFlags(), cli.KmsFlags(), cli.AdminFlags()})),
            0)
      << output;
  ASSERT_EQ(
      run(Concat({{"provision", "--sn", "LEAK-2", "--algorithm", "AES256"}, cli.AllStepsFlags()})),
      0)
      << output;
  const std::string json = cli.dir() + "/fleet.json";
  ASSERT_EQ(run(Concat({{"fleet", "--count", "4", "--concurrency", "2", "--prefix", "LF",
                         "--algorithm", "TDES2", "--json", json, "--progress", "bar"},
                        cli.AllStepsFlags()})),
            0)
      << output;
  ASSERT_EQ(run(Concat({{"status"}, cli.StateFlags()})), 0);
  for (const char* s : {"LEAK-1", "LEAK-2", "LF-000001"}) {
    ASSERT_EQ(run(Concat({{"status", "--sn", s}, cli.StateFlags()})), 0);
  }
  output += log_.str();
  ASSERT_THAT(output, ::testing::HasSubstr("TMK KCV"));  // the output is not trivially empty

  // Every file the simulator wrote, and what it printed.
  std::map<std::string, std::string> files;
  for (const auto& e : std::filesystem::recursive_directory_iterator(cli.state_dir())) {
    if (e.is_regular_file()) {
      Bytes b = testing::FileBytes(e.path().string());
      files[e.path().string()] = std::string(b.begin(), b.end());
    }
  }
  Bytes j = testing::FileBytes(json);
  files[json] = std::string(j.begin(), j.end());
  ASSERT_GE(files.size(), 2u * 6 + 1);

  int terminals = 0;
  std::vector<std::string> hits;
  for (const auto& e : std::filesystem::directory_iterator(cli.state_dir())) {
    const std::string sn = e.path().filename().string();
    auto module = SecureModule::Open(cli.state_dir(), sn);
    ASSERT_TRUE(module.ok()) << module.status();
    ASSERT_EQ(module->Describe().lifecycle, "INSTALLED") << sn;
    ++terminals;
    const testing::RevealedKeys keys = SecureModuleTestPeer::RevealKeysForTest(*module);
    ASSERT_FALSE(keys.tek.empty() || keys.auk.empty() || keys.tmk.empty());
    for (const auto& [name, key] :
         {std::pair{"TEK", keys.tek}, std::pair{"AUK", keys.auk}, std::pair{"TMK", keys.tmk}}) {
      for (const auto& [path, content] : files) {
        auto h = Find(content, key, absl::StrCat(sn, " ", name, " in ", path));
        hits.insert(hits.end(), h.begin(), h.end());
      }
      auto h = Find(output, key, absl::StrCat(sn, " ", name, " in output"));
      hits.insert(hits.end(), h.begin(), h.end());
    }
    // The device key is in its own file by design (it stands for the hardware key), but in
    // no other file and never in output.
    for (const auto& [path, content] : files) {
      if (path == module->device_key_file()) continue;
      auto h = Find(content, keys.device_key, absl::StrCat(sn, " device key in ", path));
      hits.insert(hits.end(), h.begin(), h.end());
    }
    auto h = Find(output, keys.device_key, absl::StrCat(sn, " device key in output"));
    hits.insert(hits.end(), h.begin(), h.end());
  }
  EXPECT_EQ(terminals, 6);
  EXPECT_THAT(hits, ::testing::IsEmpty());
}

// The same for TR-34 terminals: a mixed fleet and a CLI provision with the manufacturer's
// CT_KRD file; the TMK and the KRD private key (PKCS#1 DER, inside the PKCS#8 the module
// keeps) of each TR-34 terminal, and TEK/AUK/TMK of each patent one, are in no file (but the
// sealed state) and no output.
TEST_F(LeakageTest, NoClearTr34KeyInStateFilesOrOutput) {
  CliHarness cli(*servers_);
  const testing::KdhWorld& w = testing::KdhWorld::Get();
  auto write = [&](const std::string& name, const Bytes& data) {
    const std::string path = cli.dir() + "/" + name;
    EXPECT_TRUE(WriteFileAtomically(path, data, 0600).ok());
    return path;
  };
  const std::string pem = w.kdh_ca.ToPem();
  const std::string pin = std::string(testing::kTestPin) + "\n";
  const std::vector<std::string> tr34 = {
      "--kdh-ca",          write("kdh-ca.pem", Bytes(pem.begin(), pem.end())),
      "--krd-ca-card",     write("krd-ca.p12", w.krd_ca_p12),
      "--krd-ca-pin-file", write("krd-pin", Bytes(pin.begin(), pin.end()))};
  const std::string export_file = cli.dir() + "/krds.txt";
  const std::string json = cli.dir() + "/fleet.json";
  std::string output;
  auto run = [&](std::vector<std::string> args) {
    auto r = cli.Run(std::move(args));
    output += r.out + r.err;
    return r.exit_code;
  };
  ASSERT_EQ(run(Concat(
                {{"manufacture", "--sn", "LT-1", "--protocol", "tr34", "--krd-export", export_file},
                 cli.StateFlags(),
                 tr34})),
            0)
      << output;
  ASSERT_EQ(run(Concat({{"provision", "--sn", "LT-1"}, cli.StateFlags(), cli.KmsFlags()})), 0)
      << output;
  ASSERT_EQ(run(Concat({{"fleet", "--count", "4", "--concurrency", "2", "--prefix", "LTF",
                         "--protocol", "mixed", "--json", json, "--progress", "plain"},
                        cli.AllStepsFlags(),
                        tr34})),
            0)
      << output;
  ASSERT_EQ(run(Concat({{"status"}, cli.StateFlags()})), 0);
  ASSERT_EQ(run(Concat({{"status", "--sn", "LT-1"}, cli.StateFlags()})), 0);
  output += log_.str();
  ASSERT_THAT(output, ::testing::HasSubstr("KRD id"));

  std::map<std::string, std::string> files;
  for (const auto& e : std::filesystem::recursive_directory_iterator(cli.state_dir())) {
    if (e.is_regular_file()) {
      Bytes b = testing::FileBytes(e.path().string());
      files[e.path().string()] = std::string(b.begin(), b.end());
    }
  }
  for (const std::string& path : {json, export_file}) {
    Bytes b = testing::FileBytes(path);
    files[path] = std::string(b.begin(), b.end());
  }
  int tr34_terminals = 0;
  std::vector<std::string> hits;
  for (const auto& e : std::filesystem::directory_iterator(cli.state_dir())) {
    const std::string sn = e.path().filename().string();
    auto module = SecureModule::Open(cli.state_dir(), sn);
    ASSERT_TRUE(module.ok()) << module.status();
    ASSERT_EQ(module->Describe().lifecycle, "INSTALLED") << sn;
    const testing::RevealedKeys keys = SecureModuleTestPeer::RevealKeysForTest(*module);
    ASSERT_FALSE(keys.tmk.empty());
    if (module->state().protocol == Protocol::kTr34) {
      ++tr34_terminals;
      ASSERT_FALSE(keys.krd_private_key.empty());
    }
    for (const auto& [name, key] :
         {std::pair{"TEK", keys.tek}, std::pair{"AUK", keys.auk}, std::pair{"TMK", keys.tmk},
          std::pair{"KRDKEY", keys.krd_private_key}}) {
      if (key.empty()) continue;
      for (const auto& [path, content] : files) {
        auto h = Find(content, key, absl::StrCat(sn, " ", name, " in ", path));
        hits.insert(hits.end(), h.begin(), h.end());
      }
      auto h = Find(output, key, absl::StrCat(sn, " ", name, " in output"));
      hits.insert(hits.end(), h.begin(), h.end());
    }
  }
  EXPECT_EQ(tr34_terminals, 3);
  EXPECT_THAT(hits, ::testing::IsEmpty());
}

}  // namespace
}  // namespace rkl::pos
