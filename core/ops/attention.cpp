// Attention ops: scaled_dot_product_attention on (B, NH, T, HS) tensors, and GPT-2's causal_self_attention
// reading q, k, v straight out of the fused (B, T, 3C) projection. Both use the fused kernels, which keep
// only the per-query log-sum-exp and recompute probabilities in backward.
#include <cmath>

#include "core/ops/common.h"

namespace tally {

using detail::check_floating;
using detail::check_pair;
using detail::saved;

namespace {

void set_strides(int64_t* dst, int64_t b, int64_t h, int64_t t) {
  dst[0] = b;
  dst[1] = h;
  dst[2] = t;
}

// Scratch elements the backend needs; a meta device plans as the backend it plans for, and bf16 as CUDA spends it
// (bf16 computes on CUDA only), so that every plan equals the measured bytes.
int64_t workspace_elements(Device d, DType t, const kernels::AttentionLayout& l) {
  if (d.is_meta()) {
    if (t == DType::bf16 || d.backend() == DeviceKind::cuda) return kernels::cuda_attention_workspace_elements(l);
    d = Device::cpu();
  }
  return TALLY_KERNEL(d, attention_workspace_size, l);
}

// Runs the backward kernel given the gradient buffers' layout; allocates its workspace.
template <class T>
void attention_backward_call(const kernels::AttentionLayout& l, const kernels::AttentionLayout& gl, const Tensor& q,
                             const Tensor& k, const Tensor& v, const Tensor& out, const Tensor& lse, const Tensor& dout,
                             T* dq, T* dk, T* dv) {
  Tensor ws;
  {
    MemoryScope scope(Category::workspace, "attention");
    ws = empty({workspace_elements(q.device(), q.dtype(), l)}, detail::acc_options(q));
  }
  using A = kernels::acc_t<T>;
  TALLY_KERNEL(q.device(), attention_backward<T>, q.data<T>(), k.data<T>(), v.data<T>(), out.data<T>(), lse.data<A>(),
               dout.data<T>(), dq, dk, dv, ws.data<A>(), l, gl);
}

template <class T>
void attention_forward_call(const kernels::AttentionLayout& l, const Tensor& q, const Tensor& k, const Tensor& v,
                            Tensor& out, Tensor& lse) {
  Tensor ws;
  {
    MemoryScope scope(Category::workspace, "attention");
    ws = empty({workspace_elements(q.device(), q.dtype(), l)}, detail::acc_options(q));  // scores in f32 for bf16 operands
  }
  using A = kernels::acc_t<T>;
  TALLY_KERNEL(q.device(), attention_forward<T>, q.data<T>(), k.data<T>(), v.data<T>(), out.data<T>(), lse.data<A>(),
               ws.data<A>(), l);
}

}  // namespace

Tensor scaled_dot_product_attention(const Tensor& q_in, const Tensor& k_in, const Tensor& v_in, Causal causal) {
  const char* op = "scaled_dot_product_attention";
  check_floating(op, q_in);
  check_pair(op, "q", q_in, "k", k_in);
  check_pair(op, "q", q_in, "v", v_in);
  TALLY_CHECK(q_in.dim() == 4 && k_in.dim() == 4 && v_in.dim() == 4, "[", op, "] q, k, v must be (B, NH, T, HS), got ",
              shape_str(q_in.shape()), ", ", shape_str(k_in.shape()), ", ", shape_str(v_in.shape()));
  int64_t B = q_in.size(0), NH = q_in.size(1), Tq = q_in.size(2), HS = q_in.size(3), Tk = k_in.size(2);
  TALLY_CHECK(k_in.shape() == v_in.shape() && k_in.size(0) == B && k_in.size(1) == NH && k_in.size(3) == HS, "[", op,
              "] q ", shape_str(q_in.shape()), " does not match k ", shape_str(k_in.shape()), " and v ",
              shape_str(v_in.shape()));
  TALLY_CHECK(Tq > 0 && Tk > 0, "[", op, "] empty sequence: q ", shape_str(q_in.shape()), ", k ",
              shape_str(k_in.shape()));
  TALLY_CHECK(causal == Causal::no || Tq <= Tk, "[", op,
              "] causal attention needs Tq <= Tk (the queries are the last Tq "
              "positions), got q ",
              shape_str(q_in.shape()), ", k ", shape_str(k_in.shape()));
  auto last_contiguous = [](const Tensor& t) { return t.stride(3) == 1 ? t : t.contiguous(); };
  Tensor q = last_contiguous(q_in), k = last_contiguous(k_in), v = last_contiguous(v_in);
  kernels::AttentionLayout l;
  l.B = B;
  l.NH = NH;
  l.Tq = Tq;
  l.Tk = Tk;
  l.HS = HS;
  set_strides(l.q_strides, q.stride(0), q.stride(1), q.stride(2));
  set_strides(l.k_strides, k.stride(0), k.stride(1), k.stride(2));
  set_strides(l.v_strides, v.stride(0), v.stride(1), v.stride(2));
  set_strides(l.out_strides, NH * Tq * HS, Tq * HS, HS);
  l.causal = causal == Causal::yes;
  l.scale = 1.0 / std::sqrt(double(HS));
  Tensor out = empty({B, NH, Tq, HS}, q.options());
  Tensor lse = empty({B, NH, Tq}, detail::acc_options(q));
  dispatch_float(q, op, [&]<class T>() { attention_forward_call<T>(l, q, k, v, out, lse); });
  Tensor sq = q.detach(), sk = k.detach(), sv = v.detach(), so = saved(out);
  return record(op, out, {&q, &k, &v}, [sq, sk, sv, so, lse, l](const Tensor& g_in) -> std::vector<Tensor> {
    Tensor g = g_in.contiguous();
    Tensor dq = empty(sq.shape(), sq.options()), dk = empty(sk.shape(), sk.options()), dv = empty(sv.shape(), sv.options());
    kernels::AttentionLayout gl = l;
    set_strides(gl.q_strides, l.NH * l.Tq * l.HS, l.Tq * l.HS, l.HS);
    set_strides(gl.k_strides, l.NH * l.Tk * l.HS, l.Tk * l.HS, l.HS);
    set_strides(gl.v_strides, l.NH * l.Tk * l.HS, l.Tk * l.HS, l.HS);
    set_strides(gl.out_strides, l.NH * l.Tq * l.HS, l.Tq * l.HS, l.HS);
    dispatch_float(sq, "scaled_dot_product_attention_backward", [&]<class T>() {
      attention_backward_call<T>(l, gl, sq, sk, sv, so, lse, g, dq.data<T>(), dk.data<T>(), dv.data<T>());
    });
    return {dq, dk, dv};
  });
}

Tensor causal_self_attention(const Tensor& qkv_in, int64_t n_head) {
  const char* op = "causal_self_attention";
  check_floating(op, qkv_in);
  TALLY_CHECK(qkv_in.dim() == 3 && qkv_in.size(2) % 3 == 0, "[", op, "] qkv must be (B, T, 3C), got ",
              shape_str(qkv_in.shape()));
  int64_t B = qkv_in.size(0), S = qkv_in.size(1), C = qkv_in.size(2) / 3;  // S: sequence length (T)
  TALLY_CHECK(n_head > 0 && C % n_head == 0, "[", op, "] C=", C, " is not divisible by ", n_head, " heads (qkv ",
              shape_str(qkv_in.shape()), ")");
  TALLY_CHECK(S > 0, "[", op, "] empty sequence in qkv ", shape_str(qkv_in.shape()));
  Tensor qkv = qkv_in.contiguous();
  int64_t NH = n_head, HS = C / n_head;
  kernels::AttentionLayout l;
  l.B = B;
  l.NH = NH;
  l.Tq = S;
  l.Tk = S;
  l.HS = HS;
  // q, k, v are the three C-wide column blocks of qkv; head h is columns [h*HS, (h+1)*HS) of its block.
  set_strides(l.q_strides, S * 3 * C, HS, 3 * C);
  set_strides(l.k_strides, S * 3 * C, HS, 3 * C);
  set_strides(l.v_strides, S * 3 * C, HS, 3 * C);
  set_strides(l.out_strides, S * C, HS, C);  // out (B, T, C) = (B, T, NH, HS)
  l.causal = true;
  l.scale = 1.0 / std::sqrt(double(HS));
  Tensor out = empty({B, S, C}, qkv.options());
  Tensor lse = empty({B, NH, S}, detail::acc_options(qkv));
  Tensor q = qkv.detach(), k = make_view(qkv, {qkv.numel() - C}, {1}, qkv.offset() + C),
         v = make_view(qkv, {qkv.numel() - 2 * C}, {1}, qkv.offset() + 2 * C);
  dispatch_float(qkv, op, [&]<class T>() { attention_forward_call<T>(l, q, k, v, out, lse); });
  Tensor so = saved(out);
  return record(op, out, {&qkv}, [q, k, v, so, lse, l, B, S, C](const Tensor& g_in) -> std::vector<Tensor> {
    Tensor g = g_in.contiguous();  // (B, T, C)
    Tensor dqkv = empty({B, S, 3 * C}, g.options());
    dispatch_float(g, "causal_self_attention_backward", [&]<class T>() {
      T* base = dqkv.data<T>();
      attention_backward_call<T>(l, l, q, k, v, so, lse, g, base, base ? base + C : nullptr, base ? base + 2 * C : nullptr);
    });
    return {dqkv};
  });
}

}  // namespace tally
