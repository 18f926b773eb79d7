// Fused IVF list scan on tensor cores: FP16 inputs, FP32 accumulation (nvcuda::wmma 16x16x16), and a
// per-(query, list) top-k kept in shared memory, so the distance matrix never reaches global memory.
//
// Work is list-major: a task is a range of rows of one inverted list (long lists are split so that many
// warps share them) and up to 16 queries that probe the list (the host groups the pairs). One warp
// per task: for each tile of 16 list vectors it forms the 16x16 score tile with
// D_PAD/16 WMMA steps, parks it in shared memory, and lanes 0..15 each fold one query's row of it into
// that query's running top-k (replace the worst, rescan for the new worst: O(K) per accepted
// candidate, rare once the list is warm). Each (task, query) writes one unordered candidate row of K;
// the host's merge orders them.
//
// Compile-time parameters (-D): D_PAD (dimension padded to a multiple of 16), K (top-k per pair,
// K <= 256 so 16 rows of K (score, row) slots fit in shared memory), METRIC (0 inner product, 1 L2 via
// |q|^2 - 2 q.v + |v|^2 with precomputed norms). Inputs: queries gathered per task, 16 rows per task
// (rows of unused slots are zero and their output index is -1); vectors padded with 16 zero rows at
// the end so the last tile of the last list can be read whole.
#include <cuda_fp16.h>
#include <mma.h>

#ifndef D_PAD
#error "define D_PAD (a multiple of 16)"
#endif
#ifndef K
#error "define K"
#endif
#ifndef METRIC
#define METRIC 0
#endif
#if D_PAD % 16 != 0
#error "D_PAD must be a multiple of 16"
#endif

using namespace nvcuda;

namespace {
constexpr int TILE = 16;
constexpr float WORST = 3.402823466e+38f;  // keys are "smaller is better": distance, or -score

// (key_a, row_a) ranks after (key_b, row_b); empty slots (row -1) rank after everything.
__device__ __forceinline__ bool worse(float key_a, int row_a, float key_b, int row_b) {
  if (row_a < 0 || row_b < 0) return row_a < 0 && row_b >= 0;
  return key_a > key_b || (key_a == key_b && row_a > row_b);
}
}  // namespace

extern "C" __global__ void __launch_bounds__(32) ivf_scan_wmma(
    const half* __restrict__ task_queries,  // [ntasks * 16, D_PAD]
    const float* __restrict__ task_qnorms,  // [ntasks * 16]
    const long long* __restrict__ task_begin,  // [ntasks] first row of the task's range of a list
    const long long* __restrict__ task_end,    // [ntasks] one past its last row
    const int* __restrict__ task_out,       // [ntasks * 16] candidate row of each slot, -1 = unused
    const half* __restrict__ vectors,       // [n + 16, D_PAD]
    const float* __restrict__ sqnorms,      // [n]
    const long long* __restrict__ ids,      // [n]
    float* __restrict__ out_keys,           // [candidate rows, K]
    long long* __restrict__ out_ids,        // [candidate rows, K]
    int ntasks) {
  __shared__ float tile[TILE * TILE];
  __shared__ float best_key[TILE][K];
  __shared__ int best_row[TILE][K];

  const int task = blockIdx.x;
  if (task >= ntasks) return;
  const int lane = threadIdx.x;
  const long long begin = task_begin[task];
  const long long end = task_end[task];

  for (int i = lane; i < TILE * K; i += 32) {
    best_key[i / K][i % K] = WORST;
    best_row[i / K][i % K] = -1;
  }
  float worst_key = WORST;  // lanes 0..15: the worst kept key of their row, and where it sits
  int worst_row = -1;
  int worst_pos = 0;
  const int out_row = lane < TILE ? task_out[task * TILE + lane] : -1;
#if METRIC == 1
  const float qnorm = lane < TILE ? task_qnorms[task * TILE + lane] : 0.0f;
#endif
  __syncwarp();

  const half* a_base = task_queries + static_cast<long long>(task) * TILE * D_PAD;
  for (long long first = begin; first < end; first += TILE) {
    wmma::fragment<wmma::accumulator, TILE, TILE, TILE, float> acc;
    wmma::fill_fragment(acc, 0.0f);
    const half* b_base = vectors + first * D_PAD;
#pragma unroll 4
    for (int step = 0; step < D_PAD; step += TILE) {
      wmma::fragment<wmma::matrix_a, TILE, TILE, TILE, half, wmma::row_major> a;
      wmma::fragment<wmma::matrix_b, TILE, TILE, TILE, half, wmma::col_major> b;
      wmma::load_matrix_sync(a, a_base + step, D_PAD);  // 16 queries x 16 dims
      wmma::load_matrix_sync(b, b_base + step, D_PAD);  // 16 dims x 16 vectors (rows of `vectors`)
      wmma::mma_sync(acc, a, b, acc);
    }
    wmma::store_matrix_sync(tile, acc, TILE, wmma::mem_row_major);
    __syncwarp();
    if (lane < TILE && out_row >= 0) {
      const int valid = static_cast<int>(min(static_cast<long long>(TILE), end - first));
      for (int c = 0; c < valid; ++c) {
        const int row = static_cast<int>(first + c);
        const float dot = tile[lane * TILE + c];
#if METRIC == 1
        const float key = fmaxf(qnorm - 2.0f * dot + sqnorms[row], 0.0f);
#else
        const float key = -dot;
#endif
        if (worse(worst_key, worst_row, key, row)) {  // better than the worst kept: replace it
          best_key[lane][worst_pos] = key;
          best_row[lane][worst_pos] = row;
          worst_key = best_key[lane][0];
          worst_row = best_row[lane][0];
          worst_pos = 0;
          for (int j = 1; j < K; ++j) {
            if (worse(best_key[lane][j], best_row[lane][j], worst_key, worst_row)) {
              worst_key = best_key[lane][j];
              worst_row = best_row[lane][j];
              worst_pos = j;
            }
          }
        }
      }
    }
    __syncwarp();
  }

  if (lane < TILE && out_row >= 0) {
    for (int j = 0; j < K; ++j) {
      const int row = best_row[lane][j];
      out_keys[static_cast<long long>(out_row) * K + j] = best_key[lane][j];
      out_ids[static_cast<long long>(out_row) * K + j] = row >= 0 ? ids[row] : -1;
    }
  }
}
