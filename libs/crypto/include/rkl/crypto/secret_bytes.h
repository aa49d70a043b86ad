#pragma once
// SecretBytes: the only type in rkl that holds clear key material (TK, TEK, AUK, TMK, PK,
// MAK, LMK, components, decrypted payloads).
//
// Guarantees:
//  - the buffer is zeroed (OPENSSL_cleanse) when the object is destroyed, moved from or
//    reassigned, so no freed heap page keeps a key;
//  - operator== runs in constant time for equal lengths (CRYPTO_memcmp);
//  - it cannot be streamed or formatted: there is no operator<<, and fmt/spdlog formatting
//    fails to compile (see the formatter specialisation below), so logging a key is a
//    build error, not a review comment;
//  - the bytes are reachable only through RevealSecret()/RevealSecretMutable(), so every
//    use of clear key material can be found with `grep -rn RevealSecret`.
// Not thread-safe for concurrent mutation; const access from several threads is fine.

#include <fmt/format.h>

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

namespace rkl::crypto {

class SecretBytes {
 public:
  SecretBytes() = default;
  // n zero bytes, to be filled through RevealSecretMutable().
  explicit SecretBytes(size_t n);
  // Takes a copy of `data`; the caller remains responsible for wiping its own buffer.
  static SecretBytes CopyOf(std::span<const uint8_t> data);

  SecretBytes(const SecretBytes& other);
  SecretBytes& operator=(const SecretBytes& other);
  SecretBytes(SecretBytes&& other) noexcept;
  SecretBytes& operator=(SecretBytes&& other) noexcept;
  ~SecretBytes();

  size_t size() const { return bytes_.size(); }
  bool empty() const { return bytes_.empty(); }

  // The one door to the clear bytes. Name it in code review.
  std::span<const uint8_t> RevealSecret() const { return bytes_; }
  std::span<uint8_t> RevealSecretMutable() { return bytes_; }

  // this ‖ other, as a new secret.
  SecretBytes Concat(const SecretBytes& other) const;
  // Bytes [offset, offset+len) as a new secret; len is clamped to the end.
  SecretBytes Sub(size_t offset, size_t len) const;

  // Constant time for equal sizes; different sizes compare unequal.
  friend bool operator==(const SecretBytes& a, const SecretBytes& b);

 private:
  void Wipe();
  std::vector<uint8_t> bytes_;
};

}  // namespace rkl::crypto

// Formatting a SecretBytes (fmt::format, spdlog::info, ...) is a compile-time error.
template <>
struct fmt::formatter<rkl::crypto::SecretBytes> {
  template <typename ParseContext>
  constexpr auto parse(ParseContext& ctx) {
    static_assert(sizeof(ParseContext) == 0,
                  "SecretBytes holds clear key material and must never be formatted or logged");
    return ctx.begin();
  }
  template <typename FormatContext>
  auto format(const rkl::crypto::SecretBytes&, FormatContext& ctx) const {
    return ctx.out();
  }
};
