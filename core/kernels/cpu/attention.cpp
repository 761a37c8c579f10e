// CPU kernels: fused scaled-dot-product attention, one (batch, head) pair per thread, products through BLAS.
// Forward keeps only the log-sum-exp of each query row; backward recomputes the probabilities from it
// (scores and their gradient live in per-thread workspace of 2 * Tq * Tk elements).
#include <omp.h>

#include <algorithm>
#include <cmath>

#include "core/kernels/kernels.h"

namespace tally::kernels::cpu {

namespace {

// Last key index query row i may see (inclusive).
inline int64_t last_key(const AttentionLayout& l, int64_t i) { return l.causal ? i + (l.Tk - l.Tq) : l.Tk - 1; }

template <class T>
void mm(Trans ta, Trans tb, int64_t M, int64_t N, int64_t K, double alpha, const T* A, int64_t lda, const T* B, int64_t ldb,
        double beta, T* C, int64_t ldc) {
  GemmArgs<T> g;
  g.trans_a = ta;
  g.trans_b = tb;
  g.M = M;
  g.N = N;
  g.K = K;
  g.A = A;
  g.lda = lda;
  g.B = B;
  g.ldb = ldb;
  g.C = C;
  g.ldc = ldc;
  g.alpha = alpha;
  g.beta = beta;
  gemm(g);
}

template <class T>
const T* at(const T* base, const int64_t* strides, int64_t b, int64_t h) {
  return base + b * strides[0] + h * strides[1];
}
template <class T>
T* at(T* base, const int64_t* strides, int64_t b, int64_t h) {
  return base + b * strides[0] + h * strides[1];
}

}  // namespace

int64_t attention_workspace_size(const AttentionLayout& l) { return int64_t(omp_get_max_threads()) * 2 * l.Tq * l.Tk; }

template <class T>
void attention_forward(const T* q, const T* k, const T* v, T* out, acc_t<T>* lse, acc_t<T>* workspace,
                       const AttentionLayout& l) {
  const int64_t pairs = l.B * l.NH;
#pragma omp parallel for schedule(dynamic)
  for (int64_t p = 0; p < pairs; ++p) {
    int64_t b = p / l.NH, h = p % l.NH;
    T* S = workspace + int64_t(omp_get_thread_num()) * 2 * l.Tq * l.Tk;  // (Tq, Tk)
    const T* Q = at(q, l.q_strides, b, h);
    const T* K = at(k, l.k_strides, b, h);
    const T* Vp = at(v, l.v_strides, b, h);
    T* O = at(out, l.out_strides, b, h);
    T* L = lse + p * l.Tq;
    mm(Trans::no, Trans::yes, l.Tq, l.Tk, l.HS, l.scale, Q, l.q_strides[2], K, l.k_strides[2], 0.0, S, l.Tk);
    for (int64_t i = 0; i < l.Tq; ++i) {
      T* row = S + i * l.Tk;
      int64_t last = last_key(l, i);
      T mx = -INFINITY;
      for (int64_t j = 0; j <= last; ++j) mx = std::max(mx, row[j]);
      T sum = 0;
      for (int64_t j = 0; j <= last; ++j) {
        row[j] = std::exp(row[j] - mx);
        sum += row[j];
      }
      T inv = T(1) / sum;
      for (int64_t j = 0; j <= last; ++j) row[j] *= inv;
      for (int64_t j = last + 1; j < l.Tk; ++j) row[j] = 0;
      L[i] = mx + std::log(sum);
    }
    mm(Trans::no, Trans::no, l.Tq, l.HS, l.Tk, 1.0, S, l.Tk, Vp, l.v_strides[2], 0.0, O, l.out_strides[2]);
  }
}

template <class T>
void attention_backward(const T* q, const T* k, const T* v, const T* out, const acc_t<T>* lse, const T* dout, T* dq, T* dk,
                        T* dv, acc_t<T>* workspace, const AttentionLayout& l, const AttentionLayout& g) {
  const int64_t pairs = l.B * l.NH;
#pragma omp parallel for schedule(dynamic)
  for (int64_t p = 0; p < pairs; ++p) {
    int64_t b = p / l.NH, h = p % l.NH;
    T* P = workspace + int64_t(omp_get_thread_num()) * 2 * l.Tq * l.Tk;  // (Tq, Tk), then dS in place
    T* dP = P + l.Tq * l.Tk;                                               // (Tq, Tk)
    const T* Q = at(q, l.q_strides, b, h);
    const T* K = at(k, l.k_strides, b, h);
    const T* Vp = at(v, l.v_strides, b, h);
    const T* dO = at(dout, g.out_strides, b, h);
    T* dQ = at(dq, g.q_strides, b, h);
    T* dK = at(dk, g.k_strides, b, h);
    T* dV = at(dv, g.v_strides, b, h);
    const T* L = lse + p * l.Tq;
    // P = exp(scale * Q K^T - lse), zero beyond the causal limit.
    mm(Trans::no, Trans::yes, l.Tq, l.Tk, l.HS, l.scale, Q, l.q_strides[2], K, l.k_strides[2], 0.0, P, l.Tk);
    for (int64_t i = 0; i < l.Tq; ++i) {
      T* row = P + i * l.Tk;
      int64_t last = last_key(l, i);
      for (int64_t j = 0; j <= last; ++j) row[j] = std::exp(row[j] - L[i]);
      for (int64_t j = last + 1; j < l.Tk; ++j) row[j] = 0;
    }
    // dV = P^T dO;  dP = dO V^T
    mm(Trans::yes, Trans::no, l.Tk, l.HS, l.Tq, 1.0, P, l.Tk, dO, g.out_strides[2], 0.0, dV, g.v_strides[2]);
    mm(Trans::no, Trans::yes, l.Tq, l.Tk, l.HS, 1.0, dO, g.out_strides[2], Vp, l.v_strides[2], 0.0, dP, l.Tk);
    // dS = P * (dP - rowsum(P * dP))   (written over P). rowsum(P * dP) equals rowsum(O * dO) in exact arithmetic;
    // from P and dP, a row with one visible key gets dS = 0 exactly, as its gradient is.
    for (int64_t i = 0; i < l.Tq; ++i) {
      T* row = P + i * l.Tk;
      const T* dprow = dP + i * l.Tk;
      T D = 0;
      for (int64_t j = 0; j < l.Tk; ++j) D += row[j] * dprow[j];
      for (int64_t j = 0; j < l.Tk; ++j) row[j] = row[j] * (dprow[j] - D);
    }
    // dQ = scale * dS K;  dK = scale * dS^T Q
    mm(Trans::no, Trans::no, l.Tq, l.HS, l.Tk, l.scale, P, l.Tk, K, l.k_strides[2], 0.0, dQ, g.q_strides[2]);
    mm(Trans::yes, Trans::no, l.Tk, l.HS, l.Tq, l.scale, P, l.Tk, Q, l.q_strides[2], 0.0, dK, g.k_strides[2]);
  }
}

#define TALLY_INSTANTIATE(T)                                                                                        \
  template void attention_forward<T>(const T*, const T*, const T*, T*, T*, T*, const AttentionLayout&);             \
  template void attention_backward<T>(const T*, const T*, const T*, const T*, const T*, const T*, T*, T*, T*, T*,   \
                                      const AttentionLayout&, const AttentionLayout&);
TALLY_INSTANTIATE(float)
TALLY_INSTANTIATE(double)
#undef TALLY_INSTANTIATE

}  // namespace tally::kernels::cpu
