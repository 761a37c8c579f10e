// CPU kernels: embedding gather and its deterministic scatter-add backward (threads own channel slices).
#include <algorithm>
#include <cstring>

#include "core/kernels/kernels.h"

namespace tally::kernels::cpu {

template <class T>
void embedding_forward(const int32_t* indices, const T* weight, T* out, int64_t N, int64_t C) {
#pragma omp parallel for if (N * C > (1 << 15))
  for (int64_t i = 0; i < N; ++i) std::memcpy(out + i * C, weight + int64_t(indices[i]) * C, size_t(C) * sizeof(T));
}

template <class T>
void embedding_backward(const int32_t* indices, const T* dout, T* dweight, void* /*workspace: none needed*/, int64_t N,
                        int64_t V, int64_t C) {
  std::memset(dweight, 0, size_t(V * C) * sizeof(T));
  constexpr int64_t kBlock = 64;
  int64_t blocks = (C + kBlock - 1) / kBlock;
#pragma omp parallel for if (N * C > (1 << 15))
  for (int64_t bl = 0; bl < blocks; ++bl) {
    int64_t c0 = bl * kBlock, c1 = std::min(C, c0 + kBlock);
    for (int64_t i = 0; i < N; ++i) {
      T* dst = dweight + int64_t(indices[i]) * C;
      const T* src = dout + i * C;
#pragma omp simd
      for (int64_t c = c0; c < c1; ++c) dst[c] += src[c];
    }
  }
}

#define TALLY_INSTANTIATE(T)                                                                  \
  template void embedding_forward<T>(const int32_t*, const T*, T*, int64_t, int64_t);         \
  template void embedding_backward<T>(const int32_t*, const T*, T*, void*, int64_t, int64_t, int64_t);
TALLY_INSTANTIATE(float)
TALLY_INSTANTIATE(double)
#undef TALLY_INSTANTIATE

}  // namespace tally::kernels::cpu
