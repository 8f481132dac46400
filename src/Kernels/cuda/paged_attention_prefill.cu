// paged_attention_prefill.cu — prefill attention over the paged KV cache: many query tokens per sequence
// (a prompt, or a chunk of one), causal, sequences of different lengths in one launch.
//
// Launch: grid = (ceil(max_query_len / TM_PF_QUERIES), num_heads, num_seqs), block = (TM_PF_WARPS × 32) = (128),
// no dynamic shared memory. The batch is the flattened one of the decode kernel, with several rows per sequence:
//   q, out:         [num_tokens][num_heads × head_dim]   (q after rope)
//   k/v_cache:      one layer, [slot][num_kv_heads × head_dim], already holding every query token's own key
//                   and value (reshape_and_cache runs first) and, for a chunked prefill, the earlier chunks'
//   block_tables:   [num_seqs][max_blocks_per_seq] physical block ids
//   query_start:    [num_seqs + 1] first row of each sequence; sequence s has rows query_start[s] … query_start[s+1]−1
//                   (vLLM's cu_seqlens_q), in increasing position order
//   positions:      [num_tokens] each row's position: it attends to positions first … position, where first is 0,
//                   or position + 1 − sliding_window when sliding_window > 0 (so the context length of the
//                   sequence is its last row's position + 1, and a chunk's first position may be > 0)
//   head_dim ≤ TM_PA_MAX_HEAD_DIM (256); GQA: query head h reads kv head h / (num_heads / num_kv_heads).
// Blocks past the end of a shorter sequence's rows return at once.
//
// Flash attention on CUDA cores: a block takes TM_PF_QUERIES consecutive rows of one sequence and one head,
// and walks the keys they see in tiles of TM_PF_KEYS positions. The block's warps load each tile's keys and
// values once into shared memory (as float, whatever the cache type), and every warp scores its own rows
// against the whole tile: each lane holds dims lane, lane+32, … of the row's q and of its running output, as
// in the decode kernel. The softmax is online per tile (running max m, sum l, output rescaled when m grows),
// so no scores matrix is kept and any length runs in the same 32 KiB of shared memory. Equals
// CpuForward.AttentionItem for every row: softmax(q·k · scale) · v over the row's positions.
#include "common.cuh"

#define TM_PF_WARPS 4
#define TM_PF_ROWS_PER_WARP 4
#define TM_PF_QUERIES (TM_PF_WARPS * TM_PF_ROWS_PER_WARP)
// 16 keys: the key and value tiles at head_dim 256 take 2 × 16 KiB, which leaves room under the 48 KiB a block
// may have without opting in; the 16 scores of a row stay in registers.
#define TM_PF_KEYS 16
#define TM_PA_MAX_HEAD_DIM 256
#define TM_PF_DIMS_PER_LANE (TM_PA_MAX_HEAD_DIM / TM_WARP)

