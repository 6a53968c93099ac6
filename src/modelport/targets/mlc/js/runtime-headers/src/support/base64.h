// modelport: base64 streams over support::Stream (tensor.cc's __data_to_json__/__data_from_json__).
#pragma once
#include <cctype>
#include <cstdint>
#include <string>
#include <tvm/ffi/error.h>
#include <tvm/support/io.h>
namespace tvm {
namespace support {
namespace base64 {
inline const char* Alphabet() { return "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"; }
inline int Value(char c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '+') return 62;
  if (c == '/') return 63;
  return -1;
}
}  // namespace base64

class Base64OutStream : public Stream {
 public:
  using Stream::Read;
  using Stream::Write;
  explicit Base64OutStream(Stream* out) : out_(out) {}
  size_t Write(const void* ptr, size_t size) override {
    const auto* p = static_cast<const unsigned char*>(ptr);
    for (size_t i = 0; i < size; ++i) {
      buf_[n_++] = p[i];
      if (n_ == 3) Flush();
    }
    return size;
  }
  size_t Read(void*, size_t) override {
    TVM_FFI_THROW(InternalError) << "Base64OutStream is write-only";
    return 0;
  }
  /*! Write the last partial group (with '=' padding), then an optional end character. */
  void Finish(char endch = '\0') {
    if (n_ != 0) Flush();
    if (endch != '\0') out_->Write(&endch, 1);
  }

 private:
  void Flush() {
    const char* a = base64::Alphabet();
    uint32_t v = uint32_t(buf_[0]) << 16 | (n_ > 1 ? uint32_t(buf_[1]) << 8 : 0) | (n_ > 2 ? buf_[2] : 0);
    char out[4] = {a[v >> 18 & 63], a[v >> 12 & 63], n_ > 1 ? a[v >> 6 & 63] : '=', n_ > 2 ? a[v & 63] : '='};
    out_->Write(out, 4);
    n_ = 0;
  }
  Stream* out_;
  unsigned char buf_[3] = {0, 0, 0};
  int n_ = 0;
};

class Base64InStream : public Stream {
 public:
  using Stream::Read;
  using Stream::Write;
  explicit Base64InStream(Stream* in) : in_(in) {}
  void InitPosition() {}
  size_t Read(void* ptr, size_t size) override {
    auto* p = static_cast<unsigned char*>(ptr);
    size_t i = 0;
    while (i < size && (pos_ < len_ || Decode())) p[i++] = buf_[pos_++];
    return i;
  }
  size_t Write(const void*, size_t) override {
    TVM_FFI_THROW(InternalError) << "Base64InStream is read-only";
    return 0;
  }

 private:
  /*! Decode the next 4-character group into buf_; false at the end of the data. */
  bool Decode() {
    if (done_) return false;
    char q[4];
    int got = 0;
    char c;
    while (got < 4 && in_->Read(&c, 1) == 1) {
      if (std::isspace(static_cast<unsigned char>(c))) continue;
      if (c != '=' && base64::Value(c) < 0) break;
      q[got++] = c;
    }
    if (got < 4) {
      done_ = true;
      return false;
    }
    uint32_t v = 0;
    int pad = 0;
    for (char x : q) {
      pad += x == '=';
      v = v << 6 | uint32_t(x == '=' ? 0 : base64::Value(x));
    }
    buf_[0] = v >> 16 & 255;
    buf_[1] = v >> 8 & 255;
    buf_[2] = v & 255;
    len_ = 3 - pad;
    pos_ = 0;
    done_ = pad > 0;
    return len_ > 0;
  }
  Stream* in_;
  unsigned char buf_[3] = {0, 0, 0};
  size_t pos_ = 0, len_ = 0;
  bool done_ = false;
};
}  // namespace support
}  // namespace tvm
