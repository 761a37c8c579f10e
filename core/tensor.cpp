// Tensor: storage, metadata, views with their backward, copies between dtypes and devices, creation.
#include "core/tensor.h"

#include <algorithm>
#include <cstring>
#include <numeric>

#include "core/autograd/node.h"
#include "core/ops/dispatch.h"
#include "core/ops.h"

#ifdef TALLY_HAS_CUDA
#include "core/cuda/runtime.h"
#endif

namespace tally {

Storage::~Storage() { allocator(block.device).deallocate(block); }

void Storage::retag(Category c, const std::string& owner) {
  Ledger& l = ledger(block.device);
  l.on_free(block.category, block.owner, block.requested, block.held);
  block.category = c;
  block.owner = l.owner_id(owner);
  l.on_alloc(block.category, block.owner, block.requested, block.held);
}

namespace {

std::shared_ptr<TensorImpl> new_impl(const Shape& shape, TensorOptions opt) {
  for (int64_t d : shape) TALLY_CHECK(d >= 0, "[empty] negative dimension in shape ", shape_str(shape));
  const std::optional<int64_t> n = checked_numel(shape);
  int64_t bytes = 0;
  TALLY_CHECK(n && !__builtin_mul_overflow(*n, int64_t(dtype_size(opt.dtype)), &bytes), "[empty] shape ",
              shape_str(shape), " of ", dtype_name(opt.dtype), " holds more bytes than fit in 64 bits");
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = std::make_shared<Storage>(allocator(opt.device).allocate(bytes));
  impl->shape = shape;
  impl->strides = contiguous_strides(shape);
  impl->dtype = opt.dtype;
  impl->device = opt.device;
  return impl;
}

kernels::StridedLayout copy_layout(const Tensor& dst, const Tensor& src) {
  TALLY_CHECK(dst.dim() <= kernels::kMaxDims, "[copy] ", shape_str(dst.shape()), ": tensors of more than ",
              kernels::kMaxDims, " dims");
  kernels::StridedLayout l;
  l.ndim = dst.dim();
  for (int i = 0; i < l.ndim; ++i) {
    l.shape[i] = dst.shape()[i];
    l.dst_stride[i] = dst.strides()[i];
    l.src_stride[i] = src.strides()[i];
  }
  return l;
}

}  // namespace

Tensor make_view(const Tensor& base, Shape shape, Strides strides, int64_t offset) {
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = base.impl()->storage;
  impl->shape = std::move(shape);
  impl->strides = std::move(strides);
  impl->offset = offset;
  impl->dtype = base.dtype();
  impl->device = base.device();
  return Tensor(std::move(impl));
}

Tensor bytes_as(const Tensor& base, DType dtype) {
  TALLY_CHECK(base.is_contiguous(), "[bytes_as] ", base.str(), " is not contiguous");
  const int64_t from = int64_t(dtype_size(base.dtype())), to = int64_t(dtype_size(dtype));
  TALLY_CHECK(base.nbytes() % to == 0 && base.offset() * from % to == 0, "[bytes_as] ", base.str(), " at element ",
              base.offset(), " is not a whole number of ", dtype_name(dtype), " elements");
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = base.impl()->storage;
  impl->shape = {base.nbytes() / to};
  impl->strides = {1};
  impl->offset = base.offset() * from / to;
  impl->dtype = dtype;
  impl->device = base.device();
  return Tensor(std::move(impl));
}

int64_t Tensor::size(int64_t dim) const { return impl_->shape[wrap_dim(dim, this->dim(), "size")]; }
int64_t Tensor::stride(int64_t dim) const { return impl_->strides[wrap_dim(dim, this->dim(), "stride")]; }

bool Tensor::is_contiguous() const {
  if (numel() == 0) return true;  // no element to be out of place (whatever strides a view of it was given)
  int64_t expected = 1;
  for (int i = dim() - 1; i >= 0; --i) {
    if (impl_->shape[i] == 1) continue;
    if (impl_->strides[i] != expected) return false;
    expected *= impl_->shape[i];
  }
  return true;
}

std::string Tensor::str() const {
  if (!defined()) return "undefined";
  return cat(dtype_name(dtype()), shape_str(shape()), " ", device().str());
}

void* Tensor::data_ptr() const {
  void* base = impl_->storage->block.ptr;
  if (!base) return nullptr;
  return static_cast<char*>(base) + impl_->offset * int64_t(dtype_size(impl_->dtype));
}

double Tensor::item() const {
  TALLY_CHECK(numel() == 1, "[item] needs a one-element tensor, got ", str());
  TALLY_CHECK(!device().is_meta(), "[item] a meta tensor has no value");
  if (device().is_cpu()) {  // read in place: no allocation
    double v = 0;
    kernels::StridedLayout l;  // zero dims: one element
    kernels::cpu::copy_strided(&v, DType::f64, data_ptr(), dtype(), l);
    return v;
  }
  return to_vector<double>()[0];
}

template <class T>
std::vector<T> Tensor::to_vector() const {
  TALLY_CHECK(!device().is_meta(), "[to_vector] a meta tensor has no values");
  Tensor host = to(Device::cpu()).to(dtype_v<T>).contiguous();
  const T* p = host.data<T>();
  return std::vector<T>(p, p + host.numel());
}
template std::vector<float> Tensor::to_vector<float>() const;
template std::vector<double> Tensor::to_vector<double>() const;
template std::vector<int32_t> Tensor::to_vector<int32_t>() const;
template std::vector<int64_t> Tensor::to_vector<int64_t>() const;
template std::vector<uint16_t> Tensor::to_vector<uint16_t>() const;

// ---- views ----

Tensor Tensor::view(const Shape& shape_in) const {
  Shape shape = shape_in;
  int64_t known = 1, infer = -1;
  for (size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] == -1) {
      TALLY_CHECK(infer < 0, "[view] only one dimension may be -1, got ", shape_str(shape_in));
      infer = int64_t(i);
    } else {
      TALLY_CHECK(shape[i] >= 0, "[view] invalid shape ", shape_str(shape_in));
      known *= shape[i];
    }
  }
  if (infer >= 0) {
    TALLY_CHECK(known > 0 && numel() % known == 0, "[view] cannot view ", shape_str(this->shape()), " as ",
                shape_str(shape_in));
    shape[infer] = numel() / known;
  }
  TALLY_CHECK(tally::numel(shape) == numel(), "[view] cannot view ", shape_str(this->shape()), " (", numel(),
              " elements) as ", shape_str(shape_in));
  TALLY_CHECK(is_contiguous(), "[view] input ", shape_str(this->shape()), " is not contiguous; use reshape");
  Tensor out = make_view(*this, shape, contiguous_strides(shape), offset());
  Shape in_shape = this->shape();
  return record("view", out, {this}, [in_shape](const Tensor& g) -> std::vector<Tensor> { return {g.reshape(in_shape)}; });
}

