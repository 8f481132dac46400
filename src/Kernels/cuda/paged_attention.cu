// paged_attention.cu — decode attention: one query token per sequence, keys and values read
// through the sequence's block table from the paged KV cache (see reshape_and_cache.cu for the layout).
//
// One pass, paged_attention_decode_{f32,f16,q8_0} (the cache's storage type; q8_0 rows are ggml blocks, read
// through tm_kv_row in common.cuh):
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
//
// Split-K, paged_attention_decode_split_{f32,f16,q8_0} then paged_attention_reduce (vLLM's v2): one block walks
// a sequence's whole context serially, so a few long sequences leave most SMs idle and the step waits for
// them. The split kernel cuts the seen positions [first, ctx) into partitions of partition_size positions,
// one block each, and writes the block's unnormalised result — max score m_p, sum l_p = Σ e^(s − m_p) and
// acc_p = Σ e^(s − m_p)·v — instead of the output; the reduce kernel merges a sequence's partitions the way
// the warps of one block are merged. The host chooses between the two (PagedAttentionDecodePlan).
// Split launch: grid = (num_heads, num_seqs, max_partitions), block = (128); arguments as the one-pass kernel
// but `out` replaced by
//   max_logits, exp_sums: [num_seqs][num_heads][max_partitions]
//   partial_out:          [num_seqs][num_heads][max_partitions][head_dim]
// and one more, partition_size (PagedAttentionDecodePlan.PartitionSize: vLLM's 512, which gives each warp 128
// positions to amortise the block's start and merge, and keeps the partials small — a 32 K context has 64; a batch
// of fewer than 512 blocks takes smaller ones, down to 64, so that a single sequence's decode fills the GPU).
// A block whose partition starts at or after ctx (a shorter sequence of the batch) writes nothing.
// Reduce launch: grid = (num_heads, num_seqs), block = (128): reads the partitions a sequence has,
// ceil((ctx − first) / partition_size), and writes out as the one-pass kernel does.
#include "common.cuh"

#define TM_PA_WARPS 4
#define TM_PA_MAX_HEAD_DIM 256
#define TM_PA_DIMS_PER_LANE (TM_PA_MAX_HEAD_DIM / TM_WARP)
// The positions a query at context length ctx sees: [first, ctx).
__device__ __forceinline__ int tm_pa_first(int ctx, int sliding_window)
{
    return sliding_window > 0 && ctx > sliding_window ? ctx - sliding_window : 0;
}

