// common.cuh — helpers shared by TokenMill's CUDA kernels.
//
// Compiled by NVRTC at run time (11.2 and newer), which ships no standard headers and, before
// CUDA 12, no cuda_fp16.h / cuda_bf16.h: so this file needs nothing but the compiler's built-ins.
// Half and bfloat16 values travel as their raw 16-bit patterns (tm_f16 / tm_bf16 = unsigned short)
// and are converted with one PTX instruction (f16) or a shift (bf16).
#pragma once

typedef unsigned char tm_u8;
typedef signed char tm_i8;
typedef unsigned short tm_f16;   // IEEE binary16 bits, as stored in GGUF / safetensors
typedef unsigned short tm_bf16;  // bfloat16 bits
typedef long long tm_i64;

#define TM_WARP 32
#define TM_FULL_MASK 0xffffffffu
// -inf without <math.h>: the bit pattern of float negative infinity.
#define TM_NEG_INF __int_as_float(0xff800000)

#ifndef TM_HOST_EMULATION
__device__ __forceinline__ float tm_f16_to_f32(tm_f16 h)
{
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

__device__ __forceinline__ tm_f16 tm_f32_to_f16(float f)
{
    tm_f16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));   // round to nearest even, as Half conversion does
    return h;
}
#else
// tools/cuda-emu runs these kernels on the CPU (g++), where the PTX above cannot be assembled.
__device__ __forceinline__ float tm_f16_to_f32(tm_f16 h) { return (float)tm_emu_bits_to_half(h); }
__device__ __forceinline__ tm_f16 tm_f32_to_f16(float f) { return tm_emu_half_to_bits((_Float16)f); }
#endif

__device__ __forceinline__ float tm_bf16_to_f32(tm_bf16 b)
{
    return __uint_as_float(((unsigned int)b) << 16);
}

__device__ __forceinline__ tm_bf16 tm_f32_to_bf16(float f)
{
    unsigned int u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (tm_bf16)((u >> 16) | 0x40u);   // NaN stays a (quiet) NaN
    u += 0x7fffu + ((u >> 16) & 1u);                                             // round to nearest even
    return (tm_bf16)(u >> 16);
}

// Reads the little-endian f16 at a 2-byte aligned address inside a quantized block.
__device__ __forceinline__ float tm_load_f16(const tm_u8* p)
{
    return tm_f16_to_f32(*(const tm_f16*)p);
}

// Storage types of the KV cache: float, or f16 bits. load/store convert to and from float.
__device__ __forceinline__ float tm_load(const float* p) { return *p; }
__device__ __forceinline__ float tm_load(const tm_f16* p) { return tm_f16_to_f32(*p); }
__device__ __forceinline__ void tm_store(float* p, float v) { *p = v; }
__device__ __forceinline__ void tm_store(tm_f16* p, float v) { *p = tm_f32_to_f16(v); }

// The storage type of a Q8_0 KV cache (ggml's block_q8_0: an f16 scale d, then 32 int8 values; 34 bytes), as a tag:
// its rows are addressed in bytes, a head's part of a slot's row being its own whole blocks (head_dim % 32 == 0).
struct tm_q8_0 { tm_u8 byte; };
#define TM_Q8_0_BYTES 34

// One KV head's row of one slot in a cache of storage type T: row[d] is element d as float.
template <typename T>
struct tm_kv_row
{
    const T* p;
    __device__ __forceinline__ tm_kv_row(const T* cache, tm_i64 slot, int kv_dim, int kv_head, int head_dim)
        : p(cache + slot * kv_dim + (tm_i64)kv_head * head_dim) {}
    __device__ __forceinline__ float operator[](int d) const { return tm_load(p + d); }
};

// Q8_0: value · its block's scale, one f32 product (ggml's dequantize_row_q8_0, exactly).
template <>
struct tm_kv_row<tm_q8_0>
{
    const tm_u8* p;
    __device__ __forceinline__ tm_kv_row(const tm_q8_0* cache, tm_i64 slot, int kv_dim, int kv_head, int head_dim)
        : p((const tm_u8*)cache + slot * (kv_dim / 32 * TM_Q8_0_BYTES) + (tm_i64)(kv_head * (head_dim / 32)) * TM_Q8_0_BYTES) {}
    __device__ __forceinline__ float operator[](int d) const
    {
        const tm_u8* block = p + (d >> 5) * TM_Q8_0_BYTES;
        return (float)(tm_i8)block[2 + (d & 31)] * tm_load_f16(block);
    }
};

__device__ __forceinline__ float tm_warp_sum(float v)
{
#pragma unroll
    for (int offset = TM_WARP / 2; offset > 0; offset >>= 1) v += __shfl_xor_sync(TM_FULL_MASK, v, offset);
    return v;
}

__device__ __forceinline__ float tm_warp_max(float v)
{
#pragma unroll
    for (int offset = TM_WARP / 2; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(TM_FULL_MASK, v, offset));
    return v;
}

// The better of two argmax candidates: larger value, or the same value at a lower index (Sampler.ArgMax's tie rule).
__device__ __forceinline__ void tm_arg_better(float& v, int& i, float ov, int oi)
{
    if (ov > v || (ov == v && oi < i))
    {
        v = ov;
        i = oi;
    }
}

// Sum over the whole block; every thread gets the result. blockDim.x must be a multiple of 32
// (at most 1024); `scratch` is shared memory of at least 32 floats. Contains __syncthreads, so
// every thread of the block must call it.
__device__ __forceinline__ float tm_block_sum(float v, float* scratch)
{
    int lane = threadIdx.x % TM_WARP, warp = threadIdx.x / TM_WARP, warps = blockDim.x / TM_WARP;
    v = tm_warp_sum(v);
    __syncthreads();                  // scratch may still be read by a previous call
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < warps ? scratch[lane] : 0.0f;
    return tm_warp_sum(v);
}