Tensor Tensor::reshape(const Shape& shape) const {
  if (is_contiguous()) return view(shape);
  return contiguous().view(shape);
}

Tensor Tensor::transpose(int64_t d0, int64_t d1) const {
  int a = wrap_dim(d0, dim(), "transpose"), b = wrap_dim(d1, dim(), "transpose");
  Shape s = shape();
  Strides st = strides();
  std::swap(s[a], s[b]);
  std::swap(st[a], st[b]);
  Tensor out = make_view(*this, s, st, offset());
  return record("transpose", out, {this}, [a, b](const Tensor& g) -> std::vector<Tensor> { return {g.transpose(a, b)}; });
}

Tensor Tensor::permute(const std::vector<int64_t>& dims) const {
  TALLY_CHECK(int(dims.size()) == dim(), "[permute] got ", dims.size(), " dims for a tensor of shape ", shape_str(shape()));
  Shape s(dim());
  Strides st(dim());
  std::vector<int64_t> inverse(dim(), -1);
  for (int i = 0; i < dim(); ++i) {
    int d = wrap_dim(dims[i], dim(), "permute");
    TALLY_CHECK(inverse[d] < 0, "[permute] dim ", d, " repeated");
    inverse[d] = i;
    s[i] = shape()[d];
    st[i] = strides()[d];
  }
  Tensor out = make_view(*this, s, st, offset());
  return record("permute", out, {this}, [inverse](const Tensor& g) -> std::vector<Tensor> { return {g.permute(inverse)}; });
}

Tensor Tensor::slice(int64_t dim_in, int64_t start, int64_t end) const {
  int d = wrap_dim(dim_in, dim(), "slice");
  int64_t n = shape()[d];
  if (start < 0) start += n;
  if (end < 0) end += n;
  TALLY_CHECK(0 <= start && start <= end && end <= n, "[slice] range [", start, ", ", end, ") out of bounds for dim ", d,
              " of shape ", shape_str(shape()));
  Shape s = shape();
  s[d] = end - start;
  Tensor out = make_view(*this, s, strides(), offset() + start * strides()[d]);
  Shape in_shape = shape();
  return record("slice", out, {this}, [in_shape, d, start, end](const Tensor& g) -> std::vector<Tensor> {
    Tensor full_grad = zeros(in_shape, g.options());
    full_grad.slice(d, start, end).copy_(g);
    return {full_grad};
  });
}

