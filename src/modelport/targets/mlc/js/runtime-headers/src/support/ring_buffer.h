// modelport: the byte FIFO rpc_endpoint uses between the JS side and the RPC session.
#pragma once
#include <algorithm>
#include <cstring>
#include <vector>
#include <tvm/ffi/error.h>
namespace tvm {
namespace support {
class RingBuffer {
 public:
  size_t bytes_available() const { return size_; }
  /*! Make room for n more bytes at the tail (compacting first). */
  void Reserve(size_t n) {
    if (head_ + size_ + n <= data_.size()) return;
    std::memmove(data_.data(), data_.data() + head_, size_);
    head_ = 0;
    if (size_ + n > data_.size()) data_.resize(std::max(size_ + n, data_.size() * 2));
  }
  void Write(const void* src, size_t n) {
    Reserve(n);
    std::memcpy(data_.data() + head_ + size_, src, n);
    size_ += n;
  }
  void Read(void* dst, size_t n) {
    TVM_FFI_ICHECK_LE(n, size_);
    std::memcpy(dst, data_.data() + head_, n);
    Pop(n);
  }
  /*! frecv(const void* data, size_t n) -> bytes consumed. */
  template <typename F>
  size_t ReadWithCallback(F frecv, size_t max_nbytes) {
    size_t n = std::min(max_nbytes, size_);
    if (n == 0) return 0;
    size_t done = frecv(static_cast<const void*>(data_.data() + head_), n);
    Pop(done);
    return done;
  }
  /*! fsend(void* data, size_t n) -> bytes produced. */
  template <typename F>
  size_t WriteWithCallback(F fsend, size_t max_nbytes) {
    Reserve(max_nbytes);
    size_t done = fsend(static_cast<void*>(data_.data() + head_ + size_), max_nbytes);
    size_ += done;
    return done;
  }

 private:
  void Pop(size_t n) {
    head_ += n;
    size_ -= n;
    if (size_ == 0) head_ = 0;
  }
  std::vector<char> data_;
  size_t head_ = 0, size_ = 0;
};
}  // namespace support
}  // namespace tvm