// SPLIT = false: all of [first, ctx), normalised into out. SPLIT = true: partition blockIdx.z only, its
// unnormalised partial into max_logits / exp_sums / partial_out (out unused).
template <typename T, bool SPLIT>
__device__ __forceinline__ void tm_paged_attention_decode(
    float* __restrict__ out, float* __restrict__ max_logits, float* __restrict__ exp_sums, float* __restrict__ partial_out,
    const float* __restrict__ q, const T* __restrict__ k_cache, const T* __restrict__ v_cache,
    const int* __restrict__ block_tables, const int* __restrict__ context_lens, int max_blocks_per_seq,
    int num_heads, int num_kv_heads, int head_dim, int block_size, float scale, int sliding_window, int partition_size)
{
    __shared__ float warp_m[TM_PA_WARPS], warp_l[TM_PA_WARPS];
    __shared__ float warp_acc[TM_PA_WARPS][TM_PA_MAX_HEAD_DIM];

    const int head = blockIdx.x, seq = blockIdx.y;
    const int lane = threadIdx.x % TM_WARP, warp = threadIdx.x / TM_WARP;
    const int kv_dim = num_kv_heads * head_dim;
    const int kv_head = head / (num_heads / num_kv_heads);
    const int ctx = context_lens[seq];
    int first = tm_pa_first(ctx, sliding_window), end = ctx;
    if (SPLIT)
    {
        first += blockIdx.z * partition_size;
        if (first >= ctx) return;   // the whole block: no barrier is reached
        end = ctx - first < partition_size ? ctx : first + partition_size;
    }
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

    for (int j = first + warp; j < end; j += TM_PA_WARPS)
    {
        const tm_i64 slot = (tm_i64)table[j / block_size] * block_size + j % block_size;
        const tm_kv_row<T> kj(k_cache, slot, kv_dim, kv_head, head_dim);
        const tm_kv_row<T> vj(v_cache, slot, kv_dim, kv_head, head_dim);
        float dot = 0.0f;
#pragma unroll
        for (int i = 0; i < TM_PA_DIMS_PER_LANE; i++)
        {
            int d = lane + i * TM_WARP;
            if (d < head_dim) dot += qr[i] * kj[d];
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
            if (d < head_dim) acc[i] = acc[i] * correction + p * vj[d];
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
    // A warp that saw no position has m = −inf and contributes e^(−inf) = 0 (the block sees ≥ 1 position, so M is finite).
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
    if (SPLIT)
    {
        const tm_i64 part = ((tm_i64)seq * num_heads + head) * gridDim.z + blockIdx.z;
        if (threadIdx.x == 0)
        {
            max_logits[part] = big;
            exp_sums[part] = total;
        }
        float* ph = partial_out + part * head_dim;
        for (int d = threadIdx.x; d < head_dim; d += blockDim.x)
        {
            float o = 0.0f;
#pragma unroll
            for (int w = 0; w < TM_PA_WARPS; w++) o += warp_acc[w][d] * weight[w];
            ph[d] = o;
        }
        return;
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
    tm_paged_attention_decode<float, false>(out, nullptr, nullptr, nullptr, q, k_cache, v_cache, block_tables, context_lens, max_blocks_per_seq,
                                     num_heads, num_kv_heads, head_dim, block_size, scale, sliding_window, 0);
}

extern "C" __global__ void paged_attention_decode_f16(
    float* out, const float* q, const tm_f16* k_cache, const tm_f16* v_cache, const int* block_tables,
    const int* context_lens, int max_blocks_per_seq, int num_heads, int num_kv_heads, int head_dim,
    int block_size, float scale, int sliding_window)
{
    tm_paged_attention_decode<tm_f16, false>(out, nullptr, nullptr, nullptr, q, k_cache, v_cache, block_tables, context_lens, max_blocks_per_seq,
                                      num_heads, num_kv_heads, head_dim, block_size, scale, sliding_window, 0);
}

// A Q8_0 cache (ggml's 8-bit blocks; head_dim a multiple of 32).
// __launch_bounds__ on q8_0's one-pass and the f32/f16 split kernels: CUDA 13's ptxas gives them 55–64 registers
// without (a block fewer per SM than CUDA 11.8's); capped at the budget's blocks they ran 3–4 % faster on an H100.
extern "C" __global__ void __launch_bounds__(128, 9) paged_attention_decode_q8_0(
    float* out, const float* q, const tm_q8_0* k_cache, const tm_q8_0* v_cache, const int* block_tables,
    const int* context_lens, int max_blocks_per_seq, int num_heads, int num_kv_heads, int head_dim,
    int block_size, float scale, int sliding_window)
{
    tm_paged_attention_decode<tm_q8_0, false>(out, nullptr, nullptr, nullptr, q, k_cache, v_cache, block_tables, context_lens, max_blocks_per_seq,
                                              num_heads, num_kv_heads, head_dim, block_size, scale, sliding_window, 0);
}

extern "C" __global__ void __launch_bounds__(128, 10) paged_attention_decode_split_f32(
    float* max_logits, float* exp_sums, float* partial_out, const float* q, const float* k_cache, const float* v_cache,
    const int* block_tables, const int* context_lens, int max_blocks_per_seq, int num_heads, int num_kv_heads,
    int head_dim, int block_size, float scale, int sliding_window, int partition_size)
{
    tm_paged_attention_decode<float, true>(nullptr, max_logits, exp_sums, partial_out, q, k_cache, v_cache, block_tables,
                                           context_lens, max_blocks_per_seq, num_heads, num_kv_heads, head_dim, block_size,
                                           scale, sliding_window, partition_size);
}

extern "C" __global__ void __launch_bounds__(128, 10) paged_attention_decode_split_f16(
    float* max_logits, float* exp_sums, float* partial_out, const float* q, const tm_f16* k_cache, const tm_f16* v_cache,
    const int* block_tables, const int* context_lens, int max_blocks_per_seq, int num_heads, int num_kv_heads,
    int head_dim, int block_size, float scale, int sliding_window, int partition_size)
{
    tm_paged_attention_decode<tm_f16, true>(nullptr, max_logits, exp_sums, partial_out, q, k_cache, v_cache, block_tables,
                                            context_lens, max_blocks_per_seq, num_heads, num_kv_heads, head_dim, block_size,
                                            scale, sliding_window, partition_size);
}

extern "C" __global__ void paged_attention_decode_split_q8_0(
    float* max_logits, float* exp_sums, float* partial_out, const float* q, const tm_q8_0* k_cache, const tm_q8_0* v_cache,
    const int* block_tables, const int* context_lens, int max_blocks_per_seq, int num_heads, int num_kv_heads,
    int head_dim, int block_size, float scale, int sliding_window, int partition_size)
{
    tm_paged_attention_decode<tm_q8_0, true>(nullptr, max_logits, exp_sums, partial_out, q, k_cache, v_cache, block_tables,
                                             context_lens, max_blocks_per_seq, num_heads, num_kv_heads, head_dim, block_size,
                                             scale, sliding_window, partition_size);
}

// Merges the partitions of one (head, sequence): M = max_p m_p, L = Σ_p l_p·e^(m_p − M),
// out = Σ_p acc_p·e^(m_p − M) / L. Every thread computes M and L itself from the few partition
// statistics (a 32 K context has 64), which saves the block the barriers a shared reduction takes.
extern "C" __global__ void paged_attention_reduce(
    float* out, const float* max_logits, const float* exp_sums, const float* partial_out, const int* context_lens,
    int max_partitions, int num_heads, int head_dim, int sliding_window, int partition_size)
{
    const int head = blockIdx.x, seq = blockIdx.y;
    const int ctx = context_lens[seq];
    const int parts = (ctx - tm_pa_first(ctx, sliding_window) + partition_size - 1) / partition_size;
    const tm_i64 base = ((tm_i64)seq * num_heads + head) * max_partitions;
    float big = TM_NEG_INF;
    for (int p = 0; p < parts; p++) big = fmaxf(big, max_logits[base + p]);
    float total = 0.0f;
    for (int p = 0; p < parts; p++) total += exp_sums[base + p] * __expf(max_logits[base + p] - big);
    const float inv_total = 1.0f / total;
    float* oh = out + (tm_i64)seq * num_heads * head_dim + (tm_i64)head * head_dim;
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x)
    {
        float o = 0.0f;
        for (int p = 0; p < parts; p++) o += partial_out[(base + p) * head_dim + d] * __expf(max_logits[base + p] - big);
        oh[d] = o * inv_total;
    }
}
