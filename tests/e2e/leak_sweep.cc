// e2e_leak_sweep — searches files for clear keys, for the end-to-end leakage sweep.
//
//   e2e_leak_sweep --keys KEYS PATH...     exit 0: no key found; 1: hits (listed); 2: error
//   e2e_leak_sweep --keys KEYS --plant F   appends the first key of KEYS to F in every form
//                                          searched, prints the form names (the control)
//
// KEYS holds lines "<SN> <KIND> <hex>" (rkl-pos-keydump's output). Each key is searched in
// every form it could take in a file: raw bytes, upper- and lower-case hex, and base64 —
// standard and URL-safe alphabets — at each of the three byte alignments (a key embedded
// at offset 0, 1 or 2 of a base64-encoded blob), using only the characters that depend on
// the key alone. PATHs are files or directories (recursively; symbolic links not followed).
// Hits are reported as "HIT <file> offset <n>: <SN> <KIND> as <form>", never with the key.
#include <sys/stat.h>

#include <array>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <map>
#include <sstream>
#include <string>
#include <unordered_map>
#include <vector>

namespace {

namespace fs = std::filesystem;

struct Needle {
  std::string bytes;
  std::string label;  // "<SN> <KIND> as <form>"
};

constexpr size_t kPrefix = 8;  // every needle is longer: a key is at least 16 bytes

std::string FromHexOrDie(const std::string& hex) {
  auto nibble = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  if (hex.size() % 2 != 0) throw std::runtime_error("odd-length hex key");
  std::string out;
  for (size_t i = 0; i < hex.size(); i += 2) {
    const int hi = nibble(hex[i]), lo = nibble(hex[i + 1]);
    if (hi < 0 || lo < 0) throw std::runtime_error("non-hex character in a key");
    out.push_back(static_cast<char>(hi << 4 | lo));
  }
  return out;
}

std::string Hex(const std::string& raw, bool upper) {
  const char* digits = upper ? "0123456789ABCDEF" : "0123456789abcdef";
  std::string out;
  for (unsigned char c : raw) {
    out.push_back(digits[c >> 4]);
    out.push_back(digits[c & 15]);
  }
  return out;
}

std::string Base64(const std::string& raw, bool url_safe) {
  const char* alphabet = url_safe
                             ? "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
                             : "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  size_t i = 0;
  for (; i + 2 < raw.size(); i += 3) {
    const uint32_t v = static_cast<uint8_t>(raw[i]) << 16 | static_cast<uint8_t>(raw[i + 1]) << 8 |
                       static_cast<uint8_t>(raw[i + 2]);
    for (int s = 18; s >= 0; s -= 6) out.push_back(alphabet[(v >> s) & 63]);
  }
  const size_t rest = raw.size() - i;
  if (rest > 0) {
    uint32_t v = static_cast<uint8_t>(raw[i]) << 16;
    if (rest == 2) v |= static_cast<uint8_t>(raw[i + 1]) << 8;
    out.push_back(alphabet[(v >> 18) & 63]);
    out.push_back(alphabet[(v >> 12) & 63]);
    out.push_back(rest == 2 ? alphabet[(v >> 6) & 63] : '=');
    out.push_back('=');
  }
  return out;
}

// The base64 characters that depend only on `key` when it sits at byte offset `align`
// (0..2) of an encoded blob: drop the characters mixing in preceding or following bytes.
std::string Base64Core(const std::string& key, int align, bool url_safe) {
  std::string encoded = Base64(std::string(align, '\0') + key, url_safe);
  while (!encoded.empty() && encoded.back() == '=') encoded.pop_back();
  const size_t head = align == 0 ? 0 : (align == 1 ? 2 : 3);
  const size_t tail = (align + key.size()) % 3 == 0 ? 0 : 1;
  return encoded.substr(head, encoded.size() - head - tail);
}

std::vector<std::pair<std::string, std::string>> Forms(const std::string& raw) {
  std::vector<std::pair<std::string, std::string>> forms = {
      {"raw", raw}, {"hex-upper", Hex(raw, true)}, {"hex-lower", Hex(raw, false)}};
  for (int align = 0; align < 3; ++align) {
    forms.emplace_back("base64-align" + std::to_string(align), Base64Core(raw, align, false));
    forms.emplace_back("base64url-align" + std::to_string(align), Base64Core(raw, align, true));
  }
  return forms;
}

struct Key {
  std::string sn, kind, raw;
};

std::vector<Key> ReadKeys(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot read --keys " + path);
  std::vector<Key> keys;
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream fields(line);
    Key k;
    std::string hex;
    if (!(fields >> k.sn >> k.kind >> hex)) continue;
    k.raw = FromHexOrDie(hex);
    if (k.raw.size() < 16) throw std::runtime_error("key shorter than 16 bytes");
    keys.push_back(std::move(k));
  }
  return keys;
}

class Sweep {
 public:
  explicit Sweep(const std::vector<Key>& keys) {
    for (const Key& k : keys) {
      for (auto& [form, bytes] : Forms(k.raw)) {
        // URL-safe base64 equals standard base64 when neither '+' nor '/' occurs.
        const size_t id = needles_.size();
        needles_.push_back({bytes, k.sn + " " + k.kind + " as " + form});
        by_prefix_[bytes.substr(0, kPrefix)].push_back(id);
      }
    }
  }

