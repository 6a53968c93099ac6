// modelport: NVTX profiling ranges are CUDA-only; in wasm they compile to nothing.
#pragma once
#include <string>
namespace tvm {
namespace support {
class NVTXScopedRange {
 public:
  explicit NVTXScopedRange(const char*) {}
  explicit NVTXScopedRange(const std::string&) {}
  NVTXScopedRange(const NVTXScopedRange&) = delete;
  NVTXScopedRange& operator=(const NVTXScopedRange&) = delete;
};
}  // namespace support
}  // namespace tvm
