// sampling.cu — fused sampling: one launch turns a batch of logit rows into tokens, with the CPU sampler's
// semantics (src/Engine/Sampling/Sampler.cs): logit bias, repetition / presence / frequency penalties and
// suppressed tokens, then greedy argmax, or temperature → top-k → softmax → top-p → min-p → a seeded draw;
// and the log-probability of the chosen token with the top-N log-probabilities of the raw logits.
//
// Launch: grid = (num_rows), block = (256) — any multiple of 32 up to 1024 works; one block per row.
//   logits        [*][vocab]         raw, as the model produced them (read only: logprobs are of these)
//   logit_rows    [num_rows]         the logits row each row samples from (a step's rows in any order, one row
//                                    for several forks of a request), or null: row r samples logits row r
//   rows          [num_rows]         tm_sampling_row, packed by CudaSampler
//   adjustments   the rows' token adjustments, row r's at [rows[r].adjust_begin, + adjust_count), one per token id:
//                 a sparse list of the tokens seen (with their output counts), the biased and the suppressed ones —
//                 hundreds of entries per row, where a dense count array would be a vocabulary of ints per row per step
//   work          [num_rows][vocab]  out: the logits after bias, penalties and suppression
//   probs         [num_rows][vocab]  out: the distribution the token was drawn from (0 for tokens that cannot be
//                                    drawn; one-hot for greedy rows); scratch while the kernel runs
//   tokens, token_logprobs [num_rows]; top_ids, top_logprobs [num_rows][max_top]
//
// The sampler's order is logit descending, ties by lower token id. Top-k and top-p cut that order without sorting
// it: the cut is found by a binary search over the logits' order-preserving 32-bit keys, each step one pass over
// the row and a block sum (a count for top-k, the probability mass for top-p), then by token id among equal logits.
// That is 32 + log2(vocab) passes per cut: exact, deterministic (no atomics), and fine next to a forward pass; a
// radix select would take fewer.
// The draw needs no order: any fixed order of the kept tokens gives each its probability. Each thread sums its own
// tokens, thread 0 finds the thread whose running total passes u·total, and that thread walks its tokens. (That
// order depends on the block size: the same seed draws the same tokens at the block size KernelLaunches declares.)
// The uniform u comes from Philox4x32-10 keyed by the request's seed, counter = the request's step: a run with a seed
// is reproducible on any GPU and batch, but it is NOT the CPU sampler's random stream (System.Random), so seeded
// GPU samples differ from seeded CPU samples.
#include "common.cuh"

// One row's sampling parameters; the layout of CudaSampler.Row (14 four-byte fields).
struct tm_sampling_row
{
    float temperature;          // ≤ 0: greedy (the host folds the CPU's other greedy case, top_k == 1, into this)
    int top_k;                  // ≤ 0 or ≥ vocab: off
    float top_p;                // ≥ 1: off
    float min_p;                // ≤ 0: off
    float repetition_penalty;   // 1: off
    float presence_penalty;
    float frequency_penalty;
    int top_logprobs;           // < 0: no logprobs; else the chosen token's logprob and this many top ones
    int adjust_begin, adjust_count;
    unsigned seed_lo, seed_hi;  // Philox key
    unsigned step_lo, step_hi;  // Philox counter: tokens the request has generated so far
};

// A token of a row whose logit is adjusted; CudaSampler merges bias, the penalties' counts and suppression per id.
struct tm_token_adjustment
{
    int token;
    float bias;                 // logit_bias (0 when none)
    int output_count;           // times generated: presence and frequency penalties
    int flags;                  // TM_ADJUST_*
};
#define TM_ADJUST_REPEATED 1    // in the prompt or the output: the repetition penalty applies
#define TM_ADJUST_SUPPRESSED 2  // can never be picked (min_tokens keeps end-of-generation out)

// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011), the constants of Random123.
__device__ __forceinline__ void tm_philox4x32_10(unsigned c[4], unsigned k0, unsigned k1)
{
    for (int round = 0; round < 10; round++)
    {
        unsigned hi0 = __umulhi(0xD2511F53u, c[0]), lo0 = 0xD2511F53u * c[0];
        unsigned hi1 = __umulhi(0xCD9E8D57u, c[2]), lo1 = 0xCD9E8D57u * c[2];
        unsigned n0 = hi1 ^ c[1] ^ k0, n2 = hi0 ^ c[3] ^ k1;
        c[0] = n0; c[1] = lo1; c[2] = n2; c[3] = lo0;
        k0 += 0x9E3779B9u;   // the golden ratio and sqrt(3) - 1, as Weyl sequence increments
        k1 += 0xBB67AE85u;
    }
}

