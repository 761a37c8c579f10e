// CUDA kernels: embedding gather, and its deterministic backward without float atomics.
// Backward sorts the token positions by id (a stable LSD radix sort of 8-bit digits written here, so that its
// scratch is a formula of N that a plan made without a GPU can hold: see cuda_embedding_backward_workspace_bytes),
// then one block per distinct id sums its rows of dout in position order, in T: the same additions in the same
// order as the CPU backend, hence bit-identical results (bf16: summed in float, rounded once). Ids absent from the
// batch get zero rows.
#include "core/cuda/common.cuh"
#include "core/kernels/cuda/convert.cuh"
#include "core/kernels/kernels.h"

namespace tally::kernels::cuda {

namespace {

using tally::kernels::align256;
using tally::cuda::aligned16;
using tally::cuda::ceil_div;
using tally::cuda::kPackSize;
using tally::cuda::stream;
using tally::cuda::Vec;

// out (N, C) = weight[indices]: blockIdx.y walks rows, threads walk W-wide column groups.
// indices: (N); weight: (V, C).
template <class T, int W>
__global__ void embedding_forward_kernel(const int32_t* __restrict__ indices, const T* __restrict__ weight,
                                         T* __restrict__ out, int64_t N, int64_t C) {
  const int64_t groups = C / W;
  const int64_t g = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (g >= groups) return;
  for (int64_t r = blockIdx.y; r < N; r += gridDim.y) {
    const Vec<T, W>* src = reinterpret_cast<const Vec<T, W>*>(weight + int64_t(indices[r]) * C);
    reinterpret_cast<Vec<T, W>*>(out + r * C)[g] = src[g];
  }
}

// One pass of the radix sort, digit = (key >> shift) & 255, in three launches:
//  sort_count:   block t counts tile t's keys per digit (thread d counts digit d): counts[d * tiles + t];
//  sort_offsets: one block turns the counts (digit-major) into exclusive prefix sums: where tile t's keys of digit d
//                start in the output;
//  sort_scatter: thread d walks tile t in order and moves its digit's keys (and their values) there: stable.
// values_in == nullptr: the values are the keys' positions (the first pass).
constexpr int kSortThreads = int(kCudaSortDigits);
constexpr int kScanThreads = 1024;
static_assert(kCudaSortTile % kSortThreads == 0, "a tile loads in whole rounds of the block");

__device__ inline int64_t tile_load(const uint32_t* keys, uint32_t* tile, int shift, int64_t N) {
  const int64_t t0 = int64_t(blockIdx.x) * kCudaSortTile;
  const int64_t count = N - t0 < kCudaSortTile ? N - t0 : kCudaSortTile;
  for (int64_t i = threadIdx.x; i < count; i += kSortThreads) tile[i] = (keys[t0 + i] >> shift) & 255u;
  __syncthreads();
  return count;
}

// sort_count: keys: (N); counts: (kCudaSortDigits, tiles), digit-major. One block of kSortThreads per tile.
__global__ void __launch_bounds__(kSortThreads)
    sort_count(const uint32_t* __restrict__ keys, uint32_t* __restrict__ counts, int shift, int64_t N) {
  __shared__ uint32_t tile[kCudaSortTile];  // the tile's digits
  const int64_t count = tile_load(keys, tile, shift, N);
  const uint32_t d = threadIdx.x;
  uint32_t n = 0;
  for (int64_t i = 0; i < count; ++i) n += tile[i] == d;
  counts[int64_t(d) * gridDim.x + blockIdx.x] = n;
}

// sort_offsets: counts: (length) = (kCudaSortDigits, tiles), replaced in place by their exclusive prefix sums. One
// block of kScanThreads.
__global__ void __launch_bounds__(kScanThreads) sort_offsets(uint32_t* __restrict__ counts, int64_t length) {
  __shared__ uint32_t sums[kScanThreads];
  const int64_t per = (length + kScanThreads - 1) / kScanThreads;
  const int64_t a = threadIdx.x * per, b = a + per < length ? a + per : length;
  uint32_t own = 0;
  for (int64_t i = a; i < b; ++i) own += counts[i];
  sums[threadIdx.x] = own;
  __syncthreads();
  for (int step = 1; step < kScanThreads; step *= 2) {  // inclusive scan of the threads' sums (Hillis-Steele)
    const uint32_t add = threadIdx.x >= step ? sums[threadIdx.x - step] : 0u;
    __syncthreads();
    sums[threadIdx.x] += add;
    __syncthreads();
  }
  uint32_t at = sums[threadIdx.x] - own;
  for (int64_t i = a; i < b; ++i) {
    const uint32_t c = counts[i];
    counts[i] = at;
    at += c;
  }
}

// sort_scatter: keys_in, values_in (null: the positions), keys_out, values_out: (N); offsets: (kCudaSortDigits,
// tiles), sort_offsets' output. One block of kSortThreads per tile.
__global__ void __launch_bounds__(kSortThreads)
    sort_scatter(const uint32_t* __restrict__ keys_in, const uint32_t* __restrict__ values_in,
                 uint32_t* __restrict__ keys_out, uint32_t* __restrict__ values_out, const uint32_t* __restrict__ offsets,
                 int shift, int64_t N) {
  __shared__ uint32_t tile[kCudaSortTile];
  const int64_t count = tile_load(keys_in, tile, shift, N);
  const int64_t t0 = int64_t(blockIdx.x) * kCudaSortTile;
  const uint32_t d = threadIdx.x;
  uint32_t at = offsets[int64_t(d) * gridDim.x + blockIdx.x];
  for (int64_t i = 0; i < count; ++i) {
    if (tile[i] != d) continue;
    keys_out[at] = keys_in[t0 + i];
    values_out[at] = values_in ? values_in[t0 + i] : uint32_t(t0 + i);
    ++at;
  }
}

// Block j handles sorted position j if it starts a run of equal ids: dweight[id] = sum of dout rows of the run.
// sorted_ids, positions: (N) (ids sorted, and each one's position in indices); dout: (N, C); dweight: (V, C), rows of
// ids absent from the batch untouched. N blocks.
template <class T>
__global__ void embedding_backward_kernel(const uint32_t* __restrict__ sorted_ids, const uint32_t* __restrict__ positions,
                                          const T* __restrict__ dout, T* __restrict__ dweight, int64_t N, int64_t C) {
  const int64_t start = blockIdx.x;
  const uint32_t id = sorted_ids[start];
  if (start > 0 && sorted_ids[start - 1] == id) return;
  int64_t end = start + 1;
  while (end < N && sorted_ids[end] == id) ++end;
  T* dst = dweight + int64_t(id) * C;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    acc_t<T> acc = acc_t<T>(0);
    for (int64_t k = start; k < end; ++k) acc += to_acc(dout[int64_t(positions[k]) * C + c]);
    dst[c] = from_acc<T>(acc);
  }
}

}  // namespace

