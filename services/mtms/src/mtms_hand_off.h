#pragma once
// IntakeHandOff: how intake gives a package it just stored straight to the forwarder, so the
// forwarder needs no claim statement for it (docs/mtms.md "Forwarding"). The Forwarder
// implements it; MtmsCore uses it when MtmsCoreOptions::hand_off is set.
//
// Intake asks for a claim before it stores the package, stores the row leased to that claim
// in its one statement, and hands the stored row over. A row that is never processed (the
// replica stopped or crashed first) stays leased until the lease ends; then the periodic
// claim of any replica takes it like any other due row. Thread-safe.

#include <optional>

#include "mtms_repository.h"

namespace rkl::mtms {

class IntakeHandOff {
 public:
  virtual ~IntakeHandOff() = default;
  // A claim for the row intake is about to store; nullopt when the forwarder takes no row
  // now (intake then stores the row unclaimed, for the forwarder's own claim, and the
  // caller Wake()s the forwarder).
  virtual std::optional<IntakeClaim> ClaimForIntake() = 0;
  // The row intake stored under `claim`, with its claim facts set.
  virtual void HandOff(SubmissionRecord row, const IntakeClaim& claim) = 0;
};

}  // namespace rkl::mtms