// Order-preserving key of a logit: a > b ⇔ key(a) > key(b), −0 and +0 equal; NaN below −inf (never kept first).
__device__ __forceinline__ unsigned tm_order_key(float v)
{
    if (v != v) return 0u;
    unsigned u = __float_as_uint(v);
    if (u == 0x80000000u) u = 0u;
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

__device__ __forceinline__ float tm_key_value(unsigned key)
{
    return __uint_as_float((key & 0x80000000u) ? (key ^ 0x80000000u) : ~key);
}

__device__ __forceinline__ double tm_block_sum_f64(double v, double* scratch)
{
    int lane = threadIdx.x % TM_WARP, warp = threadIdx.x / TM_WARP, warps = blockDim.x / TM_WARP;
#pragma unroll
    for (int offset = TM_WARP / 2; offset > 0; offset >>= 1) v += __shfl_xor_sync(TM_FULL_MASK, v, offset);
    __syncthreads();                  // scratch may still be read by a previous call
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < warps ? scratch[lane] : 0.0;
#pragma unroll
    for (int offset = TM_WARP / 2; offset > 0; offset >>= 1) v += __shfl_xor_sync(TM_FULL_MASK, v, offset);
    return v;
}

// The first of two (key, id) candidates in the sampler's order: larger key, or the same key at a lower id.
__device__ __forceinline__ void tm_key_better(unsigned& k, int& i, unsigned ok, int oi)
{
    if (ok > k || (ok == k && oi < i))
    {
        k = ok;
        i = oi;
    }
}

// The first (key, id) over the block; every thread gets it. "Nothing" is (0, INT_MAX).
__device__ __forceinline__ void tm_block_first(unsigned& k, int& i, unsigned* sk, int* si)
{
    int lane = threadIdx.x % TM_WARP, warp = threadIdx.x / TM_WARP, warps = blockDim.x / TM_WARP;
#pragma unroll
    for (int offset = TM_WARP / 2; offset > 0; offset >>= 1)
        tm_key_better(k, i, __shfl_xor_sync(TM_FULL_MASK, k, offset), __shfl_xor_sync(TM_FULL_MASK, i, offset));
    __syncthreads();
    if (lane == 0) { sk[warp] = k; si[warp] = i; }
    __syncthreads();
    k = lane < warps ? sk[lane] : 0u;
    i = lane < warps ? si[lane] : 0x7fffffff;
#pragma unroll
    for (int offset = TM_WARP / 2; offset > 0; offset >>= 1)
        tm_key_better(k, i, __shfl_xor_sync(TM_FULL_MASK, k, offset), __shfl_xor_sync(TM_FULL_MASK, i, offset));
}

// A cut in the sampler's order: token i is at or before it iff key(i) > key, or key(i) == key and i <= id.
struct tm_cut
{
    unsigned key;
    int id;
};

__device__ __forceinline__ bool tm_within(unsigned key, int id, tm_cut cut)
{
    return key > cut.key || (key == cut.key && id <= cut.id);
}

__device__ __forceinline__ bool tm_reached(double total, double target, bool strict)
{
    return strict ? total > target : total >= target;
}

// The token of `row` at which the running total of weights, taken in the sampler's order, first reaches `target`
// (passes it, when strict). weight null: 1 per token (top-k: the k-th token). When the whole row does not reach it,
// the cut keeps every token. Every pass reads only the calling thread's own tokens (i = threadIdx.x + n·blockDim.x),
// the partition every other pass of the kernel uses, so it needs no barrier before it. All threads of the block must
// call it; each gets the cut.
__device__ tm_cut tm_find_cut(const float* __restrict__ row, const float* __restrict__ weight, int vocab, double target,
                              bool strict, double* scratch, unsigned* sk, int* si)
{
    // The largest key whose tokens at or above it reach the target, bit by bit from the top.
    unsigned key = 0;
    for (int bit = 31; bit >= 0; bit--)
    {
        unsigned candidate = key | (1u << bit);
        double total = 0;
        for (int i = threadIdx.x; i < vocab; i += blockDim.x)
            if (tm_order_key(row[i]) >= candidate) total += weight ? (double)weight[i] : 1.0;
        if (tm_reached(tm_block_sum_f64(total, scratch), target, strict)) key = candidate;
    }
    // Among the tokens with that key the order is by id: the weight above the key, then the lowest id at which the
    // tied tokens bring the total to the target. Usually one token has the key, and it is the cut.
    double above = 0, tied = 0, tied_count = 0;
    unsigned found = 0;
    int first_tied = 0x7fffffff;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x)
    {
        unsigned k = tm_order_key(row[i]);
        double w = weight ? (double)weight[i] : 1.0;
        if (k > key) above += w;
        else if (k == key)
        {
            tied += w;
            tied_count += 1;
            tm_key_better(found, first_tied, 1u, i);
        }
    }
    above = tm_block_sum_f64(above, scratch);
    tied = tm_block_sum_f64(tied, scratch);
    tied_count = tm_block_sum_f64(tied_count, scratch);
    tm_block_first(found, first_tied, sk, si);
    if (!tm_reached(above + tied, target, strict)) return {0u, 0x7fffffff};   // not reached: everything is kept
    if (tied_count == 1) return {key, first_tied};
    int lo = first_tied, hi = vocab - 1;
    while (lo < hi)
    {
        int mid = lo + (hi - lo) / 2;
        double total = 0;
        for (int i = threadIdx.x; i <= mid; i += blockDim.x)
            if (tm_order_key(row[i]) == key) total += weight ? (double)weight[i] : 1.0;
        if (tm_reached(above + tm_block_sum_f64(total, scratch), target, strict)) hi = mid;
        else lo = mid + 1;
    }
    return {key, lo};
}