Tensor Tensor::select(int64_t dim_in, int64_t index) const {
  int d = wrap_dim(dim_in, dim(), "select");
  int64_t n = shape()[d];
  if (index < 0) index += n;
  TALLY_CHECK(0 <= index && index < n, "[select] index ", index, " out of bounds for dim ", d, " of shape ", shape_str(shape()));
  return slice(d, index, index + 1).squeeze(d);
}

Tensor Tensor::expand(const Shape& shape_in) const {
  TALLY_CHECK(shape_in.size() >= shape().size(), "[expand] cannot expand ", shape_str(shape()), " to ", shape_str(shape_in));
  size_t lead = shape_in.size() - shape().size();
  Shape s(shape_in.size());
  Strides st(shape_in.size(), 0);
  for (size_t i = 0; i < shape_in.size(); ++i) {
    if (i < lead) {
      s[i] = shape_in[i];
      continue;
    }
    int64_t have = shape()[i - lead];
    int64_t want = shape_in[i] == -1 ? have : shape_in[i];
    TALLY_CHECK(have == want || have == 1, "[expand] cannot expand ", shape_str(shape()), " to ", shape_str(shape_in));
    s[i] = want;
    st[i] = have == want ? strides()[i - lead] : 0;
  }
  Tensor out = make_view(*this, s, st, offset());
  Shape in_shape = shape();
  return record("expand", out, {this}, [in_shape](const Tensor& g) -> std::vector<Tensor> { return {sum_to(g, in_shape)}; });
}

Tensor Tensor::unsqueeze(int64_t dim_in) const {
  int d = wrap_dim(dim_in, dim() + 1, "unsqueeze");
  Shape s = shape();
  s.insert(s.begin() + d, 1);
  Strides st = strides();
  st.insert(st.begin() + d, d < dim() ? strides()[d] * shape()[d] : 1);
  Tensor out = make_view(*this, s, st, offset());
  Shape in_shape = shape();
  return record("unsqueeze", out, {this}, [in_shape](const Tensor& g) -> std::vector<Tensor> { return {g.reshape(in_shape)}; });
}

Tensor Tensor::squeeze(int64_t dim_in) const {
  int d = wrap_dim(dim_in, dim(), "squeeze");
  TALLY_CHECK(shape()[d] == 1, "[squeeze] dim ", d, " of shape ", shape_str(shape()), " is not 1");
  Shape s = shape();
  Strides st = strides();
  s.erase(s.begin() + d);
  st.erase(st.begin() + d);
  Tensor out = make_view(*this, s, st, offset());
  Shape in_shape = shape();
  return record("squeeze", out, {this}, [in_shape](const Tensor& g) -> std::vector<Tensor> { return {g.reshape(in_shape)}; });
}

Tensor Tensor::contiguous() const {
  if (is_contiguous()) return *this;
  return clone();
}

Tensor Tensor::clone() const {
  Tensor out = empty(shape(), options());
  out.copy_(*this);
  return record("clone", out, {this}, [](const Tensor& g) -> std::vector<Tensor> { return {g}; });
}

Tensor Tensor::to(Device d) const {
  if (device() == d) return *this;
  Tensor out = empty(shape(), {dtype(), d});
  out.copy_(*this);
  Device from = device();
  return record("to_device", out, {this}, [from](const Tensor& g) -> std::vector<Tensor> { return {g.to(from)}; });
}

Tensor Tensor::to(DType t) const {
  if (dtype() == t) return *this;
  Tensor out = empty(shape(), {t, device()});
  out.copy_(*this);
  DType from = dtype();
  if (!is_floating(t) || !is_floating(from)) return out;  // no gradient through integer casts
  return record("to_dtype", out, {this}, [from](const Tensor& g) -> std::vector<Tensor> { return {g.to(from)}; });
}

// ---- in place ----

Tensor& Tensor::fill_(double value) {
  TALLY_CHECK(is_contiguous(), "[fill_] needs a contiguous tensor, got shape ", shape_str(shape()), " strides ",
              shape_str(strides()));
  TALLY_KERNEL(device(), fill, data_ptr(), dtype(), numel(), value);
  return *this;
}

