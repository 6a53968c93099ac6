// modelport: a bump allocator whose memory is released all at once (rpc_endpoint.cc allocates
// argument arrays from it per call and calls RecycleAll() after the call).
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <new>
#include <vector>
namespace tvm {
namespace support {
class Arena {
 public:
  Arena() = default;
  Arena(const Arena&) = delete;
  Arena& operator=(const Arena&) = delete;

  void* Alloc(size_t size, size_t align) {
    size_t offset = (used_ + align - 1) / align * align;
    if (blocks_.empty() || offset + size > capacity_) {
      capacity_ = size + align > kBlock ? size + align : kBlock;
      blocks_.emplace_back(static_cast<char*>(std::malloc(capacity_)));
      if (!blocks_.back()) throw std::bad_alloc();
      char* base = blocks_.back().get();
      offset = static_cast<size_t>(AlignUp(base, align) - base);
    }
    used_ = offset + size;
    return blocks_.back().get() + offset;
  }
  template <typename T>
  T* allocate_(int count) {
    return static_cast<T*>(Alloc(sizeof(T) * static_cast<size_t>(count), alignof(T)));
  }
  void RecycleAll() {
    blocks_.clear();
    used_ = capacity_ = 0;
  }

 private:
  struct Free {
    void operator()(char* p) const { std::free(p); }
  };
  static char* AlignUp(char* p, size_t align) {
    auto v = reinterpret_cast<std::uintptr_t>(p);
    return reinterpret_cast<char*>((v + align - 1) / align * align);
  }
  static constexpr size_t kBlock = 16 << 10;
  std::vector<std::unique_ptr<char, Free>> blocks_;
  size_t used_ = 0, capacity_ = 0;
};
}  // namespace support
}  // namespace tvm
