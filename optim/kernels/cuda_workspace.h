// The workspace layouts of the CUDA optimizer kernels, in plain C++: the tiling of a factored tensor, how a workspace
// is cut into 256-byte-aligned pieces, and so the bytes each kernel takes. Compiled in every build, so that a plan
// made without a GPU (an optimizer on a meta device planning for CUDA) holds the very bytes the kernels take; the
// kernels (optim/kernels/cuda/) carve their workspaces with the same functions.
#pragma once
#include <cstdint>

#include "core/kernels/kernels.h"
#include "optim/kernels/optim_kernels.h"

namespace tally::optim::kernels::cuda::detail {

constexpr int kCudaThreads = 256;     // threads per block everywhere
constexpr int kTileCols = kCudaThreads;  // columns per tile (one per thread)
constexpr int kTileRows = 32;         // rows per tile at most (column partials: numel/4 bytes at 32 rows)
constexpr int64_t kFillTiles = 512;   // fewer tiles than this leave most SMs idle: tiles shrink to 16, then 8 rows
constexpr int kMaxBlocks = 1024;      // grid of the grid-stride reductions
constexpr int kSums = 4;              // partial sums per block in the grid-stride reductions

// The tiling of a factored (P, n, Q, m, S) tensor seen as (P, n, K), K = Q*m*S.
struct Plan {
  int64_t K = 0;
  int64_t tiles_k = 0;   // column tiles of kTileCols
  int64_t tile_rows = 0;  // rows per tile: kTileRows, or 16 or 8 for a small matrix (see make_plan)
  int64_t tiles_i = 0;   // row tiles of tile_rows per matrix
  bool fused_rows = true;  // Q*S == 1: the row statistic is the tile's row sum (warp sums in the tile kernel)
  int64_t row_terms = 0;   // partials per row statistic: tiles_k (fused) or 1 (separate row kernel)
};

inline Plan make_plan(const FactoredLayout& l) {
  Plan p;
  p.K = l.Q * l.m * l.S;
  p.tiles_k = (p.K + kTileCols - 1) / kTileCols;
  // Each thread of a tile walks its rows in sequence: a small matrix (GPT-2's 768x768 has 72 tiles of 32 rows)
  // gets shorter tiles, and more of them, so that more SMs share the walk. Depends on the shape only.
  p.tile_rows = kTileRows;
  while (p.tile_rows > 8 && l.P * ((l.n + p.tile_rows - 1) / p.tile_rows) * p.tiles_k < kFillTiles) p.tile_rows /= 2;
  p.tiles_i = (l.n + p.tile_rows - 1) / p.tile_rows;
  p.fused_rows = l.Q * l.S == 1;
  p.row_terms = p.fused_rows ? p.tiles_k : 1;
  return p;
}

// Cuts a workspace into 256-byte-aligned pieces, in order; with a null base it only counts (the *_workspace_bytes
// functions carve nothing to learn the size).
struct Carver {
  void* base = nullptr;
  int64_t bytes = 0;  // taken so far
  template <class T>
  T* take(int64_t count) {
    T* at = base ? reinterpret_cast<T*>(static_cast<char*>(base) + bytes) : nullptr;
    bytes += tally::kernels::align256(count * int64_t(sizeof(T)));
    return at;
  }
};

struct Workspace {
  double* row_partials = nullptr;    // (rows, row_terms)
  double* col_partials = nullptr;    // (P, tiles_i, K)
  float* row_factor = nullptr;       // (rows)
  float* col_factor = nullptr;       // (cols)
  double* block_sums = nullptr;      // (kMaxBlocks, kSums)
  float* divisor = nullptr;          // the clip divisor of this step
  double* cross = nullptr;           // ZeRO 1, rows cut: a round's sums over every rank (RoundCarries, the longest)
  double* total = nullptr;           // ZeRO 1: the sum of u^2 over every rank
  int64_t bytes = 0;
};

inline Workspace carve(void* base, const FactoredLayout& l, const Plan& p) {
  Workspace w;
  Carver c{base};
  w.row_partials = c.take<double>(l.rows() * p.row_terms);
  w.col_partials = c.take<double>(l.P * p.tiles_i * p.K);
  w.row_factor = c.take<float>(l.rows());
  w.col_factor = c.take<float>(l.cols());
  w.block_sums = c.take<double>(kMaxBlocks * kSums);
  w.divisor = c.take<float>(1);
  w.cross = c.take<double>(round_doubles(l, RoundCarries::column_and_update_sums));
  w.total = c.take<double>(1);
  w.bytes = c.bytes;
  return w;
}

// Workspace of the dense (unfactored) steps: block sums, the divisor (or LAMB's trust ratio) and, for ZeRO 1,
// the sums completed over the ranks (the clip's sum of u^2, or LAMB's two norms).
struct DenseWorkspace {
  double* block_sums = nullptr;
  float* divisor = nullptr;
  double* total = nullptr;  // (2)
  int64_t bytes = 0;
};
inline DenseWorkspace carve_dense(void* base) {
  DenseWorkspace w;
  Carver c{base};
  w.block_sums = c.take<double>(kMaxBlocks * kSums);
  w.divisor = c.take<float>(1);
  w.total = c.take<double>(2);
  w.bytes = c.bytes;
  return w;
}

// SM3 on a tensor of rank >= 2 seen as (R, K): R the product of every dim but the last, K the last.
struct Sm3Workspace {
  float* col_max = nullptr;  // (tiles_i, K): each row tile's column maxima
  float* row_max = nullptr;  // (R, tiles_k): each row's maxima per column tile
  double* block_sums = nullptr;
  int64_t bytes = 0;
};
inline Sm3Workspace carve_sm3(void* base, int64_t R, int64_t K) {
  const int64_t tiles_i = (R + kTileRows - 1) / kTileRows, tiles_k = (K + kTileCols - 1) / kTileCols;
  Sm3Workspace s;
  Carver c{base};
  s.col_max = c.take<float>(tiles_i * K);
  s.row_max = c.take<float>(R * tiles_k);
  s.block_sums = c.take<double>(kMaxBlocks * kSums);
  s.bytes = c.bytes;
  return s;
}

}  // namespace tally::optim::kernels::cuda::detail

namespace tally::optim::kernels {

// The bytes of workspace each CUDA optimizer kernel takes (its *_workspace_bytes), for plans.
inline int64_t cuda_factored_workspace_bytes(const FactoredLayout& l) {
  return cuda::detail::carve(nullptr, l, cuda::detail::make_plan(l)).bytes;
}
inline int64_t cuda_dense_workspace_bytes() { return cuda::detail::carve_dense(nullptr).bytes; }
inline int64_t cuda_sm3_workspace_bytes(const Sm3Shape& shape) {
  if (shape.rank < 2) return cuda_dense_workspace_bytes();
  int64_t R = 1;
  for (int k = 0; k + 1 < shape.rank; ++k) R *= shape.dims[k];
  return cuda::detail::carve_sm3(nullptr, R, shape.dims[shape.rank - 1]).bytes;
}

}  // namespace tally::optim::kernels
