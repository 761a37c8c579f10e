// Neural-network ops: softmax / log_softmax, fused LayerNorm (alone or after a residual add), embedding, fused
// cross-entropy, dropout.
// Each op's backward is written right under its forward and keeps only what the gradient needs.
#include <algorithm>
#include <cmath>

#include "core/ops/common.h"

namespace tally {

using detail::check_floating;
using detail::check_pair;
using detail::saved;
using kernels::SoftmaxKind;
using kernels::Trans;

namespace {

Tensor softmax_common(const Tensor& a_in, SoftmaxKind kind, const char* op) {
  check_floating(op, a_in);
  TALLY_CHECK(a_in.dim() >= 1, "[", op, "] needs at least one dim, got a scalar");
  Tensor a = a_in.contiguous();
  int64_t C = a.size(-1), N = C ? a.numel() / C : 0;
  Tensor out = empty(a.shape(), a.options());
  dispatch_float(a, op, [&]<class T>() {
    TALLY_KERNEL(out.device(), softmax_forward<T>, kind, a.data<T>(), out.data<T>(), N, C);
  });
  Tensor so = saved(out);
  return record(op, out, {&a}, [so, kind, N, C](const Tensor& g_in) -> std::vector<Tensor> {
    Tensor g = g_in.contiguous();
    Tensor dx = empty(so.shape(), so.options());
    dispatch_float(so, "softmax_backward", [&]<class T>() {
      TALLY_KERNEL(dx.device(), softmax_backward<T>, kind, so.data<T>(), g.data<T>(), dx.data<T>(), N, C);
    });
    return {dx};
  });
}

}  // namespace

Tensor softmax(const Tensor& a) { return softmax_common(a, SoftmaxKind::softmax, "softmax"); }
Tensor log_softmax(const Tensor& a) { return softmax_common(a, SoftmaxKind::log_softmax, "log_softmax"); }

// ---- LayerNorm, alone or after a residual add ----

namespace {

// x (..., C), weight (C), bias (C), all floating on one device.
int64_t check_layer_norm(const char* op, const Tensor& x, const Tensor& weight, const Tensor& bias) {
  check_floating(op, x);
  check_pair(op, "x", x, "weight", weight);
  check_pair(op, "x", x, "bias", bias);
  const int64_t C = x.dim() ? x.size(-1) : 0;
  TALLY_CHECK(x.dim() >= 1 && C > 0, "[", op, "] input must end in a non-empty channel dim, got ", shape_str(x.shape()));
  TALLY_CHECK(weight.shape() == Shape{C} && bias.shape() == Shape{C}, "[", op, "] weight ", shape_str(weight.shape()),
              " and bias ", shape_str(bias.shape()), " must be (", C, ") for input ", shape_str(x.shape()));
  return C;
}

// The LayerNorm node of `out` = LayerNorm(x) (N rows of C): its backward keeps x, the weight, mean and rstd (N).
void record_layer_norm(Tensor& out, const Tensor& x, const Tensor& w, const Tensor& b, Tensor mean, Tensor rstd,
                       int64_t N, int64_t C) {
  bool need_dx = x.requires_grad(), need_dw = w.requires_grad(), need_db = b.requires_grad();
  Tensor sx = x.detach(), sw = w.detach();
  record("layer_norm", out, {&x, &w, &b},
         [sx, sw, mean, rstd, N, C, need_dx, need_dw, need_db](const Tensor& g_in) -> std::vector<Tensor> {
           Tensor g = g_in.contiguous();
           Tensor dx = need_dx ? empty(sx.shape(), sx.options()) : Tensor();
           Tensor dw = need_dw ? empty({C}, sx.options()) : Tensor();
           Tensor db = need_db ? empty({C}, sx.options()) : Tensor();
           // CUDA sums the weight and bias gradients' columns in parts, added up after.
           const int64_t ws_bytes = need_dw || need_db ? kernels::cuda_layernorm_backward_workspace_bytes(N, C) : 0;
           Tensor ws = detail::kernel_workspace(g, detail::cuda_only(g, ws_bytes), "layer_norm_backward");
           dispatch_float(sx, "layer_norm_backward", [&]<class T>() {
             using A = kernels::acc_t<T>;
             TALLY_KERNEL(g.device(), layernorm_backward<T>, g.data<T>(), sx.data<T>(), sw.data<T>(), mean.data<A>(),
                          rstd.data<A>(), need_dx ? dx.data<T>() : nullptr, need_dw ? dw.data<T>() : nullptr,
                          need_db ? db.data<T>() : nullptr, detail::data_or_null(ws), N, C);
           });
           return {dx, dw, db};
         });
}

}  // namespace

Tensor layer_norm(const Tensor& x_in, const Tensor& weight_in, const Tensor& bias_in, double eps) {
  const int64_t C = check_layer_norm("layer_norm", x_in, weight_in, bias_in);
  Tensor x = x_in.contiguous(), w = weight_in.contiguous(), b = bias_in.contiguous();
  const int64_t N = x.numel() / C;
  Tensor out = empty(x.shape(), x.options());
  Tensor mean = empty({N}, detail::acc_options(x)), rstd = empty({N}, detail::acc_options(x));  // f32 for bf16 x
  dispatch_float(x, "layer_norm", [&]<class T>() {
    using A = kernels::acc_t<T>;
    TALLY_KERNEL(out.device(), layernorm_forward<T>, x.data<T>(), w.data<T>(), b.data<T>(), out.data<T>(), mean.data<A>(),
                 rstd.data<A>(), N, C, eps);
  });
  record_layer_norm(out, x, w, b, mean, rstd, N, C);
  return out;
}

AddLayerNorm add_layer_norm(const Tensor& x_in, const Tensor& residual_in, const Tensor& weight_in,
                            const Tensor& bias_in, double eps) {
  const int64_t C = check_layer_norm("add_layer_norm", x_in, weight_in, bias_in);
  check_pair("add_layer_norm", "x", x_in, "residual", residual_in);
  TALLY_CHECK(residual_in.shape() == x_in.shape(), "[add_layer_norm] residual ", shape_str(residual_in.shape()),
              " must have the input's shape ", shape_str(x_in.shape()));
  Tensor x = x_in.contiguous(), r = residual_in.contiguous(), w = weight_in.contiguous(), b = bias_in.contiguous();
  const int64_t N = x.numel() / C;
  // Allocated in add then layer_norm's order, so that memory plans and peaks are theirs.
  Tensor sum = empty(x.shape(), x.options()), out = empty(x.shape(), x.options());
  Tensor mean = empty({N}, detail::acc_options(x)), rstd = empty({N}, detail::acc_options(x));
  dispatch_float(x, "add_layer_norm", [&]<class T>() {
    using A = kernels::acc_t<T>;
    TALLY_KERNEL(out.device(), add_layernorm_forward<T>, x.data<T>(), r.data<T>(), sum.data<T>(), w.data<T>(),
                 b.data<T>(), out.data<T>(), mean.data<A>(), rstd.data<A>(), N, C, eps);
  });
  // The graph is add's node, then layer_norm's on the sum: the sum's gradient (from its other readers and from the
  // norm) flows to x and the residual as add's does.
  record("add", sum, {&x, &r}, [](const Tensor& g) -> std::vector<Tensor> { return {g, g}; });
  record_layer_norm(out, sum, w, b, mean, rstd, N, C);
  return {.sum = sum, .normed = out};
}

// ---- embedding ----

// Ids must be in [0, limit): checked on the host before any kernel reads them.
void check_ids_in_range(const char* op, const Tensor& ids, int64_t limit, const std::string& what) {
  if (ids.device().is_meta()) return;
  std::vector<int32_t> host = ids.to_vector<int32_t>();
  for (size_t i = 0; i < host.size(); ++i)
    TALLY_CHECK(host[i] >= 0 && host[i] < limit, "[", op, "] ", what, " ", host[i], " at position ", i, " of ",
                shape_str(ids.shape()), " is outside [0, ", limit, ")");
}

Tensor embedding(const Tensor& indices_in, const Tensor& weight_in, TokenIds id_check) {
  TALLY_CHECK(indices_in.defined() && indices_in.dtype() == DType::i32, "[embedding] indices must be i32, got ",
              indices_in.str());
  check_floating("embedding", weight_in);
  TALLY_CHECK(weight_in.dim() == 2, "[embedding] weight must be (V, C), got ", shape_str(weight_in.shape()));
  TALLY_CHECK(indices_in.device() == weight_in.device(), "[embedding] device mismatch: indices ", indices_in.str(),
              ", weight ", weight_in.str());
  Tensor ids = indices_in.contiguous(), w = weight_in.contiguous();
  int64_t V = w.size(0), C = w.size(1), N = ids.numel();
  if (id_check == TokenIds::check) check_ids_in_range("embedding", ids, V);
  Shape out_shape = ids.shape();
  out_shape.push_back(C);
  Tensor out = empty(out_shape, w.options());
  dispatch_float(w, "embedding", [&]<class T>() {
    TALLY_KERNEL(out.device(), embedding_forward<T>, ids.data<int32_t>(), w.data<T>(), out.data<T>(), N, C);
  });
  return record("embedding", out, {&w}, [ids, N, V, C](const Tensor& g_in) -> std::vector<Tensor> {
    Tensor g = g_in.contiguous();
    Tensor dw = empty({V, C}, g.options());
    // CUDA sorts the ids; the CPU sums in place.
    Tensor ws = detail::kernel_workspace(
        g, detail::cuda_only(g, kernels::cuda_embedding_backward_workspace_bytes(N)), "embedding_backward");
    dispatch_float(g, "embedding_backward", [&]<class T>() {
      TALLY_KERNEL(dw.device(), embedding_backward<T>, ids.data<int32_t>(), g.data<T>(), dw.data<T>(),
                   detail::data_or_null(ws), N, V, C);
    });
    return {dw};
  });
}

// ---- cross-entropy ----

Tensor cross_entropy(const Tensor& logits_in, const Tensor& targets_in, CrossEntropyOptions options) {
  check_floating("cross_entropy", logits_in);
  TALLY_CHECK(logits_in.dim() == 2, "[cross_entropy] logits must be (N, V), got ", shape_str(logits_in.shape()));
  TALLY_CHECK(targets_in.defined() && targets_in.dtype() == DType::i32 && targets_in.dim() == 1 &&
                  targets_in.size(0) == logits_in.size(0),
              "[cross_entropy] targets must be i32 (N) for logits ", shape_str(logits_in.shape()), ", got ",
              targets_in.str());
  TALLY_CHECK(logits_in.device() == targets_in.device(), "[cross_entropy] device mismatch: logits ", logits_in.str(),
              ", targets ", targets_in.str());
  const int64_t N = logits_in.size(0), width = logits_in.size(1);
  const int64_t V = options.classes > 0 ? options.classes : width;  // the classes: the first V columns
  TALLY_CHECK(N > 0 && width > 0, "[cross_entropy] empty logits ", shape_str(logits_in.shape()));
  TALLY_CHECK(V <= width, "[cross_entropy] classes ", V, " exceeds the ", width, " columns of logits ",
              shape_str(logits_in.shape()));
  // Rows may be strided (e.g. a column slice of wider logits); columns must be contiguous.
  Tensor logits = (logits_in.stride(1) == 1 && logits_in.stride(0) >= width) ? logits_in : logits_in.contiguous();
  Tensor targets = targets_in.contiguous();
  if (options.targets == TokenIds::check) check_ids_in_range("cross_entropy", targets, V);
  const int64_t ld = logits.stride(0);
  // Per-row losses and log-sum-exp in f32 for bf16 logits: the loss is then an f32 scalar.
  Tensor losses = empty({N}, detail::acc_options(logits)), lse = empty({N}, detail::acc_options(logits));
  dispatch_float(logits, "cross_entropy", [&]<class T>() {
    using A = kernels::acc_t<T>;
    TALLY_KERNEL(losses.device(), cross_entropy_forward<T>, logits.data<T>(), ld, targets.data<int32_t>(), losses.data<A>(),
                 lse.data<A>(), N, V);
  });
  Tensor out;
  {
    NoGradGuard no_grad;
    out = mean(losses);
  }
  Tensor sl = logits.detach();
  return record("cross_entropy", out, {&logits}, [sl, targets, lse, ld, N, V, width](const Tensor& g) -> std::vector<Tensor> {
    Tensor dlogits = empty({N, width}, sl.options());  // columns [V, width) get zeros from the kernel
    if (g.device().is_meta()) return {dlogits};
    // The loss's gradient stays where it is: the kernel reads it (no host wait inside the backward pass).
    Tensor dloss = g.to(lse.dtype()).contiguous();
    dispatch_float(sl, "cross_entropy_backward", [&]<class T>() {
      TALLY_KERNEL(dlogits.device(), cross_entropy_backward<T>, sl.data<T>(), ld, targets.data<int32_t>(),
                   lse.data<kernels::acc_t<T>>(), dloss.data<kernels::acc_t<T>>(), dlogits.data<T>(), width, N, V, N);
    });
    return {dlogits};
  });
}

// ---- classifier + cross-entropy, in row chunks ----

Tensor linear_cross_entropy(const Tensor& x_in, const Tensor& weight_in, const Tensor& targets_in,
                            LinearCrossEntropyOptions options) {
  check_pair("linear_cross_entropy", "x", x_in, "weight", weight_in);
  check_floating("linear_cross_entropy", x_in);
  TALLY_CHECK(x_in.dim() == 2 && weight_in.dim() == 2 && x_in.size(1) == weight_in.size(1),
              "[linear_cross_entropy] x must be (N, C) and weight (V, C), got x ", shape_str(x_in.shape()),
              " and weight ", shape_str(weight_in.shape()));
  const int64_t N = x_in.size(0), C = x_in.size(1), width = weight_in.size(0);
  TALLY_CHECK(targets_in.defined() && targets_in.dtype() == DType::i32 && targets_in.dim() == 1 &&
                  targets_in.size(0) == N,
              "[linear_cross_entropy] targets must be i32 (N) for x ", shape_str(x_in.shape()), ", got ",
              targets_in.str());
  TALLY_CHECK(x_in.device() == targets_in.device(), "[linear_cross_entropy] device mismatch: x ", x_in.str(),
              ", targets ", targets_in.str());
  TALLY_CHECK(N > 0 && C > 0 && width > 0, "[linear_cross_entropy] empty operands: x ", shape_str(x_in.shape()),
              ", weight ", shape_str(weight_in.shape()));
  const int64_t V = options.classes > 0 ? options.classes : width;  // the classes: the first V rows of weight
  TALLY_CHECK(V <= width, "[linear_cross_entropy] classes ", V, " exceeds the ", width, " rows of weight ",
              shape_str(weight_in.shape()));
  TALLY_CHECK(options.chunk_rows >= 0, "[linear_cross_entropy] chunk_rows must be >= 0 (0: one chunk), got ",
              options.chunk_rows);
  const int64_t R = options.chunk_rows > 0 ? std::min(options.chunk_rows, N) : N;
  Tensor x, w;
  {
    NoGradGuard no_grad;
    x = x_in.contiguous().detach();       // (N, C)
    w = weight_in.contiguous().detach();  // (width, C)
  }
  Tensor targets = targets_in.contiguous();
  if (options.targets == TokenIds::check) check_ids_in_range("linear_cross_entropy", targets, V);
  const bool need_dx = grad_enabled() && x_in.requires_grad(), need_dw = grad_enabled() && weight_in.requires_grad();
  Tensor losses = empty({N}, detail::acc_options(x));  // per row, in f32 for bf16
  Tensor dx = need_dx ? empty({N, C}, x.options()) : Tensor();
  Tensor dw = need_dw ? empty({width, C}, x.options()) : Tensor();
  {
    MemoryScope scope(Category::workspace, "linear_cross_entropy");
    Tensor logits = empty({R, width}, x.options());  // one chunk's logits, then their gradient in place
    Tensor lse = empty({R}, detail::acc_options(x));
    dispatch_float(x, "linear_cross_entropy", [&]<class T>() {
      using A = kernels::acc_t<T>;
      if (x.device().is_meta()) return;  // accounting only (and no offsets into a meta tensor's null data)
      for (int64_t r0 = 0; r0 < N; r0 += R) {
        const int64_t rows = std::min(R, N - r0);
        const T* xc = x.data<T>() + r0 * C;
        // logits (rows, width) = x[r0, r0 + rows) (rows, C) @ w^T
        TALLY_KERNEL(x.device(), gemm<T>,
                     kernels::GemmArgs<T>{.trans_b = Trans::yes, .M = rows, .N = width, .K = C, .A = xc, .lda = C,
                                          .B = w.data<T>(), .ldb = C, .C = logits.data<T>(), .ldc = width});
        TALLY_KERNEL(x.device(), cross_entropy_forward<T>, logits.data<T>(), width, targets.data<int32_t>() + r0,
                     losses.data<A>() + r0, lse.data<A>(), rows, V);
        if (!need_dx && !need_dw) continue;
        // dlogits of the mean over all N rows (unit loss gradient), over the logits in place; padded columns zero.
        TALLY_KERNEL(x.device(), cross_entropy_backward<T>, logits.data<T>(), width, targets.data<int32_t>() + r0,
                     lse.data<A>(), static_cast<const A*>(nullptr), logits.data<T>(), width, rows, V, N);
        if (need_dx)  // dx[r0, r0 + rows) (rows, C) = dlogits (rows, width) @ w (width, C)
          TALLY_KERNEL(x.device(), gemm<T>,
                       kernels::GemmArgs<T>{.M = rows, .N = C, .K = width, .A = logits.data<T>(), .lda = width,
                                            .B = w.data<T>(), .ldb = C, .C = dx.data<T>() + r0 * C, .ldc = C});
        if (need_dw)  // dw (width, C) (+)= dlogits^T (width, rows) @ x[r0, r0 + rows) (rows, C)
          TALLY_KERNEL(x.device(), gemm<T>,
                       kernels::GemmArgs<T>{.trans_a = Trans::yes, .M = width, .N = C, .K = rows,
                                            .A = logits.data<T>(), .lda = width, .B = xc, .ldb = C,
                                            .C = dw.data<T>(), .ldc = C, .beta = r0 == 0 ? 0.0 : 1.0});
      }
    });
  }
  Tensor out;
  {
    NoGradGuard no_grad;
    out = mean(losses);
  }
  return record("linear_cross_entropy", out, {&x_in, &weight_in}, [dx, dw](const Tensor& g) -> std::vector<Tensor> {
    // The gradients were computed for a unit loss gradient: scaled in place by the real one, read on the device.
    const Tensor& any = dx.defined() ? dx : dw;
    if (g.device().is_meta()) return {dx, dw};
    Tensor dloss = g.to(acc_dtype(any.dtype())).contiguous();
    dispatch_float(any, "linear_cross_entropy_backward", [&]<class T>() {
      for (const Tensor& d : {dx, dw})
        if (d.defined())
          TALLY_KERNEL(d.device(), scale_by<T>, d.data<T>(), dloss.data<kernels::acc_t<T>>(), d.numel());
    });
    return {dx, dw};
  });
}

// ---- dropout ----

Tensor dropout(const Tensor& a_in, double p, Generator& gen) {
  check_floating("dropout", a_in);
  TALLY_CHECK(p >= 0.0 && p < 1.0, "[dropout] p must be in [0, 1), got ", p);
  if (p == 0.0) return a_in;
  Tensor a = a_in.contiguous();
  uint64_t seed = gen.seed(), offset = gen.advance(uint64_t(a.numel()));
  Tensor out = empty(a.shape(), a.options());
  dispatch_float(a, "dropout", [&]<class T>() {
    TALLY_KERNEL(out.device(), dropout<T>, a.data<T>(), out.data<T>(), a.numel(), p, seed, offset);
  });
  return record("dropout", out, {&a}, [p, seed, offset](const Tensor& g_in) -> std::vector<Tensor> {
    Tensor g = g_in.contiguous();
    Tensor dx = empty(g.shape(), g.options());
    dispatch_float(g, "dropout_backward", [&]<class T>() {  // the same mask, regenerated from the counters
      TALLY_KERNEL(dx.device(), dropout<T>, g.data<T>(), dx.data<T>(), g.numel(), p, seed, offset);
    });
    return {dx};
  });
}

}  // namespace tally
