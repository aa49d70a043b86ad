#pragma once
// Runs rkl-pos in-process against FakeServers, with the files a user would pass (HsmRCRT,
// operator card, PIN file, service-ca bundle, admin certificate) and captured streams.

#include <gtest/gtest.h>

#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "cli.h"
#include "fakes.h"

namespace rkl::pos::testing {

struct CliRun {
  int exit_code = -1;
  std::string out;
  std::string err;
};

class CliHarness {
 public:
  explicit CliHarness(FakeServers& servers);

  // argv after the program name.
  CliRun Run(std::vector<std::string> args);

  // Connection, card and root flags for commands that need them.
  std::vector<std::string> MtmsFlags() const;
  std::vector<std::string> KmsFlags() const;
  std::vector<std::string> CardFlags() const;
  std::vector<std::string> RootFlags() const;
  std::vector<std::string> AdminFlags() const;
  std::vector<std::string> StateFlags() const { return {"--state-dir", state_dir()}; }
  // Every flag above: what `provision` and `fleet`, which run all the steps, need.
  std::vector<std::string> AllStepsFlags() const;

  std::string state_dir() const { return dir_.path() + "/state"; }
  const std::string& dir() const { return dir_.path(); }

 private:
  FakeServers& servers_;
  TempDir dir_;
};

std::vector<std::string> Concat(std::initializer_list<std::vector<std::string>> parts);

// A test against FakeServers started afresh for each test.
class FakeServersTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto servers = FakeServers::Start();
    ASSERT_TRUE(servers.ok()) << servers.status();
    servers_ = *std::move(servers);
  }

  std::unique_ptr<FakeServers> servers_;
};

}  // namespace rkl::pos::testing
