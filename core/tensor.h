// Tensor: a view (shape, strides, offset, dtype) onto reference-counted Storage, plus autograd links.
// Views (view/reshape/transpose/permute/slice/expand/...) share storage and record their backward like any op.
// In-place helpers (fill_, copy_, zero_) bypass autograd: they are for initialisation and optimizers.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/allocator.h"
#include "core/device.h"
#include "core/dtype.h"
#include "core/error.h"
#include "core/shape.h"

namespace tally {

struct Node;

// Memory that a tensor views. Its Block goes back to its allocator (and off the ledger) when the last view dies.
struct Storage {
  Block block;
  explicit Storage(const Block& b) : block(b) {}
  ~Storage();
  // Moves this storage's bytes to another category and owner in the ledger (e.g. a freshly computed gradient
  // adopted as a parameter's .grad).
  void retag(Category c, const std::string& owner);
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
};

struct TensorImpl {
  std::shared_ptr<Storage> storage;
  Shape shape;
  Strides strides;     // in elements
  int64_t offset = 0;  // in elements
  DType dtype = DType::f32;
  Device device;
  bool requires_grad = false;
  std::shared_ptr<Node> grad_fn;           // the op that produced this tensor (non-leaf)
  std::shared_ptr<Node> grad_accumulator;  // leaf tensors that require grad: where gradients land
  std::shared_ptr<TensorImpl> grad;
  std::string name;
  int64_t padding_rows = 0;  // see Tensor::padding_rows
};

struct TensorOptions {
  DType dtype = DType::f32;
  Device device = Device::cpu();
};

class Tensor {
 public:
  Tensor() = default;
  explicit Tensor(std::shared_ptr<TensorImpl> impl) : impl_(std::move(impl)) {}

  bool defined() const { return impl_ != nullptr; }
  TensorImpl* impl() const { return impl_.get(); }
  const std::shared_ptr<TensorImpl>& impl_ptr() const { return impl_; }

  // ---- metadata ----
  const Shape& shape() const { return impl_->shape; }
  int dim() const { return int(impl_->shape.size()); }
  int64_t size(int64_t dim) const;  // negative dims count from the end
  int64_t stride(int64_t dim) const;
  const Strides& strides() const { return impl_->strides; }
  int64_t offset() const { return impl_->offset; }
  int64_t numel() const { return tally::numel(impl_->shape); }
  DType dtype() const { return impl_->dtype; }
  Device device() const { return impl_->device; }
  TensorOptions options() const { return {impl_->dtype, impl_->device}; }
  int64_t nbytes() const { return numel() * int64_t(dtype_size(dtype())); }
  bool is_contiguous() const;
  // Short description for messages: "f32(2, 3) cpu".
  std::string str() const;

  // ---- data ----
  void* data_ptr() const;  // at the view's offset; nullptr on the meta device
  template <class T>
  T* data() const {
    TALLY_CHECK(dtype_v<T> == dtype(), "[data] tensor is ", dtype_name(dtype()), ", asked for ",
                dtype_name(dtype_v<T>));
    return static_cast<T*>(data_ptr());
  }
  // The value of a one-element tensor, as double (copies from the device when needed).
  double item() const;
  // All elements in row-major order, converted to T (copies from the device when needed).
  template <class T>
  std::vector<T> to_vector() const;

  // ---- views and copies (autograd-aware) ----
  Tensor view(const Shape& shape) const;     // requires compatible strides; one dim may be -1
  Tensor reshape(const Shape& shape) const;  // a view when possible, else a contiguous copy
  Tensor flatten() const { return reshape({-1}); }
  Tensor transpose(int64_t d0, int64_t d1) const;
  Tensor permute(const std::vector<int64_t>& dims) const;
  Tensor slice(int64_t dim, int64_t start, int64_t end) const;  // [start, end), step 1
  Tensor select(int64_t dim, int64_t index) const;              // removes dim
  Tensor expand(const Shape& shape) const;                      // broadcast view (stride 0)
  Tensor unsqueeze(int64_t dim) const;
  Tensor squeeze(int64_t dim) const;
  Tensor contiguous() const;  // itself when already contiguous
  Tensor clone() const;       // always a new contiguous copy
  Tensor to(Device d) const;  // itself when already there
  Tensor to(DType t) const;   // itself when already that type

  // ---- in place, outside autograd ----
  Tensor& fill_(double value);
  Tensor& zero_() { return fill_(0.0); }
  Tensor& copy_(const Tensor& src);  // same shape; any dtype/device; src may be a strided view

  // ---- autograd ----
  bool requires_grad() const { return impl_->requires_grad; }
  Tensor& set_requires_grad(bool on);  // only on leaves
  bool is_leaf() const { return impl_->grad_fn == nullptr; }
  const std::shared_ptr<Node>& grad_fn() const { return impl_->grad_fn; }
  Tensor grad() const { return Tensor(impl_->grad); }
  void set_grad(const Tensor& g);
  // Frees the gradient buffer (it is allocated again by the next backward).
  void clear_grad() { impl_->grad.reset(); }
  // Backpropagates from this tensor: `grad` defaults to ones for a one-element tensor.
  void backward(const Tensor& grad = Tensor()) const;
  // A new tensor sharing storage, cut from the graph.
  Tensor detach() const;

  const std::string& name() const { return impl_->name; }
  Tensor& set_name(std::string n) {
    impl_->name = std::move(n);
    return *this;
  }
  // Trailing rows of dim 0 that are alignment padding rather than part of the model (GPT-2's vocabulary rounded up
  // to a multiple of 128 for the kernels): optimizers keep state for, and update, rows [0, size(0) - padding_rows)
  // only, so the algorithm sees the model exactly as it would unpadded. A property of a parameter (a leaf).
  int64_t padding_rows() const { return impl_->padding_rows; }
  Tensor& set_padding_rows(int64_t rows);

 private:
  std::shared_ptr<TensorImpl> impl_;
};

// ---- creation ----
// A new tensor with uninitialised contents, allocated under the current MemoryScope.
Tensor empty(const Shape& shape, TensorOptions opt = {});
Tensor zeros(const Shape& shape, TensorOptions opt = {});
Tensor ones(const Shape& shape, TensorOptions opt = {});
Tensor full(const Shape& shape, double value, TensorOptions opt = {});
Tensor arange(int64_t start, int64_t end, TensorOptions opt = {});  // [start, end), step 1
Tensor zeros_like(const Tensor& t);
Tensor empty_like(const Tensor& t);
// Copies host data (converted to opt.dtype) into a new tensor of `shape`.
template <class T>
Tensor from_vector(const std::vector<T>& values, const Shape& shape, TensorOptions opt = {.dtype = dtype_v<T>});
Tensor from_host(const void* data, DType src_dtype, const Shape& shape, TensorOptions opt = {});

// Makes a view tensor over `storage` (no allocation).
Tensor make_view(const Tensor& base, Shape shape, Strides strides, int64_t offset);
// The bytes of a contiguous tensor as a flat tensor of `dtype` (no copy, no graph): (nbytes / size of dtype,). Its
// byte size and start must be whole elements of `dtype` (else an error naming both). For buffers that hold values of
// several dtypes in turn (a communication buffer); the bits are reinterpreted, not converted.
Tensor bytes_as(const Tensor& base, DType dtype);

}  // namespace tally
