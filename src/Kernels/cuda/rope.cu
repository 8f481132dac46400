// rope.cu — rotary position embedding of q and k, in place, for every token of the batch.
//
// Launch: grid = (num_tokens), block = (128); the block's threads stride over
// (num_heads + num_kv_heads) × (rot_dim / 2) rotation pairs of its token.
// q is [num_tokens][num_heads × head_dim], k is [num_tokens][num_kv_heads × head_dim].
//
// As CpuForward.Rope / RopeInverseFrequencies (llama.cpp's rope with freq factors):
//   inv_freq_i = base^(−2i / rot_dim) / linear_scale / freq_factors[i]   (freq_factors may be null)
//   θ = pos · inv_freq_i
//   NORM (neox = 0) rotates the adjacent pair (2i, 2i+1); NEOX (neox = 1) rotates (i, i + rot_dim/2).
// θ and its sine/cosine are computed in double, as the CPU reference does: at positions in the
// thousands a float θ would be off by ~1e-3 rad. Dimensions from rot_dim to head_dim are left as they are.
#include "common.cuh"

__device__ __forceinline__ void tm_rotate(float* head, int i, int pairs, int neox, double cos_t, double sin_t)
{
    int a = neox ? i : 2 * i;
    int b = neox ? i + pairs : 2 * i + 1;
    float x0 = head[a], x1 = head[b];
    float c = (float)cos_t, s = (float)sin_t;
    head[a] = x0 * c - x1 * s;
    head[b] = x0 * s + x1 * c;
}

extern "C" __global__ void rope(float* __restrict__ q, float* __restrict__ k, const int* __restrict__ positions,
                                const float* __restrict__ freq_factors, int num_heads, int num_kv_heads,
                                int head_dim, int rot_dim, float freq_base, float linear_scale, int neox)
{
    const int t = blockIdx.x;
    const int pairs = rot_dim / 2;
    const double pos = (double)positions[t];
    float* qt = q + (tm_i64)t * num_heads * head_dim;
    float* kt = k + (tm_i64)t * num_kv_heads * head_dim;
    const int total = (num_heads + num_kv_heads) * pairs;
    for (int item = threadIdx.x; item < total; item += blockDim.x)
    {
        int head = item / pairs, i = item % pairs;
        double inv_freq = pow((double)freq_base, -2.0 * i / rot_dim) / linear_scale;
        if (freq_factors != 0) inv_freq /= freq_factors[i];
        double s, c;
        sincos(pos * inv_freq, &s, &c);
        float* h = head < num_heads ? qt + (tm_i64)head * head_dim : kt + (tm_i64)(head - num_heads) * head_dim;
        tm_rotate(h, i, pairs, neox, c, s);
    }
}