template <typename T>
__device__ __forceinline__ void tm_paged_attention_prefill(
    float* __restrict__ out, const float* __restrict__ q, const T* __restrict__ k_cache, const T* __restrict__ v_cache,
    const int* __restrict__ block_tables, const int* __restrict__ query_start, const int* __restrict__ positions,
    int max_blocks_per_seq, int num_heads, int num_kv_heads, int head_dim, int block_size, float scale, int sliding_window)
{
    __shared__ float ks[TM_PF_KEYS][TM_PA_MAX_HEAD_DIM], vs[TM_PF_KEYS][TM_PA_MAX_HEAD_DIM];

    const int head = blockIdx.y, seq = blockIdx.z;
    const int row0 = query_start[seq] + blockIdx.x * TM_PF_QUERIES, row_end = query_start[seq + 1];
    if (row0 >= row_end) return;   // the whole block: no barrier is reached
    const int lane = threadIdx.x % TM_WARP, warp = threadIdx.x / TM_WARP;
    const int kv_dim = num_kv_heads * head_dim, q_dim = num_heads * head_dim;
    const int kv_head = head / (num_heads / num_kv_heads);
    const int* table = block_tables + (tm_i64)seq * max_blocks_per_seq;

    // The keys the block's rows see: from the first row's first position to the last row's position.
    const int last_row = row0 + TM_PF_QUERIES <= row_end ? row0 + TM_PF_QUERIES - 1 : row_end - 1;
    const int key_end = positions[last_row] + 1;
    const int key_begin = sliding_window > 0 && positions[row0] + 1 > sliding_window ? positions[row0] + 1 - sliding_window : 0;

    // Warp w owns rows w, w + 4, w + 8, w + 12 of the block, so the rows of a short last block spread over the warps.
    int pos[TM_PF_ROWS_PER_WARP], first[TM_PF_ROWS_PER_WARP];
    float qr[TM_PF_ROWS_PER_WARP][TM_PF_DIMS_PER_LANE], acc[TM_PF_ROWS_PER_WARP][TM_PF_DIMS_PER_LANE];
    float m[TM_PF_ROWS_PER_WARP], l[TM_PF_ROWS_PER_WARP];
#pragma unroll
    for (int r = 0; r < TM_PF_ROWS_PER_WARP; r++)
    {
        const int row = row0 + warp + r * TM_PF_WARPS;
        pos[r] = row < row_end ? positions[row] : -1;   // −1: no row, sees no key
        first[r] = sliding_window > 0 && pos[r] + 1 > sliding_window ? pos[r] + 1 - sliding_window : 0;
        const float* qh = q + (tm_i64)row * q_dim + (tm_i64)head * head_dim;
#pragma unroll
        for (int i = 0; i < TM_PF_DIMS_PER_LANE; i++)
        {
            int d = lane + i * TM_WARP;
            qr[r][i] = row < row_end && d < head_dim ? qh[d] * scale : 0.0f;   // the 1/sqrt(head_dim) scale folded into q
            acc[r][i] = 0.0f;
        }
        m[r] = TM_NEG_INF;
        l[r] = 0.0f;
    }

    for (int tile = key_begin; tile < key_end; tile += TM_PF_KEYS)
    {
        __syncthreads();   // every warp is done with the previous tile
        for (int k = warp; k < TM_PF_KEYS; k += TM_PF_WARPS)
        {
            const int j = tile + k;
            if (j < key_end)
            {
                const tm_i64 slot = (tm_i64)table[j / block_size] * block_size + j % block_size;
                const tm_kv_row<T> kj(k_cache, slot, kv_dim, kv_head, head_dim);
                const tm_kv_row<T> vj(v_cache, slot, kv_dim, kv_head, head_dim);
                for (int d = lane; d < head_dim; d += TM_WARP)
                {
                    ks[k][d] = kj[d];
                    vs[k][d] = vj[d];
                }
            }
            else
            {
                // Past the last position: masked, but its value still meets a zero weight, and 0 · (a stale NaN
                // left in shared memory by another block) would be NaN.
                for (int d = lane; d < head_dim; d += TM_WARP) ks[k][d] = vs[k][d] = 0.0f;
            }
        }
        __syncthreads();

#pragma unroll
        for (int r = 0; r < TM_PF_ROWS_PER_WARP; r++)
        {
            // The same for every lane of the warp, so the shuffles below are reached by all of them or none.
            // Keys past key_end are stale tile entries: masked here like every position the row does not see.
            if (pos[r] < tile || first[r] >= tile + TM_PF_KEYS) continue;
            float s[TM_PF_KEYS];
            float tile_max = TM_NEG_INF;
#pragma unroll
            for (int k = 0; k < TM_PF_KEYS; k++)
            {
                float dot = 0.0f;
#pragma unroll
                for (int i = 0; i < TM_PF_DIMS_PER_LANE; i++)
                {
                    int d = lane + i * TM_WARP;
                    if (d < head_dim) dot += qr[r][i] * ks[k][d];
                }
                const int j = tile + k;
                s[k] = j >= first[r] && j <= pos[r] ? tm_warp_sum(dot) : TM_NEG_INF;
                tile_max = fmaxf(tile_max, s[k]);
            }
            // The tile holds ≥ 1 seen position (checked above), so tile_max and m_new are finite.
            const float m_new = fmaxf(m[r], tile_max);
            const float correction = __expf(m[r] - m_new);   // 0 on the row's first tile (m = −inf)
            float p[TM_PF_KEYS];
            float sum = 0.0f;
#pragma unroll
            for (int k = 0; k < TM_PF_KEYS; k++)
            {
                p[k] = __expf(s[k] - m_new);                 // 0 for a masked key
                sum += p[k];
            }
            l[r] = l[r] * correction + sum;
            m[r] = m_new;
#pragma unroll
            for (int i = 0; i < TM_PF_DIMS_PER_LANE; i++)
            {
                int d = lane + i * TM_WARP;
                if (d < head_dim)
                {
                    float o = acc[r][i] * correction;
#pragma unroll
                    for (int k = 0; k < TM_PF_KEYS; k++) o += p[k] * vs[k][d];
                    acc[r][i] = o;
                }
            }
        }
    }

#pragma unroll
    for (int r = 0; r < TM_PF_ROWS_PER_WARP; r++)
    {
        const int row = row0 + warp + r * TM_PF_WARPS;
        if (row >= row_end) continue;
        const float inv = 1.0f / l[r];   // the row's own position is always seen: l ≥ 1
        float* oh = out + (tm_i64)row * q_dim + (tm_i64)head * head_dim;
#pragma unroll
        for (int i = 0; i < TM_PF_DIMS_PER_LANE; i++)
        {
            int d = lane + i * TM_WARP;
            if (d < head_dim) oh[d] = acc[r][i] * inv;
        }
    }
}

extern "C" __global__ void paged_attention_prefill_f32(
    float* out, const float* q, const float* k_cache, const float* v_cache, const int* block_tables, const int* query_start,
    const int* positions, int max_blocks_per_seq, int num_heads, int num_kv_heads, int head_dim, int block_size, float scale,
    int sliding_window)
{
    tm_paged_attention_prefill<float>(out, q, k_cache, v_cache, block_tables, query_start, positions, max_blocks_per_seq,
                                      num_heads, num_kv_heads, head_dim, block_size, scale, sliding_window);
}

extern "C" __global__ void paged_attention_prefill_f16(
    float* out, const float* q, const tm_f16* k_cache, const tm_f16* v_cache, const int* block_tables, const int* query_start,
    const int* positions, int max_blocks_per_seq, int num_heads, int num_kv_heads, int head_dim, int block_size, float scale,
    int sliding_window)
{
    tm_paged_attention_prefill<tm_f16>(out, q, k_cache, v_cache, block_tables, query_start, positions, max_blocks_per_seq,
                                       num_heads, num_kv_heads, head_dim, block_size, scale, sliding_window);
}

extern "C" __global__ void paged_attention_prefill_q8_0(
    float* out, const float* q, const tm_q8_0* k_cache, const tm_q8_0* v_cache, const int* block_tables, const int* query_start,
    const int* positions, int max_blocks_per_seq, int num_heads, int num_kv_heads, int head_dim, int block_size, float scale,
    int sliding_window)
{
    tm_paged_attention_prefill<tm_q8_0>(out, q, k_cache, v_cache, block_tables, query_start, positions, max_blocks_per_seq,
                                        num_heads, num_kv_heads, head_dim, block_size, scale, sliding_window);
}
