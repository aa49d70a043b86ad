#include "secure_module.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <filesystem>
#include <functional>
#include <iterator>

#include "fakes.h"
#include "files.h"
#include "rkl/crypto/aead.h"
#include "rkl/crypto/random.h"

namespace rkl::pos {
namespace {

using testing::FileBytes;
using ::testing::HasSubstr;
using testing::TempDir;

SecureModuleState SampleState(const std::string& sn) {
  SecureModuleState s;
  s.sn = sn;
  s.algorithm = crypto::KeyAlgorithm::kAes256;
  s.lifecycle = Lifecycle::kTkGenerated;
  s.terminal_root_der = {1, 2, 3};
  s.work_certificate_der = {4, 5};
  s.tek = crypto::GenerateKey(crypto::KeyAlgorithm::kAes256);
  s.auk = crypto::GenerateKey(crypto::KeyAlgorithm::kAes256);
  s.ctk_pu = {9, 9, 9};
  s.submission_id = "sub-1";
  s.manufactured_at_unix_ms = 1700000000123;
  return s;
}

mode_t ModeOf(const std::string& path) {
  struct stat st;
  EXPECT_EQ(::stat(path.c_str(), &st), 0) << path;
  return st.st_mode & 0777;
}

// How many entries `dir` holds.
int EntriesIn(const std::string& dir) {
  std::filesystem::directory_iterator it(dir);
  return static_cast<int>(std::distance(begin(it), end(it)));
}

TEST(SecureModuleStateTest, SerializationRoundTrips) {
  SecureModuleState s = SampleState("T-1");
  auto bytes = SerializeState(s);
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  auto back = ParseState(*bytes);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->sn, "T-1");
  EXPECT_EQ(back->algorithm, crypto::KeyAlgorithm::kAes256);
  EXPECT_EQ(back->lifecycle, Lifecycle::kTkGenerated);
  EXPECT_EQ(back->terminal_root_der, s.terminal_root_der);
  EXPECT_TRUE(back->tek == s.tek);
  EXPECT_TRUE(back->auk == s.auk);
  EXPECT_TRUE(back->tmk.empty());
  EXPECT_EQ(back->ctk_pu, s.ctk_pu);
  EXPECT_EQ(back->submission_id, "sub-1");
  EXPECT_EQ(back->manufactured_at_unix_ms, 1700000000123);
}

TEST(SecureModuleStateTest, TruncatedOrAlteredStateIsDataLoss) {
  auto bytes = SerializeState(SampleState("T-1"));
  ASSERT_TRUE(bytes.ok());
  auto truncated = ParseState(bytes->Sub(0, bytes->size() - 1));
  EXPECT_EQ(truncated.status().code(), absl::StatusCode::kDataLoss);
  crypto::SecretBytes bad_magic = *bytes;
  bad_magic.RevealSecretMutable()[0] ^= 0xff;
  EXPECT_EQ(ParseState(bad_magic).status().code(), absl::StatusCode::kDataLoss);
  // A field dropped at the end (accepted_nonce, empty for a patent terminal: tag + 4 bytes).
  auto missing = ParseState(bytes->Sub(0, bytes->size() - 5));
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(missing.status().message(), HasSubstr("missing field"));
}

TEST(SecureModuleTest, CreateSealsWithPrivateModesAndReopens) {
  TempDir dir;
  auto m = SecureModule::Create(dir.path(), SampleState("T-1"));
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(ModeOf(m->directory()), 0700u);
  EXPECT_EQ(ModeOf(m->state_file()), 0600u);
  EXPECT_EQ(ModeOf(m->device_key_file()), 0600u);
  auto reopened = SecureModule::Open(dir.path(), "T-1");
  ASSERT_TRUE(reopened.ok()) << reopened.status();
  EXPECT_TRUE(reopened->state().tek == m->state().tek);
  EXPECT_EQ(reopened->Describe().tek_kcv, m->Describe().tek_kcv);
  EXPECT_EQ(reopened->Describe().lifecycle, "TK_GENERATED");
  // No leftover temporary files.
  EXPECT_EQ(EntriesIn(m->directory()), 2);
}

TEST(SecureModuleTest, WithoutDurableWritesStateIsStillReplacedWhole) {
  // fleet --no-fsync: no fsync, but the same atomic replace and the same sealed contents.
  struct Restore {
    ~Restore() { SetDurableWrites(true); }
  } restore;
  SetDurableWrites(false);
  ASSERT_FALSE(DurableWrites());
  TempDir dir;
  auto m = SecureModule::Create(dir.path(), SampleState("T-1"));
  ASSERT_TRUE(m.ok()) << m.status();
  SecureModuleState next = m->state();
  next.lifecycle = Lifecycle::kTkSubmitted;
  next.submission_id = "sub-2";
  ASSERT_TRUE(m->Commit(next).ok());
  auto reopened = SecureModule::Open(dir.path(), "T-1");
  ASSERT_TRUE(reopened.ok()) << reopened.status();
  EXPECT_EQ(reopened->Describe().lifecycle, "TK_SUBMITTED");
  EXPECT_EQ(reopened->state().submission_id, "sub-2");
  EXPECT_EQ(ModeOf(m->state_file()), 0600u);
  EXPECT_EQ(EntriesIn(m->directory()), 2);
}

TEST(SecureModuleTest, CreateRefusesAnExistingTerminal) {
  TempDir dir;
  ASSERT_TRUE(SecureModule::Create(dir.path(), SampleState("T-1")).ok());
  auto again = SecureModule::Create(dir.path(), SampleState("T-1"));
  EXPECT_EQ(again.status().code(), absl::StatusCode::kAlreadyExists);
}

TEST(SecureModuleTest, OpenUnknownTerminalIsNotFound) {
  TempDir dir;
  EXPECT_EQ(SecureModule::Open(dir.path(), "NOPE").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(SecureModule::Open(dir.path(), "bad sn").status().code(),
            absl::StatusCode::kInvalidArgument);
}

// A new module whose `file` is then replaced by what `rewrite` makes of it no longer opens:
// DATA_LOSS, saying `finding`.
void ExpectDataLossAfterRewriting(std::string (SecureModule::*file)() const,
                                  const std::function<Bytes(Bytes)>& rewrite,
                                  const std::string& finding) {
  TempDir dir;
  auto m = SecureModule::Create(dir.path(), SampleState("T-1"));
  ASSERT_TRUE(m.ok());
  const std::string path = (*m.*file)();
  ASSERT_TRUE(WriteFileAtomically(path, rewrite(FileBytes(path)), 0600).ok());
  auto opened = SecureModule::Open(dir.path(), "T-1");
  EXPECT_EQ(opened.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(opened.status().message(), HasSubstr(finding));
}

TEST(SecureModuleTest, TamperedStateFileDoesNotOpen) {
  ExpectDataLossAfterRewriting(
      &SecureModule::state_file,
      [](Bytes sealed) {
        sealed[sealed.size() / 2] ^= 0x01;
        return sealed;
      },
      "does not open");
}

TEST(SecureModuleTest, StateFileCopiedToAnotherTerminalDoesNotOpen) {
  TempDir dir;
  auto a = SecureModule::Create(dir.path(), SampleState("T-A"));
  auto b = SecureModule::Create(dir.path(), SampleState("T-B"));
  ASSERT_TRUE(a.ok() && b.ok());
  // Even with B's device key copied too, the AAD (SN) differs.
  ASSERT_TRUE(WriteFileAtomically(b->state_file(), FileBytes(a->state_file()), 0600).ok());
  ASSERT_TRUE(
      WriteFileAtomically(b->device_key_file(), FileBytes(a->device_key_file()), 0600).ok());
  EXPECT_EQ(SecureModule::Open(dir.path(), "T-B").status().code(), absl::StatusCode::kDataLoss);
}

// Terminals already on disk hold AES-256-GCM(device.key, state) as nonce ‖ ciphertext ‖ tag
// with AAD = SN; a directory written that way, without SecureModule, still opens.
TEST(SecureModuleTest, OpensAStateFileSealedInTheStoredLayout) {
  TempDir dir;
  const std::string terminal = TerminalDirectory(dir.path(), "T-OLD");
  ASSERT_TRUE(MakeDirectories(terminal, 0700).ok());
  const crypto::SecretBytes device_key = crypto::RandomSecret(32);
  ASSERT_TRUE(CreateSecretFile(terminal + "/device.key", device_key, 0600).ok());
  const SecureModuleState state = SampleState("T-OLD");
  const Bytes sealed =
      crypto::AeadSeal(device_key, SerializeState(state).value(), AsBytes("T-OLD")).value();
  ASSERT_TRUE(WriteFileAtomically(terminal + "/secure_module.sealed", sealed, 0600).ok());

  auto opened = SecureModule::Open(dir.path(), "T-OLD");
  ASSERT_TRUE(opened.ok()) << opened.status();
  EXPECT_TRUE(opened->state().tek == state.tek);
  EXPECT_EQ(opened->state().submission_id, "sub-1");
  // A commit writes the same layout back.
  ASSERT_TRUE(opened->Commit(opened->state()).ok());
  EXPECT_TRUE(
      crypto::AeadOpen(device_key, FileBytes(opened->state_file()), AsBytes("T-OLD")).value() ==
      SerializeState(state).value());
}

TEST(SecureModuleTest, DeviceKeyOfTheWrongSizeIsDataLoss) {
  ExpectDataLossAfterRewriting(
      &SecureModule::device_key_file, [](Bytes) { return Bytes(16, 7); }, "not a device key");
}

TEST(SecureModuleTest, CommitReplacesAtomicallyAndRefusesSnChange) {
  TempDir dir;
  auto m = SecureModule::Create(dir.path(), SampleState("T-1"));
  ASSERT_TRUE(m.ok());
  const Bytes before = FileBytes(m->state_file());
  SecureModuleState other = m->state();
  other.sn = "T-2";
  EXPECT_EQ(m->Commit(other).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(FileBytes(m->state_file()), before);

  SecureModuleState next = m->state();
  next.lifecycle = Lifecycle::kTkSubmitted;
  ASSERT_TRUE(m->Commit(next).ok());
  EXPECT_NE(FileBytes(m->state_file()), before);
  EXPECT_EQ(SecureModule::Open(dir.path(), "T-1")->state().lifecycle, Lifecycle::kTkSubmitted);
}

// The parsed certificates follow the state: a state that holds other DER gets its own.
TEST(SecureModuleTest, CertificatesAreTheOnesTheStateHolds) {
  const testing::TerminalPki& pki = testing::TerminalPki::Get();
  TempDir dir;
  SecureModuleState initial = SampleState("T-1");
  initial.terminal_root_der = pki.root.ToDer();
  initial.work_certificate_der.clear();
  auto m = SecureModule::Create(dir.path(), initial);
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->WorkCertificate().status().code(), absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(m->TerminalRoot().ok());
  EXPECT_EQ(m->TerminalRoot()->ToDer(), pki.root.ToDer());

  for (const crypto::Certificate* work : {&pki.work, &pki.renewed_work, &pki.work}) {
    SecureModuleState next = m->state();
    next.work_certificate_der = work->ToDer();
    ASSERT_TRUE(m->Commit(next).ok());
    auto got = m->WorkCertificate();
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(got->SerialHex(), work->SerialHex());
    EXPECT_EQ(m->Describe().work_certificate_serial, work->SerialHex());
  }

  // What the caller remembers is used only for the DER it was parsed from.
  m->RememberWorkCertificate(pki.renewed_work);
  EXPECT_EQ(m->WorkCertificate()->SerialHex(), pki.work.SerialHex());

  SecureModuleState broken = m->state();
  broken.work_certificate_der = {0x30, 0x00};
  ASSERT_TRUE(m->Commit(broken).ok());
  EXPECT_FALSE(m->WorkCertificate().ok());
  EXPECT_EQ(m->Describe().work_certificate_serial, "");
}

}  // namespace
}  // namespace rkl::pos
