// Names of element types.
#include "core/dtype.h"

#include "core/error.h"

namespace tally {

const char* dtype_name(DType t) {
  switch (t) {
    case DType::f32: return "f32";
    case DType::f64: return "f64";
    case DType::bf16: return "bf16";
    case DType::i32: return "i32";
    case DType::i64: return "i64";
    case DType::u16: return "u16";
    case DType::u8: return "u8";
  }
  return "?";
}

DType dtype_from_name(const std::string& name) {
  for (DType t : {DType::f32, DType::f64, DType::bf16, DType::i32, DType::i64, DType::u16, DType::u8})
    if (name == dtype_name(t)) return t;
  fail("unknown dtype '", name, "' (expected f32, f64, bf16, i32, i64, u16 or u8)");
}

}  // namespace tally
