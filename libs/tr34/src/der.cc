#include "der.h"

#include <algorithm>

namespace rkl::tr34::der {

Bytes Header(uint8_t tag, size_t n) {
  Bytes out;
  out.push_back(tag);
  if (n < 0x80) {
    out.push_back(static_cast<uint8_t>(n));
  } else {
    // Long form: 0x80 | count, then the length big-endian in the fewest bytes.
    uint8_t len_bytes[sizeof(size_t)];
    int count = 0;
    for (size_t v = n; v != 0; v >>= 8) len_bytes[count++] = static_cast<uint8_t>(v & 0xFF);
    out.push_back(static_cast<uint8_t>(0x80 | count));
    for (int i = count - 1; i >= 0; --i) out.push_back(len_bytes[i]);
  }
  return out;
}

Bytes Tlv(uint8_t tag, std::span<const uint8_t> value) {
  Bytes out = Header(tag, value.size());
  out.insert(out.end(), value.begin(), value.end());
  return out;
}

Bytes Concat(std::initializer_list<std::span<const uint8_t>> parts) {
  Bytes out;
  for (auto part : parts) out.insert(out.end(), part.begin(), part.end());
  return out;
}

Bytes SetOf(std::vector<Bytes> elements) {
  // X.690 §11.6: the encodings compare as octet strings, the shorter one padded with zeros;
  // lexicographic order of std::vector matches that for encodings that differ before either
  // ends, and DER elements never are a proper prefix of one another.
  std::sort(elements.begin(), elements.end());
  Bytes body;
  for (const Bytes& e : elements) body.insert(body.end(), e.begin(), e.end());
  return Tlv(kSet, body);
}

std::optional<Element> Reader::Next() {
  if (rest_.size() < 2) return std::nullopt;
  uint8_t tag = rest_[0];
  // Multi-byte tags never occur in the structures rkl reads.
  if ((tag & 0x1F) == 0x1F) return std::nullopt;
  size_t pos = 2;
  size_t len = rest_[1];
  if (len & 0x80) {
    size_t count = len & 0x7F;
    // 0x80 is the indefinite length BER allows and DER does not.
    if (count == 0 || count > 4 || rest_.size() < 2 + count) return std::nullopt;
    len = 0;
    for (size_t i = 0; i < count; ++i) len = (len << 8) | rest_[2 + i];
    // DER: the short form whenever it fits, and no leading zero length byte.
    if (len < 0x80 || rest_[2] == 0) return std::nullopt;
    pos += count;
  }
  if (rest_.size() - pos < len) return std::nullopt;
  Element e{tag, rest_.subspan(pos, len), rest_.subspan(0, pos + len)};
  rest_ = rest_.subspan(pos + len);
  return e;
}

std::optional<Element> Reader::NextIf(uint8_t tag) {
  if (rest_.empty() || rest_[0] != tag) return std::nullopt;
  return Next();
}

std::optional<Element> ParseOne(std::span<const uint8_t> data) {
  Reader r(data);
  auto e = r.Next();
  if (!e || !r.Done()) return std::nullopt;
  return e;
}

}  // namespace rkl::tr34::der
