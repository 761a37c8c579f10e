// CPU kernels: fused cross-entropy (log-sum-exp per row; probabilities never stored) and its backward.
#include <algorithm>
#include <cmath>

#include "core/kernels/cpu/vec_math.h"
#include "core/kernels/kernels.h"

namespace tally::kernels::cpu {

template <class T>
void cross_entropy_forward(const T* logits, int64_t ld, const int32_t* targets, acc_t<T>* losses, acc_t<T>* lse, int64_t N,
                           int64_t V) {
#pragma omp parallel for if (N * V > (1 << 15))
  for (int64_t r = 0; r < N; ++r) {
    const T* x = logits + r * ld;
    T mx = -INFINITY;
#pragma omp simd reduction(max : mx)
    for (int64_t c = 0; c < V; ++c) mx = std::max(mx, x[c]);
    T sum = 0;
#pragma omp simd reduction(+ : sum)
    for (int64_t c = 0; c < V; ++c) sum += exp_fast(x[c] - mx);
    T l = mx + std::log(sum);
    lse[r] = l;
    losses[r] = l - x[targets[r]];
  }
}

template <class T>
void cross_entropy_backward(const T* logits, int64_t ld, const int32_t* targets, const acc_t<T>* lse,
                            const acc_t<T>* dloss, T* dlogits, int64_t ld_grad, int64_t N, int64_t V,
                            int64_t mean_count) {
  const T s = T((dloss ? double(*dloss) : 1.0) / double(mean_count));
#pragma omp parallel for if (N * V > (1 << 15))
  for (int64_t r = 0; r < N; ++r) {
    const T* x = logits + r * ld;
    T* d = dlogits + r * ld_grad;
    T l = lse[r];
#pragma omp simd  // in place (d == x) too: each element is read, then written
    for (int64_t c = 0; c < V; ++c) d[c] = s * exp_fast(x[c] - l);
    for (int64_t c = V; c < ld_grad; ++c) d[c] = T(0);
    d[targets[r]] -= s;
  }
}

#define TALLY_INSTANTIATE(T)                                                                                     \
  template void cross_entropy_forward<T>(const T*, int64_t, const int32_t*, T*, T*, int64_t, int64_t);           \
  template void cross_entropy_backward<T>(const T*, int64_t, const int32_t*, const T*, const T*, T*, int64_t,     \
                                          int64_t, int64_t, int64_t);
TALLY_INSTANTIATE(float)
TALLY_INSTANTIATE(double)
#undef TALLY_INSTANTIATE

}  // namespace tally::kernels::cpu
