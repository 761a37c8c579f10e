// Elementwise ops with broadcasting, scalar forms and unary functions: forward and backward side by side.
#include "core/ops/common.h"

namespace tally {

using detail::check_floating;
using detail::check_pair;
using detail::saved;
using kernels::BinaryOp;
using kernels::UnaryOp;

namespace {

Tensor binary_forward(BinaryOp op, const char* name, const Tensor& a, const Tensor& b) {
  check_pair(name, "a", a, "b", b);
  check_floating(name, a);
  Shape shape = broadcast_shapes(a.shape(), b.shape(), name);
  TALLY_CHECK(int(shape.size()) <= kernels::kMaxDims, "[", name, "] ", shape_str(a.shape()), " and ",
              shape_str(b.shape()), " broadcast to ", shape_str(shape), ": more than ", kernels::kMaxDims, " dims");
  Tensor out = empty(shape, a.options());
  kernels::BroadcastLayout l;
  l.ndim = int(shape.size());
  for (int i = 0; i < l.ndim; ++i) {
    l.shape[i] = shape[i];
    int ia = i - (l.ndim - a.dim()), ib = i - (l.ndim - b.dim());
    l.a_stride[i] = (ia < 0 || a.shape()[ia] == 1) ? 0 : a.strides()[ia];
    l.b_stride[i] = (ib < 0 || b.shape()[ib] == 1) ? 0 : b.strides()[ib];
  }
  dispatch_float(a, name, [&]<class T>() {
    TALLY_KERNEL(out.device(), binary<T>, op, a.data<T>(), b.data<T>(), out.data<T>(), l);
  });
  return out;
}

Tensor unary_forward(UnaryOp op, const char* name, const Tensor& a_in, double scalar = 0.0) {
  check_floating(name, a_in);
  Tensor a = a_in.contiguous();
  Tensor out = empty(a.shape(), a.options());
  dispatch_float(a, name, [&]<class T>() {
    TALLY_KERNEL(out.device(), unary<T>, op, a.data<T>(), out.data<T>(), a.numel(), scalar);
  });
  return out;
}

}  // namespace

// ---- binary ----

Tensor add(const Tensor& a, const Tensor& b) {
  Tensor out = binary_forward(BinaryOp::add, "add", a, b);
  return record("add", out, {&a, &b}, [sa = a.shape(), sb = b.shape()](const Tensor& g) -> std::vector<Tensor> {
    return {sum_to(g, sa), sum_to(g, sb)};
  });
}

Tensor sub(const Tensor& a, const Tensor& b) {
  Tensor out = binary_forward(BinaryOp::sub, "sub", a, b);
  return record("sub", out, {&a, &b}, [sa = a.shape(), sb = b.shape()](const Tensor& g) -> std::vector<Tensor> {
    return {sum_to(g, sa), sum_to(neg(g), sb)};
  });
}

Tensor mul(const Tensor& a, const Tensor& b) {
  Tensor out = binary_forward(BinaryOp::mul, "mul", a, b);
  bool ga = a.requires_grad(), gb = b.requires_grad();
  Tensor sa = gb ? a.detach() : Tensor(), sb = ga ? b.detach() : Tensor();  // each gradient needs the other operand
  return record("mul", out, {&a, &b}, [sa, sb, ga, gb, shape_a = a.shape(), shape_b = b.shape()](const Tensor& g) -> std::vector<Tensor> {
    return {ga ? sum_to(g * sb, shape_a) : Tensor(), gb ? sum_to(g * sa, shape_b) : Tensor()};
  });
}

Tensor div(const Tensor& a, const Tensor& b) {
  Tensor out = binary_forward(BinaryOp::div, "div", a, b);
  const bool ga = a.requires_grad(), gb = b.requires_grad();
  Tensor sb = b.detach(), so = gb ? saved(out) : Tensor();  // the quotient only for b's gradient
  return record("div", out, {&a, &b},
                [sb, so, ga, gb, shape_a = a.shape(), shape_b = b.shape()](const Tensor& g) -> std::vector<Tensor> {
                  Tensor q = g / sb;
                  return {ga ? sum_to(q, shape_a) : Tensor(),
                          gb ? sum_to(neg(q * so), shape_b) : Tensor()};  // d(a/b)/db = -(a/b)/b
                });
}

// ---- scalar forms ----

Tensor neg(const Tensor& a) {
  Tensor out = unary_forward(UnaryOp::neg, "neg", a);
  return record("neg", out, {&a}, [](const Tensor& g) -> std::vector<Tensor> { return {neg(g)}; });
}

Tensor add_scalar(const Tensor& a, double s) {
  Tensor out = unary_forward(UnaryOp::add_scalar, "add_scalar", a, s);
  return record("add_scalar", out, {&a}, [](const Tensor& g) -> std::vector<Tensor> { return {g}; });
}

Tensor mul_scalar(const Tensor& a, double s) {
  Tensor out = unary_forward(UnaryOp::mul_scalar, "mul_scalar", a, s);
  return record("mul_scalar", out, {&a}, [s](const Tensor& g) -> std::vector<Tensor> { return {mul_scalar(g, s)}; });
}

Tensor rsub_scalar(const Tensor& a, double s) {
  Tensor out = unary_forward(UnaryOp::rsub_scalar, "rsub_scalar", a, s);
  return record("rsub_scalar", out, {&a}, [](const Tensor& g) -> std::vector<Tensor> { return {neg(g)}; });
}

Tensor rdiv_scalar(const Tensor& a, double s) {
  Tensor out = unary_forward(UnaryOp::rdiv_scalar, "rdiv_scalar", a, s);
  Tensor sa = a.detach(), so = saved(out);
  return record("rdiv_scalar", out, {&a}, [sa, so](const Tensor& g) -> std::vector<Tensor> {
    return {neg(g * so / sa)};  // d(s/a)/da = -(s/a)/a
  });
}

Tensor pow_scalar(const Tensor& a, double e) {
  Tensor out = unary_forward(UnaryOp::pow_scalar, "pow_scalar", a, e);
  Tensor sa = a.detach();
  return record("pow_scalar", out, {&a}, [sa, e](const Tensor& g) -> std::vector<Tensor> {
    return {g * pow_scalar(sa, e - 1.0) * e};
  });
}

// ---- unary functions ----

Tensor exp(const Tensor& a) {
  Tensor out = unary_forward(UnaryOp::exp, "exp", a);
  Tensor so = saved(out);
  return record("exp", out, {&a}, [so](const Tensor& g) -> std::vector<Tensor> { return {g * so}; });
}

Tensor log(const Tensor& a) {
  Tensor out = unary_forward(UnaryOp::log, "log", a);
  Tensor sa = a.detach();
  return record("log", out, {&a}, [sa](const Tensor& g) -> std::vector<Tensor> { return {g / sa}; });
}

Tensor sqrt(const Tensor& a) {
  Tensor out = unary_forward(UnaryOp::sqrt, "sqrt", a);
  Tensor so = saved(out);
  return record("sqrt", out, {&a}, [so](const Tensor& g) -> std::vector<Tensor> { return {g * 0.5 / so}; });
}

Tensor rsqrt(const Tensor& a) {
  Tensor out = unary_forward(UnaryOp::rsqrt, "rsqrt", a);
  Tensor so = saved(out);
  return record("rsqrt", out, {&a}, [so](const Tensor& g) -> std::vector<Tensor> {
    return {g * so * so * so * -0.5};  // d(a^-1/2)/da = -1/2 a^-3/2 = -1/2 out^3 (g first: out^3 alone may overflow)
  });
}

Tensor tanh(const Tensor& a) {
  Tensor out = unary_forward(UnaryOp::tanh, "tanh", a);
  Tensor so = saved(out);
  return record("tanh", out, {&a}, [so](const Tensor& g) -> std::vector<Tensor> { return {g * (1.0 - so * so)}; });
}

Tensor gelu(const Tensor& a_in) {
  Tensor a = a_in.contiguous();
  Tensor out = unary_forward(UnaryOp::gelu, "gelu", a);
  Tensor sa = a.detach();
  return record("gelu", out, {&a}, [sa](const Tensor& g_in) -> std::vector<Tensor> {
    Tensor g = g_in.contiguous();
    Tensor dx = empty(sa.shape(), sa.options());
    dispatch_float(sa, "gelu_backward", [&]<class T>() {
      TALLY_KERNEL(dx.device(), gelu_backward<T>, sa.data<T>(), g.data<T>(), dx.data<T>(), sa.numel());
    });
    return {dx};
  });
}

// ---- in place ----

void add_(Tensor& dst, const Tensor& src, double alpha) {
  check_pair("add_", "dst", dst, "src", src);
  check_floating("add_", dst);
  TALLY_CHECK(dst.shape() == src.shape(), "[add_] shape mismatch: destination ", shape_str(dst.shape()), ", source ",
              shape_str(src.shape()));
  TALLY_CHECK(dst.is_contiguous(), "[add_] destination must be contiguous, got ", dst.str());
  Tensor s = src.contiguous();
  dispatch_float(dst, "add_", [&]<class T>() {
    TALLY_KERNEL(dst.device(), axpy<T>, dst.data<T>(), s.data<T>(), dst.numel(), alpha);
  });
}

}  // namespace tally
