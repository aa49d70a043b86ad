#pragma once
// TempDirTest: a gtest fixture that gives each test a fresh private directory under /tmp
// (mkdtemp, mode 0700) and removes it, with everything in it, after the test.

#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <string>

namespace rkl::testing {

class TempDirTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/rkl-test.XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  // Writes `content` to the file `name` in the directory (replacing it) and gives it `mode`
  // whatever the umask; returns the file's path.
  std::string WriteFile(const std::string& name, const std::string& content, mode_t mode) {
    std::string path = dir_ + "/" + name;
    std::ofstream(path, std::ios::binary | std::ios::trunc) << content;
    ::chmod(path.c_str(), mode);
    return path;
  }

  std::string dir_;
};

}  // namespace rkl::testing