// out (N, C) = the rows of weight (V, C) at indices (N); 16-byte vectors when C and the pointers allow.
template <class T>
void embedding_forward(const int32_t* indices, const T* weight, T* out, int64_t N, int64_t C) {
  if (N == 0 || C == 0) return;
  constexpr int P = kPackSize<T>;
  const unsigned rows = unsigned(N < 65535 ? N : 65535);
  if (C % P == 0 && aligned16(weight) && aligned16(out)) {
    const int64_t groups = C / P;
    const int threads = groups >= 256 ? 256 : int(ceil_div(groups, 32) * 32);
    embedding_forward_kernel<T, P><<<dim3(unsigned(ceil_div(groups, threads)), rows), threads, 0, stream()>>>(indices, weight,
                                                                                                            out, N, C);
  } else {
    const int threads = C >= 256 ? 256 : int(ceil_div(C, 32) * 32);
    embedding_forward_kernel<T, 1><<<dim3(unsigned(ceil_div(C, threads)), rows), threads, 0, stream()>>>(indices, weight,
                                                                                                        out, N, C);
  }
  TALLY_CUDA_LAUNCH_CHECK("embedding_forward_kernel");
}

// dweight (V, C) zeroed, then each id's rows of dout (N, C) added in position order: indices (N) radix-sorted by id
// in workspace (cuda_embedding_backward_workspace_bytes(N) bytes), then embedding_backward_kernel.
template <class T>
void embedding_backward(const int32_t* indices, const T* dout, T* dweight, void* workspace, int64_t N, int64_t V,
                        int64_t C) {
  if (V == 0 || C == 0) return;
  TALLY_CUDA_CHECK("embedding_backward", cudaMemsetAsync(dweight, 0, size_t(V * C) * sizeof(T), stream()));
  if (N == 0) return;
  TALLY_CHECK(N <= int64_t(INT32_MAX) && V <= int64_t(UINT32_MAX), "[embedding_backward] sizes beyond 32 bits: N=", N,
              " V=", V);
  TALLY_CHECK(workspace != nullptr, "[embedding_backward] no workspace for N=", N);
  int end_bit = 1;  // sort only the bits an id in [0, V) can have
  while (end_bit < 32 && (int64_t(1) << end_bit) < V) ++end_bit;
  // Ids are checked non-negative by the op, so sorting their bits as unsigned keeps their order.
  const int64_t ids_bytes = align256(N * int64_t(sizeof(uint32_t)));
  char* base = static_cast<char*>(workspace);
  uint32_t* keys[2] = {reinterpret_cast<uint32_t*>(base), reinterpret_cast<uint32_t*>(base + ids_bytes)};
  uint32_t* values[2] = {reinterpret_cast<uint32_t*>(base + 2 * ids_bytes), reinterpret_cast<uint32_t*>(base + 3 * ids_bytes)};
  uint32_t* counts = reinterpret_cast<uint32_t*>(base + 4 * ids_bytes);
  const unsigned tiles = unsigned(cuda_sort_tiles(N));
  const uint32_t* keys_in = reinterpret_cast<const uint32_t*>(indices);
  const uint32_t* values_in = nullptr;  // the first pass makes the positions
  int out = 0;
  for (int shift = 0; shift < end_bit; shift += 8, out ^= 1) {
    sort_count<<<tiles, kSortThreads, 0, stream()>>>(keys_in, counts, shift, N);
    TALLY_CUDA_LAUNCH_CHECK("embedding_backward sort_count");
    sort_offsets<<<1, kScanThreads, 0, stream()>>>(counts, int64_t(tiles) * kCudaSortDigits);
    TALLY_CUDA_LAUNCH_CHECK("embedding_backward sort_offsets");
    sort_scatter<<<tiles, kSortThreads, 0, stream()>>>(keys_in, values_in, keys[out], values[out], counts, shift, N);
    TALLY_CUDA_LAUNCH_CHECK("embedding_backward sort_scatter");
    keys_in = keys[out];
    values_in = values[out];
  }
  const int threads = C >= 256 ? 256 : int(ceil_div(C, 32) * 32);
  embedding_backward_kernel<T><<<unsigned(N), threads, 0, stream()>>>(keys_in, values_in, dout, dweight, N, C);
  TALLY_CUDA_LAUNCH_CHECK("embedding_backward_kernel");
}

#define TALLY_INSTANTIATE(T)                                                                  \
  template void embedding_forward<T>(const int32_t*, const T*, T*, int64_t, int64_t);         \
  template void embedding_backward<T>(const int32_t*, const T*, T*, void*, int64_t, int64_t, int64_t);
TALLY_INSTANTIATE(float)
TALLY_INSTANTIATE(double)
TALLY_INSTANTIATE(bf16)
#undef TALLY_INSTANTIATE

}  // namespace tally::kernels::cuda
