// reshape_and_cache.cu — writes each token's key and value into its KV-cache slot.
//
// Launch: grid = (num_tokens), block = (256); each thread strides over kv_dim.
// k and v are [num_tokens][kv_dim] (kv_dim = num_kv_heads × head_dim, after rope).
// The cache pointers are one layer's part of the paged store, laid out as
// src/Engine/KvCache/PagedKvStore.cs is: [layer][slot][kv_dim] with
// slot = block_table[pos / block_size] · block_size + pos % block_size (the slot mapping);
// so the host passes cache_base + layer · num_slots · kv_dim.
// A negative slot marks a padding token (as in vLLM) and is skipped.
// A q8_0 cache's rows are bytes instead: kv_dim / 32 blocks of 34 (an f16 scale, 32 int8 values), a head's blocks at
// kv_head · head_dim / 32 · 34 (tm_kv_row<tm_q8_0> reads them).
#include "common.cuh"

template <typename T>
__device__ __forceinline__ void tm_reshape_and_cache(const float* __restrict__ k, const float* __restrict__ v,
                                                     T* __restrict__ k_cache, T* __restrict__ v_cache,
                                                     const int* __restrict__ slot_mapping, int kv_dim)
{
    const int t = blockIdx.x;
    const tm_i64 slot = slot_mapping[t];
    if (slot < 0) return;
    const float* kt = k + (tm_i64)t * kv_dim;
    const float* vt = v + (tm_i64)t * kv_dim;
    T* kc = k_cache + slot * kv_dim;
    T* vc = v_cache + slot * kv_dim;
    for (int i = threadIdx.x; i < kv_dim; i += blockDim.x)
    {
        tm_store(kc + i, kt[i]);
        tm_store(vc + i, vt[i]);
    }
}

// The float cache of PagedKvStore.
extern "C" __global__ void reshape_and_cache_f32(const float* k, const float* v, float* k_cache, float* v_cache,
                                                 const int* slot_mapping, int kv_dim)
{
    tm_reshape_and_cache<float>(k, v, k_cache, v_cache, slot_mapping, kv_dim);
}

// A half-precision cache: half the memory per block, values rounded to nearest even.
extern "C" __global__ void reshape_and_cache_f16(const float* k, const float* v, tm_f16* k_cache, tm_f16* v_cache,
                                                 const int* slot_mapping, int kv_dim)
{
    tm_reshape_and_cache<tm_f16>(k, v, k_cache, v_cache, slot_mapping, kv_dim);
}

// A Q8_0 cache: each 32-value block of a row quantized as ggml's reference quantize_row_q8_0 does — d = max|x| / 127
// (stored as f16, rounded to nearest even), q = round(x / d) half away from zero, with 1/d computed once — one warp
// per block, lane i holding value i. kv_dim is a multiple of 32.
extern "C" __global__ void reshape_and_cache_q8_0(const float* k, const float* v, tm_q8_0* k_cache, tm_q8_0* v_cache,
                                                  const int* slot_mapping, int kv_dim)
{
    const int t = blockIdx.x;
    const tm_i64 slot = slot_mapping[t];
    if (slot < 0) return;
    const int lane = threadIdx.x % TM_WARP, warps = blockDim.x / TM_WARP, blocks = kv_dim / 32;
    const tm_i64 row_bytes = (tm_i64)blocks * TM_Q8_0_BYTES;
    for (int b = threadIdx.x / TM_WARP; b < 2 * blocks; b += warps)
    {
        const bool value = b >= blocks;
        const int block = value ? b - blocks : b;
        const float x = (value ? v : k)[(tm_i64)t * kv_dim + block * 32 + lane];
        const float amax = tm_warp_max(fabsf(x));
        const float d = amax / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        tm_u8* out = (tm_u8*)(value ? v_cache : k_cache) + slot * row_bytes + (tm_i64)block * TM_Q8_0_BYTES;
        if (lane == 0) *(tm_f16*)out = tm_f32_to_f16(d);
        out[2 + lane] = (tm_u8)(tm_i8)roundf(x * id);
    }
}
