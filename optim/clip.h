// Global-norm gradient clipping (torch.nn.utils.clip_grad_norm_ semantics). The norm is computed in double in
// one pass over each gradient. Two ways to apply it: clip_grad_norm scales the gradients in place (a second
// pass), or grad_norm + clip_coefficient give a factor to pass as StepOptions::grad_scale, which the optimizer
// kernels apply as they read the gradients (no extra pass; the gradient buffers stay unscaled). bf16 gradients
// (mixed precision) are read as bf16 and summed in double as well.
#pragma once
#include <vector>

#include "core/tensor.h"

namespace tally::optim {

// sqrt(sum over params with a defined gradient of sum(g^2)); undefined gradients are skipped.
double grad_norm(const std::vector<Tensor>& params);
// sum over the tensors of sum(x^2), in double (contiguous f32 or bf16; meta tensors count nothing).
double sum_of_squares(const std::vector<Tensor>& xs);
// The same sum added into `acc`, one f64 element on the tensors' device, and not read back: for a caller that reads
// it with other numbers in one copy (a training step's loss and gradient norm: one host wait).
void add_sum_of_squares(const std::vector<Tensor>& xs, Tensor& acc);
// The gradients of `params` that are defined (checked: contiguous f32 or bf16), for the two sums above.
std::vector<Tensor> defined_grads(const std::vector<Tensor>& params);
// min(1, max_norm / (norm + 1e-6)), as torch computes it.
double clip_coefficient(double norm, double max_norm);
// Scales every defined gradient by clip_coefficient(norm, max_norm) when it is below 1; returns the norm
// before clipping.
double clip_grad_norm(const std::vector<Tensor>& params, double max_norm);

}  // namespace tally::optim