extern "C" __global__ void sample(const float* __restrict__ logits, const int* __restrict__ logit_rows, int vocab, const tm_sampling_row* __restrict__ rows,
                                  const tm_token_adjustment* __restrict__ adjustments, float* __restrict__ work,
                                  float* __restrict__ probs, int* __restrict__ tokens, float* __restrict__ token_logprobs,
                                  int* __restrict__ top_ids, float* __restrict__ top_logprobs, int max_top)
{
    __shared__ double scratch[32];
    __shared__ unsigned first_key[32];
    __shared__ int first_id[32];
    __shared__ double thread_mass[1024];
    __shared__ int drawn;
    __shared__ int drawing_thread;
    __shared__ double drawing_residual;

    const tm_sampling_row p = rows[blockIdx.x];
    const float* raw = logits + (tm_i64)(logit_rows ? logit_rows[blockIdx.x] : (int)blockIdx.x) * vocab;
    float* adjusted = work + (tm_i64)blockIdx.x * vocab;
    float* prob = probs + (tm_i64)blockIdx.x * vocab;

    // 1. Bias, penalties and suppression, per token in the CPU sampler's order. Each token id has one entry, so
    //    no two threads write the same logit.
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) adjusted[i] = raw[i];
    if (p.adjust_count > 0)
    {
        __syncthreads();
        for (int j = threadIdx.x; j < p.adjust_count; j += blockDim.x)
        {
            tm_token_adjustment a = adjustments[p.adjust_begin + j];
            float v = adjusted[a.token] + a.bias;
            if ((a.flags & TM_ADJUST_REPEATED) && p.repetition_penalty != 1.0f)
                v = v > 0 ? v / p.repetition_penalty : v * p.repetition_penalty;
            if (a.output_count > 0 && (p.presence_penalty != 0.0f || p.frequency_penalty != 0.0f))
                v -= p.presence_penalty + __fmul_rn(p.frequency_penalty, (float)a.output_count);   // no FMA: C# rounds the product
            if (a.flags & TM_ADJUST_SUPPRESSED) v = TM_NEG_INF;
            adjusted[a.token] = v;
        }
        __syncthreads();
    }

    // 2. The first token in the sampler's order: the greedy pick, and the top of every cut below.
    unsigned top_key = 0;
    int top = 0x7fffffff;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) tm_key_better(top_key, top, tm_order_key(adjusted[i]), i);
    tm_block_first(top_key, top, first_key, first_id);
    const float max = tm_key_value(top_key);

    int token = top;
    if (p.temperature > 0.0f && max != TM_NEG_INF)   // everything suppressed: the CPU sampler returns its first token too
    {
        // 3. Top-k, then softmax over the survivors at this temperature (probabilities as the CPU computes them:
        //    float exp, double sum, float quotient).
        tm_cut cut = {0u, 0x7fffffff};
        if (p.top_k > 0 && p.top_k < vocab) cut = tm_find_cut(adjusted, nullptr, vocab, (double)p.top_k, false, scratch, first_key, first_id);
        double sum = 0;
        for (int i = threadIdx.x; i < vocab; i += blockDim.x)
        {
            float e = tm_within(tm_order_key(adjusted[i]), i, cut) ? expf((adjusted[i] - max) / p.temperature) : 0.0f;
            prob[i] = e;
            sum += e;
        }
        sum = tm_block_sum_f64(sum, scratch);
        for (int i = threadIdx.x; i < vocab; i += blockDim.x) prob[i] = (float)(prob[i] / sum);

        // 4. Top-p: the shortest prefix whose probability reaches top_p. Min-p: of that, the tokens at least
        //    min_p × the first one's probability (1 / sum: its exponent is exp(0) = 1).
        if (p.top_p < 1.0f)
        {
            cut = tm_find_cut(adjusted, prob, vocab, (double)p.top_p, false, scratch, first_key, first_id);
            for (int i = threadIdx.x; i < vocab; i += blockDim.x)
                if (!tm_within(tm_order_key(adjusted[i]), i, cut)) prob[i] = 0.0f;
        }
        if (p.min_p > 0.0f)
        {
            float threshold = p.min_p * (float)(1.0 / sum);
            for (int i = threadIdx.x; i < vocab; i += blockDim.x)
                if (prob[i] < threshold && i != top) prob[i] = 0.0f;
        }

        // 5. The draw: u · total located in (thread, then the thread's tokens in id order) — a fixed order, so
        //    token i is drawn with probability prob[i] / total.
        double mine = 0;
        for (int i = threadIdx.x; i < vocab; i += blockDim.x) mine += prob[i];
        thread_mass[threadIdx.x] = mine;
        __syncthreads();
        if (threadIdx.x == 0)
        {
            unsigned c[4] = {p.step_lo, p.step_hi, 0u, 0u};
            tm_philox4x32_10(c, p.seed_lo, p.seed_hi);
            double total = 0;
            for (int t = 0; t < (int)blockDim.x; t++) total += thread_mass[t];
            double r = c[0] * (1.0 / 4294967296.0) * total;   // u < 1 by at least 2^-32: r < total
            double before = 0;
            drawing_thread = -1;
            for (int t = 0; t < (int)blockDim.x; t++)
            {
                if (before + thread_mass[t] > r) { drawing_thread = t; break; }
                before += thread_mass[t];
            }
            drawing_residual = r - before;
            drawn = top;       // total 0 (cannot happen: the first token has probability 1 / sum > 0)
            scratch[0] = total;
        }
        __syncthreads();
        if ((int)threadIdx.x == drawing_thread)
        {
            double r = drawing_residual;
            int last = top;
            for (int i = threadIdx.x; i < vocab; i += blockDim.x)
            {
                if (prob[i] <= 0.0f) continue;
                last = i;
                r -= prob[i];
                if (r < 0) break;
            }
            drawn = last;      // rounding can leave r ≥ 0 past the last token: it is then the pick
        }
        __syncthreads();
        token = drawn;
        double total = scratch[0];
        for (int i = threadIdx.x; i < vocab; i += blockDim.x) prob[i] = (float)(prob[i] / total);
    }
    else
    {
        for (int i = threadIdx.x; i < vocab; i += blockDim.x) prob[i] = i == token ? 1.0f : 0.0f;
    }

    // 6. Logprobs of the raw logits (not of the adjusted or truncated distribution), as the CPU sampler reports them.
    float token_logprob = 0.0f;
    if (p.top_logprobs >= 0)
    {
        float m = TM_NEG_INF;
        for (int i = threadIdx.x; i < vocab; i += blockDim.x) m = fmaxf(m, raw[i]);
        unsigned mk = tm_order_key(m);
        int unused = 0;                                 // the maximum's id is not needed: all threads pass the same
        tm_block_first(mk, unused, first_key, first_id);
        m = tm_key_value(mk);
        double sum = 0;
        for (int i = threadIdx.x; i < vocab; i += blockDim.x) sum += exp((double)(raw[i] - m));
        sum = tm_block_sum_f64(sum, scratch);
        float lse = (float)(m + log(sum));
        token_logprob = raw[token] - lse;

        // The top N one at a time: the first token after the previous one in the sampler's order.
        unsigned prev_key = 0xffffffffu;
        int prev = -1;
        for (int n = 0; n < p.top_logprobs && n < max_top; n++)
        {
            unsigned k = 0;
            int id = 0x7fffffff;
            for (int i = threadIdx.x; i < vocab; i += blockDim.x)
            {
                unsigned ki = tm_order_key(raw[i]);
                if (ki < prev_key || (ki == prev_key && i > prev)) tm_key_better(k, id, ki, i);
            }
            tm_block_first(k, id, first_key, first_id);
            if (threadIdx.x == 0)
            {
                bool any = id != 0x7fffffff;   // fewer tokens than asked for
                top_ids[(tm_i64)blockIdx.x * max_top + n] = any ? id : -1;
                top_logprobs[(tm_i64)blockIdx.x * max_top + n] = any ? raw[id] - lse : TM_NEG_INF;
            }
            prev_key = k;
            prev = id;
        }
    }
    if (threadIdx.x == 0)
    {
        tokens[blockIdx.x] = token;
        token_logprobs[blockIdx.x] = token_logprob;
    }
}