Tensor& Tensor::copy_(const Tensor& src) {
  TALLY_CHECK(src.shape() == shape(), "[copy_] shape mismatch: destination ", shape_str(shape()), ", source ",
              shape_str(src.shape()));
  if (numel() == 0 || device().is_meta() || src.device().is_meta()) return *this;
  if (src.device() == device()) {
    TALLY_KERNEL(device(), copy_strided, data_ptr(), dtype(), src.data_ptr(), src.dtype(), copy_layout(*this, src));
    return *this;
  }
#ifdef TALLY_HAS_CUDA
  // Across devices: make the source contiguous in the destination's dtype on its own device, move the bytes,
  // then place them (strided) on the destination device.
  NoGradGuard no_grad;
  Tensor packed = src.to(dtype()).contiguous();
  Tensor landing = is_contiguous() ? *this : empty(shape(), options());
  if (device().is_cuda() && packed.device().is_cpu())
    cuda::memcpy_host_to_device(landing.data_ptr(), packed.data_ptr(), packed.nbytes());
  else if (device().is_cpu() && packed.device().is_cuda())
    cuda::memcpy_device_to_host(landing.data_ptr(), packed.data_ptr(), packed.nbytes());
  else
    fail("[copy_] copies between ", packed.device().str(), " and ", device().str(), " are not supported");
  if (!landing.impl() || landing.impl() != impl()) copy_(landing);
  return *this;
#else
  fail("[copy_] cannot copy from ", src.device().str(), " to ", device().str());
#endif
}

// ---- autograd entry points ----

Tensor& Tensor::set_requires_grad(bool on) {
  TALLY_CHECK(is_leaf(), "[set_requires_grad] only leaf tensors can change requires_grad (this one is produced by ",
              grad_fn()->op, ")");
  TALLY_CHECK(!on || is_floating(dtype()), "[set_requires_grad] only floating tensors can require grad, got ",
              dtype_name(dtype()));
  impl_->requires_grad = on;
  if (!on) impl_->grad_accumulator.reset();
  return *this;
}

void Tensor::set_grad(const Tensor& g) {
  if (g.defined())
    TALLY_CHECK(g.shape() == shape(), "[set_grad] gradient ", shape_str(g.shape()), " does not match tensor ",
                shape_str(shape()));
  impl_->grad = g.impl_ptr();
}

void Tensor::backward(const Tensor& grad) const { run_backward(*this, grad); }

Tensor Tensor::detach() const { return make_view(*this, shape(), strides(), offset()); }

Tensor& Tensor::set_padding_rows(int64_t rows) {
  TALLY_CHECK(is_leaf() && dim() >= 1 && rows >= 0 && rows < size(0), "[set_padding_rows] ", rows,
              " padding rows on ", str(), ": a leaf tensor of 1+ dims keeps at least one row of its own");
  impl_->padding_rows = rows;
  return *this;
}

// ---- creation ----

Tensor empty(const Shape& shape, TensorOptions opt) { return Tensor(new_impl(shape, opt)); }
Tensor zeros(const Shape& shape, TensorOptions opt) { return empty(shape, opt).fill_(0.0); }
Tensor ones(const Shape& shape, TensorOptions opt) { return empty(shape, opt).fill_(1.0); }
Tensor full(const Shape& shape, double value, TensorOptions opt) { return empty(shape, opt).fill_(value); }
Tensor zeros_like(const Tensor& t) { return zeros(t.shape(), t.options()); }
Tensor empty_like(const Tensor& t) { return empty(t.shape(), t.options()); }

Tensor arange(int64_t start, int64_t end, TensorOptions opt) {
  TALLY_CHECK(end >= start, "[arange] end ", end, " < start ", start);
  std::vector<double> v(size_t(end - start));
  std::iota(v.begin(), v.end(), double(start));
  return from_vector(v, {end - start}, opt);
}

Tensor from_host(const void* data, DType src_dtype, const Shape& shape, TensorOptions opt) {
  Tensor out = empty(shape, opt);
  if (out.nbytes() == 0 || opt.device.is_meta()) return out;
  if (opt.device.is_cpu() && opt.dtype == src_dtype) {  // straight in: no staging copy
    std::memcpy(out.data_ptr(), data, size_t(out.nbytes()));
    return out;
  }
  Tensor host = empty(shape, {src_dtype, Device::cpu()});
  std::memcpy(host.data_ptr(), data, size_t(host.nbytes()));
  out.copy_(host);
  return out;
}

template <class T>
Tensor from_vector(const std::vector<T>& values, const Shape& shape, TensorOptions opt) {
  TALLY_CHECK(int64_t(values.size()) == tally::numel(shape), "[from_vector] ", values.size(), " values for shape ",
              shape_str(shape));
  return from_host(values.data(), dtype_v<T>, shape, opt);
}
template Tensor from_vector<float>(const std::vector<float>&, const Shape&, TensorOptions);
template Tensor from_vector<double>(const std::vector<double>&, const Shape&, TensorOptions);
template Tensor from_vector<int32_t>(const std::vector<int32_t>&, const Shape&, TensorOptions);
template Tensor from_vector<int64_t>(const std::vector<int64_t>&, const Shape&, TensorOptions);
template Tensor from_vector<uint16_t>(const std::vector<uint16_t>&, const Shape&, TensorOptions);

}  // namespace tally
