// cuDNN's fused (flash) attention for bf16 operands, forward and backward, beside tally's own attention kernels
// (attention.cu), which stay the fallback and the reference in tests. Built when cuDNN and its graph API's C++
// headers (cudnn_frontend, header-only) are found; used only when TALLY_CUDNN_ATTENTION=1, since it has not yet
// been checked on a GPU against the fallback (tests/cuda/test_cuda_attention_cudnn.cpp does that).
#pragma once
#include <cstdint>
#include <string>

#include "core/kernels/kernels.h"

namespace tally::kernels::cuda {

// Whether this build has cuDNN attention, and whether it is switched on: TALLY_CUDNN_ATTENTION=1 in the
// environment, or set_cudnn_attention (tests and benchmarks compare both paths in one process).
bool cudnn_attention_built();
bool cudnn_attention_enabled();
enum class CudnnAttention : uint8_t { off, on };
void set_cudnn_attention(CudnnAttention mode);

// Runs attention through cuDNN when it is built, switched on and takes this problem: bf16, causal, Tq == Tk, head
// size a multiple of 8 up to 128, a graph cuDNN supports, and a workspace within `workspace_bytes` (the fallback's,
// already planned: the ledger stays exact). Returns false, having done nothing, otherwise; the reason is kept for
// cudnn_attention_last_refusal(). Operands as attention_forward/attention_backward take them (bf16 pointers); the
// saved statistic lse (B, NH, Tq) f32 is cuDNN's softmax statistic, max + log(sum exp) of the scaled scores, as the
// fallback's.
bool cudnn_attention_forward(const void* q, const void* k, const void* v, void* out, float* lse, void* workspace,
                             int64_t workspace_bytes, const AttentionLayout& l);
// g: the strides of dout (out_strides) and of dq, dk, dv (q/k/v_strides).
bool cudnn_attention_backward(const void* q, const void* k, const void* v, const void* out, const float* lse,
                              const void* dout, void* dq, void* dk, void* dv, void* workspace, int64_t workspace_bytes,
                              const AttentionLayout& l, const AttentionLayout& g);
// Why the last call returned false ("" if it did not).
std::string cudnn_attention_last_refusal();

}  // namespace tally::kernels::cuda
