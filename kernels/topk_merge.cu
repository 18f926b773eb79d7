// Device merge of two top-k candidate sets of the same queries (the NCCL reduction's merge step).
// Each input row is sorted best first by (score, id) with empty slots (id -1) last; one thread per
// query walks both rows like the merge step of merge sort and writes the best K distinct ids, exactly
// as the host merge (hpcrag.search.topk.merge_topk) orders them.
//
// Compile-time parameters (-D): K, LARGER_IS_BETTER (1 for inner product and cosine, 0 for L2).
#ifndef K
#error "define K"
#endif
#ifndef LARGER_IS_BETTER
#error "define LARGER_IS_BETTER"
#endif

namespace {
// (score_a, id_a) ranks strictly before (score_b, id_b).
__device__ __forceinline__ bool before(float score_a, long long id_a, float score_b, long long id_b) {
  if (id_a < 0) return false;
  if (id_b < 0) return true;
#if LARGER_IS_BETTER
  if (score_a != score_b) return score_a > score_b;
#else
  if (score_a != score_b) return score_a < score_b;
#endif
  return id_a < id_b;
}
}  // namespace

extern "C" __global__ void topk_merge(const float* __restrict__ a_scores, const long long* __restrict__ a_ids,
                                      const float* __restrict__ b_scores, const long long* __restrict__ b_ids,
                                      float* __restrict__ out_scores, long long* __restrict__ out_ids,
                                      int nq, float worst) {
  const int q = blockIdx.x * blockDim.x + threadIdx.x;
  if (q >= nq) return;
  const long long base = static_cast<long long>(q) * K;
  int i = 0, j = 0, o = 0;
  // An id in both sets (a replicated row found in two shards) is written once, at its best place.
  while (o < K && (i < K || j < K)) {
    const bool take_a =
        j >= K || (i < K && !before(b_scores[base + j], b_ids[base + j], a_scores[base + i], a_ids[base + i]));
    const float score = take_a ? a_scores[base + i] : b_scores[base + j];
    const long long id = take_a ? a_ids[base + i] : b_ids[base + j];
    if (take_a) {
      ++i;
    } else {
      ++j;
    }
    if (id < 0) break;  // rows are sorted with empty slots last: nothing real follows
    bool seen = false;
    for (int p = 0; p < o && !seen; ++p) seen = out_ids[base + p] == id;
    if (seen) continue;
    out_scores[base + o] = score;
    out_ids[base + o] = id;
    ++o;
  }
  for (; o < K; ++o) {
    out_scores[base + o] = worst;
    out_ids[base + o] = -1;
  }
}
