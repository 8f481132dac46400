// paged_attention.cu — decode attention: one query token per sequence, keys and values read
// through the sequence's block table from the paged KV cache (see reshape_and_cache.cu for the layout).
//
// Launch: grid = (num_heads, num_seqs), block = (TM_PA_WARPS × 32) = (128), no dynamic shared memory.
//   q:            [num_seqs][num_heads × head_dim]   (after rope)
//   out:          [num_seqs][num_heads × head_dim]
//   k/v_cache:    one layer, [slot][num_kv_heads × head_dim]
//   block_tables: [num_seqs][max_blocks_per_seq] physical block ids
//   context_lens: [num_seqs] tokens to attend to, the query's own (already cached) token included,
//                 i.e. position + 1
//   sliding_window: 0 for none; else only the last `sliding_window` positions are seen (Gemma 3)
//   head_dim ≤ TM_PA_MAX_HEAD_DIM (256); GQA: query head h reads kv head h / (num_heads / num_kv_heads).
//
// Each warp takes every TM_PA_WARPS-th position and keeps an online softmax (running max m, sum l,
// and the weighted value sum acc, each lane holding dims lane, lane+32, …); the warps' partial
// results are merged at the end through shared memory. No scores array, so any context length
// runs with the same 4 KiB of shared memory. Equals CpuForward.AttentionItem: softmax(q·k · scale) · v.
#include "common.cuh"

#define TM_PA_WARPS 4
#define TM_PA_MAX_HEAD_DIM 256
#define TM_PA_DIMS_PER_LANE (TM_PA_MAX_HEAD_DIM / TM_WARP)

template <typename T>
__device__ __forceinline__ void tm_paged_attention_decode(
    float* __restrict__ out, const float* __restrict__ q, const T* __restrict__ k_cache, const T* __restrict__ v_cache,
    const int* __restrict__ block_tables, const int* __restrict__ context_lens, int max_blocks_per_seq,
    int num_heads, int num_kv_heads, int head_dim, int block_size, float scale, int sliding_window)
{
    __shared__ float warp_m[TM_PA_WARPS], warp_l[TM_PA_WARPS];
    __shared__ float warp_acc[TM_PA_WARPS][TM_PA_MAX_HEAD_DIM];

    const int head = blockIdx.x, seq = blockIdx.y;
    const int lane = threadIdx.x % TM_WARP, warp = threadIdx.x / TM_WARP;
    const int kv_dim = num_kv_heads * head_dim;
    const int kv_head = head / (num_heads / num_kv_heads);
    const int ctx = context_lens[seq];
    const int first = sliding_window > 0 && ctx > sliding_window ? ctx - sliding_window : 0;
    const int* table = block_tables + (tm_i64)seq * max_blocks_per_seq;
    const float* qh = q + (tm_i64)seq * num_heads * head_dim + (tm_i64)head * head_dim;

    float qr[TM_PA_DIMS_PER_LANE], acc[TM_PA_DIMS_PER_LANE];
#pragma unroll
    for (int i = 0; i < TM_PA_DIMS_PER_LANE; i++)
    {
        int d = lane + i * TM_WARP;
        qr[i] = d < head_dim ? qh[d] * scale : 0.0f;   // fold the 1/sqrt(head_dim) scale into q once
        acc[i] = 0.0f;
    }
    float m = TM_NEG_INF, l = 0.0f;

    for (int j = first + warp; j < ctx; j += TM_PA_WARPS)
    {
        const tm_i64 slot = (tm_i64)table[j / block_size] * block_size + j % block_size;
        const T* kj = k_cache + slot * kv_dim + (tm_i64)kv_head * head_dim;
        const T* vj = v_cache + slot * kv_dim + (tm_i64)kv_head * head_dim;
        float dot = 0.0f;
#pragma unroll
        for (int i = 0; i < TM_PA_DIMS_PER_LANE; i++)
        {
            int d = lane + i * TM_WARP;
            if (d < head_dim) dot += qr[i] * tm_load(kj + d);
        }
        const float s = tm_warp_sum(dot);          // every lane holds the score of position j
        const float m_new = fmaxf(m, s);
        const float correction = __expf(m - m_new); // 0 on the warp's first position (m = −inf)
        const float p = __expf(s - m_new);
        l = l * correction + p;
#pragma unroll
        for (int i = 0; i < TM_PA_DIMS_PER_LANE; i++)
        {
            int d = lane + i * TM_WARP;
            if (d < head_dim) acc[i] = acc[i] * correction + p * tm_load(vj + d);
        }
        m = m_new;
    }

    if (lane == 0)
    {
        warp_m[warp] = m;
        warp_l[warp] = l;
    }
#pragma unroll
    for (int i = 0; i < TM_PA_DIMS_PER_LANE; i++)
    {
        int d = lane + i * TM_WARP;
        if (d < head_dim) warp_acc[warp][d] = acc[i];
    }
    __syncthreads();

    // Merge: M = max_w m_w, L = Σ_w l_w·e^(m_w − M), out = Σ_w acc_w·e^(m_w − M) / L.
    // A warp that saw no position has m = −inf and contributes e^(−inf) = 0 (ctx ≥ 1, so M is finite).
    float big = warp_m[0];
#pragma unroll
    for (int w = 1; w < TM_PA_WARPS; w++) big = fmaxf(big, warp_m[w]);
    float weight[TM_PA_WARPS];
    float total = 0.0f;
#pragma unroll
    for (int w = 0; w < TM_PA_WARPS; w++)
    {
        weight[w] = warp_m[w] == TM_NEG_INF ? 0.0f : __expf(warp_m[w] - big);
        total += warp_l[w] * weight[w];
    }
    const float inv_total = 1.0f / total;
    float* oh = out + (tm_i64)seq * num_heads * head_dim + (tm_i64)head * head_dim;
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x)
    {
        float o = 0.0f;
#pragma unroll
        for (int w = 0; w < TM_PA_WARPS; w++) o += warp_acc[w][d] * weight[w];
        oh[d] = o * inv_total;
    }
}

extern "C" __global__ void paged_attention_decode_f32(
    float* out, const float* q, const float* k_cache, const float* v_cache, const int* block_tables,
    const int* context_lens, int max_blocks_per_seq, int num_heads, int num_kv_heads, int head_dim,
    int block_size, float scale, int sliding_window)
{
    tm_paged_attention_decode<float>(out, q, k_cache, v_cache, block_tables, context_lens, max_blocks_per_seq,
                                     num_heads, num_kv_heads, head_dim, block_size, scale, sliding_window);
}

extern "C" __global__ void paged_attention_decode_f16(
    float* out, const float* q, const tm_f16* k_cache, const tm_f16* v_cache, const int* block_tables,
    const int* context_lens, int max_blocks_per_seq, int num_heads, int num_kv_heads, int head_dim,
    int block_size, float scale, int sliding_window)
{
    tm_paged_attention_decode<tm_f16>(out, q, k_cache, v_cache, block_tables, context_lens, max_blocks_per_seq,
                                      num_heads, num_kv_heads, head_dim, block_size, scale, sliding_window);
}
