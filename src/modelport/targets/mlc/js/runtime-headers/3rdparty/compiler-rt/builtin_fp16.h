// modelport: compiler-rt's generic IEEE-754 narrowing/widening templates, with the signature TVM's
// runtime (builtin_fp16.cc, sort.cc) instantiates: <src type, src bits type, src mantissa bits,
// dst type, dst bits type, dst mantissa bits>. Round to nearest even; NaN stays NaN.
#pragma once
#include <cstdint>
#include <cstring>

namespace modelport_fp {
template <typename REP, int SIG>
struct Layout {
  static constexpr int kBits = sizeof(REP) * 8;
  static constexpr int kExpBits = kBits - SIG - 1;
  static constexpr int64_t kExpMax = (int64_t(1) << kExpBits) - 1;
  static constexpr int64_t kBias = kExpMax >> 1;
};
template <typename T, typename REP>
inline REP Bits(T v) {
  REP r;
  std::memcpy(&r, &v, sizeof(r));
  return r;
}
template <typename T, typename REP>
inline T FromBits(uint64_t v) {
  REP r = REP(v);
  T t;
  std::memcpy(&t, &r, sizeof(t));
  return t;
}
}  // namespace modelport_fp

template <typename SRC_T, typename SRC_REP_T, int SRC_SIG_BITS, typename DST_T, typename DST_REP_T,
          int DST_SIG_BITS>
static inline DST_T __truncXfYf2__(SRC_T a) {
  using S = modelport_fp::Layout<SRC_REP_T, SRC_SIG_BITS>;
  using D = modelport_fp::Layout<DST_REP_T, DST_SIG_BITS>;
  uint64_t r = uint64_t(modelport_fp::Bits<SRC_T, SRC_REP_T>(a));
  uint64_t sign = (r >> (S::kBits - 1)) & 1;
  int64_t exp = int64_t((r >> SRC_SIG_BITS) & uint64_t(S::kExpMax));
  uint64_t man = r & ((uint64_t(1) << SRC_SIG_BITS) - 1);
  uint64_t out;
  if (exp == S::kExpMax) {  // inf or NaN (keep a quiet-NaN bit)
    out = uint64_t(D::kExpMax) << DST_SIG_BITS | (man ? uint64_t(1) << (DST_SIG_BITS - 1) : 0);
  } else if (exp == 0) {  // zero or a source subnormal: below any narrower format's range
    out = 0;
  } else {
    int64_t dexp = exp - S::kBias + D::kBias;
    int shift = SRC_SIG_BITS - DST_SIG_BITS;
    uint64_t full = man | uint64_t(1) << SRC_SIG_BITS;
    if (dexp >= D::kExpMax) {
      out = uint64_t(D::kExpMax) << DST_SIG_BITS;  // overflow: inf
    } else {
      if (dexp <= 0) {  // destination subnormal: shift the implicit bit in
        shift += int(1 - dexp);
        dexp = 0;
      }
      if (shift > 63) {
        out = 0;
      } else {
        uint64_t kept = full >> shift, rest = full & ((uint64_t(1) << shift) - 1);
        uint64_t half = uint64_t(1) << (shift - 1);
        if (dexp > 0) kept &= (uint64_t(1) << DST_SIG_BITS) - 1;
        out = uint64_t(dexp) << DST_SIG_BITS | kept;
        if (rest > half || (rest == half && (out & 1))) out += 1;  // a carry into the exponent is correct
      }
    }
  }
  return modelport_fp::FromBits<DST_T, DST_REP_T>(out | sign << (D::kBits - 1));
}

template <typename SRC_T, typename SRC_REP_T, int SRC_SIG_BITS, typename DST_T, typename DST_REP_T,
          int DST_SIG_BITS>
static inline DST_T __extendXfYf2__(SRC_T a) {
  using S = modelport_fp::Layout<SRC_REP_T, SRC_SIG_BITS>;
  using D = modelport_fp::Layout<DST_REP_T, DST_SIG_BITS>;
  constexpr int shift = DST_SIG_BITS - SRC_SIG_BITS;
  uint64_t r = uint64_t(modelport_fp::Bits<SRC_T, SRC_REP_T>(a));
  uint64_t sign = (r >> (S::kBits - 1)) & 1;
  int64_t exp = int64_t((r >> SRC_SIG_BITS) & uint64_t(S::kExpMax));
  uint64_t man = r & ((uint64_t(1) << SRC_SIG_BITS) - 1);
  uint64_t out;
  if (exp == S::kExpMax) {
    out = uint64_t(D::kExpMax) << DST_SIG_BITS | man << shift;
  } else if (exp == 0 && man == 0) {
    out = 0;
  } else if (exp == 0) {  // source subnormal: normal in the wider format
    int64_t dexp = 1 - S::kBias + D::kBias;
    while (!(man & uint64_t(1) << SRC_SIG_BITS)) {
      man <<= 1;
      --dexp;
    }
    out = uint64_t(dexp) << DST_SIG_BITS | (man & ((uint64_t(1) << SRC_SIG_BITS) - 1)) << shift;
  } else {
    out = uint64_t(exp - S::kBias + D::kBias) << DST_SIG_BITS | man << shift;
  }
  return modelport_fp::FromBits<DST_T, DST_REP_T>(out | sign << (D::kBits - 1));
}
