#pragma once
// A minimal DER writer and reader for the TR-34 structures rkl composes or takes apart by
// hand: the parts OpenSSL's CMS API cannot express (see tokens.h). Not installed.
//
// The reader works over a borrowed span and never copies; a caller that reads secret bytes
// (the decrypted key block) copies the value it needs into SecretBytes itself. Only definite
// lengths are accepted, as DER requires.

#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "rkl/common/hex.h"

namespace rkl::tr34::der {

// The universal tags rkl reads and writes.
enum Tag : uint8_t {
  kInteger = 0x02,
  kOctetString = 0x04,
  kNull = 0x05,
  kOid = 0x06,
  kSequence = 0x30,
  kSet = 0x31,
};
// [n] constructed, context-specific.
constexpr uint8_t ContextTag(int n) { return static_cast<uint8_t>(0xA0 | n); }

// The tag and length octets of an element whose value is `length` bytes long.
Bytes Header(uint8_t tag, size_t length);
// tag ‖ length ‖ value.
Bytes Tlv(uint8_t tag, std::span<const uint8_t> value);
// The concatenation of `parts`.
Bytes Concat(std::initializer_list<std::span<const uint8_t>> parts);
// SET OF with its elements in DER order (sorted by encoding, X.690 §11.6).
Bytes SetOf(std::vector<Bytes> elements);

// One decoded element: its tag, its value and its whole encoding, all within the input.
struct Element {
  uint8_t tag = 0;
  std::span<const uint8_t> value;
  std::span<const uint8_t> encoding;
};

// Reads consecutive elements from a span.
class Reader {
 public:
  explicit Reader(std::span<const uint8_t> data) : rest_(data) {}
  // The next element, or nullopt when the input is exhausted or malformed (then the reader
  // stays where it was).
  std::optional<Element> Next();
  // The next element if it has `tag`, else nullopt and nothing consumed.
  std::optional<Element> NextIf(uint8_t tag);
  bool Done() const { return rest_.empty(); }

 private:
  std::span<const uint8_t> rest_;
};

// The single element of `data` (nothing may follow it), or nullopt.
std::optional<Element> ParseOne(std::span<const uint8_t> data);

}  // namespace rkl::tr34::der
