// cuBLASLt's epilogues for a Linear layer's products on CUDA (core/kernels/cuda/linear.cu): the bias (BIAS), the
// bias and GELU with the pre-activation kept (GELU_AUX_BIAS), and the bias gradient beside the weight gradient
// (BGRADB), each fused into the product's one call instead of a separate pass over the (N, OUT) output. Used only
// when TALLY_CUBLASLT_EPILOGUES=1, since it has not yet been checked on a GPU against the separate kernels
// (tests/cuda/test_cuda_linear.cpp does that); otherwise, and for what cuBLASLt does not take, the product, add_bias,
// gelu and bias_backward run as before.
#pragma once
#include <cstdint>
#include <string>

namespace tally::kernels::cuda {

// Whether the epilogues are switched on: TALLY_CUBLASLT_EPILOGUES=1 in the environment, or set_linear_epilogues
// (tests and benchmarks compare both paths in one process).
enum class LinearEpilogues : uint8_t { separate, cublaslt };
bool linear_epilogues_enabled();
void set_linear_epilogues(LinearEpilogues mode);

// Why the last linear_forward / linear_weight_grad of this thread did not use cuBLASLt ("" when it did): switched
// off, double precision, K == 0, a GELU pre-activation whose row is not a multiple of 8 elements, or no algorithm
// for the problem from cublasLtMatmulAlgoGetHeuristic.
std::string linear_epilogues_last_refusal();

}  // namespace tally::kernels::cuda
