// argmax.cu — greedy sampling: the index of the largest logit of each row.
//
// Launch: grid = (num_rows), block = (1024) — any multiple of 32 up to 1024 works.
// logits is [num_rows][vocab]; out[row] receives the index. Ties go to the lowest index, as
// Sampler.ArgMax does; NaN logits never win (comparisons with NaN are false).
#include "common.cuh"

extern "C" __global__ void argmax(const float* __restrict__ logits, int vocab, int* __restrict__ out)
{
    __shared__ float best_v[32];
    __shared__ int best_i[32];
    const float* row = logits + (tm_i64)blockIdx.x * vocab;
    const int lane = threadIdx.x % TM_WARP, warp = threadIdx.x / TM_WARP, warps = blockDim.x / TM_WARP;

    // idx = INT_MAX marks "nothing yet": the first non-NaN value is taken even when it is −inf, so a row
    // of −inf still yields an index; NaN is never taken (r == r is false only for NaN), so it never wins.
    float v = TM_NEG_INF;
    int idx = 0x7fffffff;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x)
    {
        float r = row[i];
        if (r > v || (idx == 0x7fffffff && r == r)) { v = r; idx = i; }
    }

#pragma unroll
    for (int offset = TM_WARP / 2; offset > 0; offset >>= 1)
        tm_arg_better(v, idx, __shfl_xor_sync(TM_FULL_MASK, v, offset), __shfl_xor_sync(TM_FULL_MASK, idx, offset));
    if (lane == 0)
    {
        best_v[warp] = v;
        best_i[warp] = idx;
    }
    __syncthreads();
    if (warp == 0)
    {
        v = lane < warps ? best_v[lane] : TM_NEG_INF;
        idx = lane < warps ? best_i[lane] : 0x7fffffff;
#pragma unroll
        for (int offset = TM_WARP / 2; offset > 0; offset >>= 1)
            tm_arg_better(v, idx, __shfl_xor_sync(TM_FULL_MASK, v, offset), __shfl_xor_sync(TM_FULL_MASK, idx, offset));
        if (lane == 0) out[blockIdx.x] = idx == 0x7fffffff ? 0 : idx;
    }
}
