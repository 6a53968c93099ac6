// modelport: the string helpers the web runtime sources call (rpc_endpoint.cc).
#pragma once
#include <cstddef>
#include <string>
namespace tvm {
namespace support {
inline bool StartsWith(const std::string& s, const std::string& prefix) {
  return s.rfind(prefix, 0) == 0;
}
inline bool EndsWith(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}
inline size_t HashCombine(size_t key, size_t value) {
  return key ^ (value + 0x9e3779b9 + (key << 6) + (key >> 2));
}
}  // namespace support
}  // namespace tvm
