// Matrix products: matmul (2-D and batched, broadcasting batch dims, transposed views passed to BLAS as
// transposed operands), linear (x W^T + b, the layer every transformer is made of) and linear_gelu (GPT-2's MLP
// input layer: the product, bias and GELU in one op).
#include "core/ops/common.h"

namespace tally {

using detail::check_floating;
using detail::check_pair;
using kernels::Trans;

namespace {

// How BLAS reads one operand: its matrix layout (possibly transposed) and the step between batch entries.
struct Operand {
  Tensor t;  // possibly a contiguous copy of the input
  Trans trans = Trans::no;
  int64_t ld = 0;
  int64_t batch_stride = 0;
};

// True when the batch dims [0, nb) of t can be walked with one stride (they are "flattenable").
bool uniform_batch(const Tensor& t, int nb, int64_t* stride) {
  if (nb == 0) {
    *stride = 0;
    return true;
  }
  for (int i = 0; i < nb - 1; ++i)
    if (t.shape()[i] != 1 && t.strides()[i] != t.strides()[i + 1] * t.shape()[i + 1]) return false;
  *stride = t.strides()[nb - 1];
  return true;
}

Operand operand(const Tensor& in, const Shape& batch) {
  int nb = in.dim() - 2;
  Tensor t = in;
  bool own_batch = nb > 0;
  if (own_batch) {
    Shape want = batch;
    want.push_back(in.shape()[in.dim() - 2]);
    want.push_back(in.shape()[in.dim() - 1]);
    if (in.shape() != want) t = in.expand(want).contiguous();  // broadcast batch dims materialised
  }
  Operand o;
  int64_t rows = t.shape()[t.dim() - 2], cols = t.shape()[t.dim() - 1];
  int64_t rs = t.strides()[t.dim() - 2], cs = t.strides()[t.dim() - 1];
  int64_t bstride = 0;
  bool batch_ok = !own_batch || uniform_batch(t, int(batch.size()), &bstride);
  if (batch_ok && (cs == 1 || cols == 1) && rs >= std::max<int64_t>(cols, 1)) {
    o.trans = Trans::no;
    o.ld = rs;
  } else if (batch_ok && (rs == 1 || rows == 1) && cs >= std::max<int64_t>(rows, 1)) {
    o.trans = Trans::yes;
    o.ld = cs;
  } else {
    t = t.contiguous();
    o.trans = Trans::no;
    o.ld = std::max<int64_t>(cols, 1);
    uniform_batch(t, own_batch ? int(batch.size()) : 0, &bstride);
  }
  o.t = t;
  o.batch_stride = own_batch ? bstride : 0;
  return o;
}

Tensor matmul_forward(const Tensor& a, const Tensor& b) {
  check_pair("matmul", "a", a, "b", b);
  check_floating("matmul", a);
  TALLY_CHECK(a.dim() >= 2 && b.dim() >= 2, "[matmul] needs operands of 2+ dims, got ", shape_str(a.shape()), " @ ",
              shape_str(b.shape()));
  int64_t M = a.size(-2), K = a.size(-1), N = b.size(-1);
  TALLY_CHECK(b.size(-2) == K, "[matmul] inner dimensions differ: ", shape_str(a.shape()), " @ ", shape_str(b.shape()));
  Shape ba(a.shape().begin(), a.shape().end() - 2), bb(b.shape().begin(), b.shape().end() - 2);
  Shape batch = broadcast_shapes(ba, bb, "matmul");
  Shape out_shape = batch;
  out_shape.push_back(M);
  out_shape.push_back(N);
  Tensor out = empty(out_shape, a.options());
  NoGradGuard no_grad;  // operand copies are internal
  Operand A = operand(a, batch), B = operand(b, batch);
  dispatch_float(a, "matmul", [&]<class T>() {
    kernels::GemmArgs<T> g;
    g.trans_a = A.trans;
    g.trans_b = B.trans;
    g.M = M;
    g.N = N;
    g.K = K;
    g.A = A.t.data<T>();
    g.lda = A.ld;
    g.batch_stride_a = A.batch_stride;
    g.B = B.t.data<T>();
    g.ldb = B.ld;
    g.batch_stride_b = B.batch_stride;
    g.C = out.data<T>();
    g.ldc = N;
    g.batch_stride_c = M * N;
    g.batch = numel(batch);
    TALLY_KERNEL(out.device(), gemm<T>, g);
  });
  return out;
}

}  // namespace

Tensor matmul(const Tensor& a, const Tensor& b) {
  Tensor out = matmul_forward(a, b);
  bool ga = a.requires_grad(), gb = b.requires_grad();
  Tensor sa = gb ? a.detach() : Tensor(), sb = ga ? b.detach() : Tensor();
  return record("matmul", out, {&a, &b}, [sa, sb, ga, gb, shape_a = a.shape(), shape_b = b.shape()](const Tensor& g) -> std::vector<Tensor> {
    Tensor da, db;
    int64_t K = shape_a.back(), N = shape_b.back();
    if (ga) da = sum_to(matmul(g, sb.transpose(-1, -2)), shape_a);  // dA = dC B^T
    if (gb) {
      // dB = A^T dC; a 2-D B shared by a batch gets the batch summed inside one product.
      if (shape_b.size() == 2 && g.dim() > 2)
        db = matmul(sa.reshape({-1, K}).transpose(0, 1), g.reshape({-1, N}));
      else
        db = sum_to(matmul(sa.transpose(-1, -2), g), shape_b);
    }
    return {da, db};
  });
}

namespace {

// linear and linear_gelu: y = act(x (N, IN) @ weight (OUT, IN)^T + bias (OUT)), with the product, the bias and the
// activation in one kernel call (linear_forward), and the bias gradient with the weight's (linear_weight_grad).
// linear_gelu keeps the pre-activation (N, OUT) for its backward; the input x is kept when the weight needs a
// gradient, the weight when x does.
Tensor linear_op(const char* op, const Tensor& x, const Tensor& weight, const Tensor& bias, kernels::Activation act) {
  check_pair(op, "x", x, "weight", weight);
  check_floating(op, x);
  TALLY_CHECK(weight.dim() == 2, "[", op, "] weight must be (OUT, IN), got ", shape_str(weight.shape()));
  const int64_t out_features = weight.size(0), in_features = weight.size(1);
  TALLY_CHECK(x.dim() >= 1 && x.size(-1) == in_features, "[", op, "] input ", shape_str(x.shape()), " does not end in IN=",
              in_features, " of weight ", shape_str(weight.shape()));
  if (bias.defined()) {
    check_pair(op, "x", x, "bias", bias);
    TALLY_CHECK(bias.dim() == 1 && bias.size(0) == out_features, "[", op, "] bias ", shape_str(bias.shape()),
                " does not match OUT=", out_features, " of weight ", shape_str(weight.shape()));
  }
  Tensor x2, w;
  {
    NoGradGuard no_grad;
    x2 = x.contiguous().detach().view({-1, in_features});  // (N, IN)
    w = weight.contiguous().detach();                       // (OUT, IN)
  }
  const int64_t N = x2.size(0);
  Shape out_shape = x.shape();
  out_shape.back() = out_features;
  const bool gelu = act == kernels::Activation::gelu;
  Tensor pre = gelu ? empty(out_shape, x.options()) : Tensor();  // (..., OUT): x w^T + b, before the GELU
  Tensor out = empty(out_shape, x.options());
  Tensor b = bias.defined() ? bias.contiguous().detach() : Tensor();
  dispatch_float(x, op, [&]<class T>() {
    TALLY_KERNEL(out.device(), linear_forward<T>, x2.data<T>(), w.data<T>(), b.defined() ? b.data<T>() : nullptr,
                 out.data<T>(), gelu ? pre.data<T>() : nullptr, act, N, in_features, out_features);
  });
  const bool need_dx = x.requires_grad(), need_dw = weight.requires_grad(), need_db = bias.defined() && bias.requires_grad();
  Tensor saved_x = need_dw ? x2 : Tensor(), saved_w = need_dx ? w : Tensor();
  return record(op, out, {&x, &weight, &bias},
                [op, saved_x, saved_w, pre, need_dx, need_dw, need_db, x_shape = x.shape(), N, in_features,
                 out_features](const Tensor& g_in) -> std::vector<Tensor> {
                  Tensor dy = g_in.contiguous();  // (N, OUT) in memory: the output's gradient
                  Tensor dx, dw, db;
                  dispatch_float(dy, op, [&]<class T>() {
                    if (pre.defined()) {  // through the GELU: dy = dout * gelu'(pre)
                      Tensor dpre = empty(pre.shape(), dy.options());
                      TALLY_KERNEL(dpre.device(), gelu_backward<T>, pre.data<T>(), dy.data<T>(), dpre.data<T>(),
                                   pre.numel());
                      dy = dpre;
                    }
                    if (need_dx) {  // dx (N, IN) = dy (N, OUT) @ w (OUT, IN)
                      dx = empty(x_shape, dy.options());
                      kernels::GemmArgs<T> g;
                      g.M = N;
                      g.N = in_features;
                      g.K = out_features;
                      g.A = dy.data<T>();
                      g.lda = out_features;
                      g.B = saved_w.data<T>();
                      g.ldb = in_features;
                      g.C = dx.data<T>();
                      g.ldc = in_features;
                      TALLY_KERNEL(dx.device(), gemm<T>, g);
                    }
                    if (need_db) db = empty({out_features}, dy.options());
                    if (need_db || need_dw) {
                      Tensor ws = need_db ? detail::kernel_workspace(
                                                dy,
                                                detail::cuda_only(
                                                    dy, kernels::cuda_sum_dim_workspace_bytes(1, N, out_features)),
                                                "bias_backward")
                                          : Tensor();
                      if (need_dw) {  // dw (OUT, IN) = dy^T (OUT, N) @ x (N, IN), and db (OUT) = column sums of dy
                        dw = empty({out_features, in_features}, dy.options());
                        TALLY_KERNEL(dw.device(), linear_weight_grad<T>, dy.data<T>(), saved_x.data<T>(), dw.data<T>(),
                                     need_db ? db.data<T>() : nullptr, detail::data_or_null(ws), N, in_features,
                                     out_features);
                      } else {
                        TALLY_KERNEL(db.device(), bias_backward<T>, dy.data<T>(), db.data<T>(), detail::data_or_null(ws),
                                     N, out_features);
                      }
                    }
                  });
                  return {dx, dw, db};
                });
}

}  // namespace

Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias) {
  return linear_op("linear", x, weight, bias, kernels::Activation::none);
}

Tensor linear_gelu(const Tensor& x, const Tensor& weight, const Tensor& bias) {
  return linear_op("linear_gelu", x, weight, bias, kernels::Activation::gelu);
}

}  // namespace tally