  size_t needles() const { return needles_.size(); }

  // Returns the number of hits in `data`, printing each.
  size_t Scan(const std::string& name, const std::string& data) {
    size_t hits = 0;
    if (data.size() < kPrefix) return 0;
    for (size_t i = 0; i + kPrefix <= data.size(); ++i) {
      auto it = by_prefix_.find(std::string_view(data.data() + i, kPrefix));
      if (it == by_prefix_.end()) continue;
      for (size_t id : it->second) {
        const Needle& n = needles_[id];
        if (data.compare(i, n.bytes.size(), n.bytes) == 0) {
          std::cout << "HIT " << name << " offset " << i << ": " << n.label << "\n";
          ++hits;
        }
      }
    }
    return hits;
  }

 private:
  struct ViewHash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const { return std::hash<std::string_view>()(s); }
  };
  struct ViewEq {
    using is_transparent = void;
    bool operator()(std::string_view a, std::string_view b) const { return a == b; }
  };
  std::vector<Needle> needles_;
  std::unordered_map<std::string, std::vector<size_t>, ViewHash, ViewEq> by_prefix_;
};

bool ReadFile(const fs::path& path, std::string& out) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return false;
  out.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  return true;
}

int Plant(const std::vector<Key>& keys, const std::string& file) {
  if (keys.empty()) {
    std::cerr << "e2e_leak_sweep: no key to plant\n";
    return 2;
  }
  std::ofstream out(file, std::ios::binary | std::ios::app);
  if (!out) {
    std::cerr << "e2e_leak_sweep: cannot open " << file << "\n";
    return 2;
  }
  const std::string& raw = keys.front().raw;
  for (auto& [form, bytes] : Forms(raw)) {
    out << "\nplanted control (" << form << "): ";
    if (form.starts_with("base64")) {
      // As it would appear: the whole blob encoded, the key at this alignment inside it.
      const int align = form.back() - '0';
      out << Base64(std::string(align, 'x') + raw + "tail", form.starts_with("base64url"));
    } else {
      out << bytes;
    }
    out << " end\n";
    std::cout << form << "\n";
  }
  return out ? 0 : 2;
}

}  // namespace

int main(int argc, char** argv) {
  std::string keys_file, plant;
  std::vector<std::string> paths;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--keys" && i + 1 < argc) {
      keys_file = argv[++i];
    } else if (arg == "--plant" && i + 1 < argc) {
      plant = argv[++i];
    } else if (!arg.empty() && arg[0] == '-') {
      std::cerr << "usage: e2e_leak_sweep --keys KEYS (--plant FILE | PATH...)\n";
      return 2;
    } else {
      paths.push_back(arg);
    }
  }
  if (keys_file.empty() || (plant.empty() && paths.empty())) {
    std::cerr << "usage: e2e_leak_sweep --keys KEYS (--plant FILE | PATH...)\n";
    return 2;
  }
  try {
    const std::vector<Key> keys = ReadKeys(keys_file);
    if (!plant.empty()) return Plant(keys, plant);
    if (keys.empty()) {
      std::cerr << "e2e_leak_sweep: --keys holds no key\n";
      return 2;
    }
    Sweep sweep(keys);
    size_t files = 0, bytes = 0, hits = 0;
    std::string data;
    auto scan_file = [&](const fs::path& p) {
      if (!ReadFile(p, data)) {
        // A running PostgreSQL removes temporary files while we walk; anything that still
        // exists must be readable.
        std::error_code gone;
        if (!fs::exists(p, gone)) return;
        std::cerr << "e2e_leak_sweep: cannot read " << p << "\n";
        throw std::runtime_error("unreadable file");
      }
      ++files;
      bytes += data.size();
      hits += sweep.Scan(p.string(), data);
    };
    for (const std::string& root : paths) {
      const fs::file_status st = fs::symlink_status(root);
      if (fs::is_regular_file(st)) {
        scan_file(root);
      } else if (fs::is_directory(st)) {
        std::error_code ec;
        for (auto it = fs::recursive_directory_iterator(root, ec); !ec && it != fs::end(it);
             it.increment(ec)) {
          // Sockets and pipes (PostgreSQL's) are not files; skipping them hides nothing.
          std::error_code type_ec;
          if (it->is_regular_file(type_ec) && !it->is_symlink(type_ec)) scan_file(it->path());
        }
        if (ec) {
          std::cerr << "e2e_leak_sweep: cannot walk " << root << ": " << ec.message() << "\n";
          return 2;
        }
      } else {
        std::cerr << "e2e_leak_sweep: not a file or directory: " << root << "\n";
        return 2;
      }
    }
    std::cout << "searched " << files << " files (" << bytes << " bytes) for " << keys.size()
              << " keys in " << sweep.needles() << " forms: " << hits << " hits\n";
    return hits == 0 ? 0 : 1;
  } catch (const std::exception& e) {
    std::cerr << "e2e_leak_sweep: " << e.what() << "\n";
    return 2;
  }
}
