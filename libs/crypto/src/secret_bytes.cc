#include "rkl/crypto/secret_bytes.h"

#include <openssl/crypto.h>

#include <algorithm>

namespace rkl::crypto {

SecretBytes::SecretBytes(size_t n) : bytes_(n, 0) {}

SecretBytes SecretBytes::CopyOf(std::span<const uint8_t> data) {
  SecretBytes s(data.size());
  std::copy(data.begin(), data.end(), s.bytes_.begin());
  return s;
}

SecretBytes::SecretBytes(const SecretBytes& other) : bytes_(other.bytes_) {}

SecretBytes& SecretBytes::operator=(const SecretBytes& other) {
  if (this != &other) {
    Wipe();
    bytes_ = other.bytes_;
  }
  return *this;
}

SecretBytes::SecretBytes(SecretBytes&& other) noexcept : bytes_(std::move(other.bytes_)) {
  other.bytes_.clear();
}

SecretBytes& SecretBytes::operator=(SecretBytes&& other) noexcept {
  if (this != &other) {
    Wipe();
    bytes_ = std::move(other.bytes_);
    other.bytes_.clear();
  }
  return *this;
}

SecretBytes::~SecretBytes() { Wipe(); }

void SecretBytes::Wipe() {
  // Cleanse the whole capacity: a shrunk vector may still hold old bytes past size().
  if (bytes_.capacity() > 0) {
    bytes_.resize(bytes_.capacity());
    OPENSSL_cleanse(bytes_.data(), bytes_.size());
  }
  bytes_.clear();
}

SecretBytes SecretBytes::Concat(const SecretBytes& other) const {
  SecretBytes out(size() + other.size());
  std::copy(bytes_.begin(), bytes_.end(), out.bytes_.begin());
  std::copy(other.bytes_.begin(), other.bytes_.end(), out.bytes_.begin() + size());
  return out;
}

SecretBytes SecretBytes::Sub(size_t offset, size_t len) const {
  if (offset >= size()) return SecretBytes();
  len = std::min(len, size() - offset);
  return CopyOf(std::span<const uint8_t>(bytes_).subspan(offset, len));
}

bool operator==(const SecretBytes& a, const SecretBytes& b) {
  if (a.size() != b.size()) return false;
  if (a.empty()) return true;
  return CRYPTO_memcmp(a.bytes_.data(), b.bytes_.data(), a.size()) == 0;
}

}  // namespace rkl::crypto
