// gemv.cu — matrix × vector with the weights in their file format, dequantized on the fly:
//   y[t, r] = W[r, :] · x[t, :]   for r < rows, t < num_vectors
// (CpuForward.MatMul's contract: x is num_vectors × cols, y is num_vectors × rows, W is rows × cols
// row-major in GGUF's layout). For decode steps with few tokens; large prefill GEMMs go to cuBLAS.
//
// Two kernels per weight type, the same arguments: gemv_T takes one vector per block, gemv_T_x8 up to eight.
// Launch: grid = (ceil(rows / TM_GEMV_WARPS), ceil(num_vectors / NV)), block = (TM_GEMV_WARPS × 32) = (128), NV = 1 or 8.
// One warp per weight row and NV vectors: in the _x8 kernels the row is read once for eight vectors (a decode step of
// 8 sequences reads the weights once, not 8 times), each vector's partial dot product kept per lane and reduced
// across the warp at the end. Its eight accumulators cost registers (48–80: 40–60 % occupancy), which a single
// vector pays for in memory latency, so one vector takes the NV = 1 kernel (CudaForward: n == 1).
// Each lane loads 16 bytes of weights at a time where the layout allows it (F32 with cols % 4 == 0, F16/BF16 with
// cols % 8 == 0; else one element at a time). Quantized blocks are 2-byte aligned (34 and 18 bytes), so their
// quants are read as 16-bit halves: Q8_0 gives 8 lanes a block, each lane 4 quants (4 blocks per warp and step);
// Q4_0 gives 4 lanes a block, each lane 4 bytes = quants 4k..4k+3 (low nibbles) and 16+4k.. (high); the block
// scale d is a broadcast load. x is read as 16-byte float4s, so it must be 16-byte aligned with cols % 4 == 0 on
// those paths (device allocations are 256-byte aligned; quantized cols are multiples of 32).
//
// Block formats (ggml-common.h; see src/Engine/Quantization/BlockFormats.cs):
//   Q8_0: 34 bytes = f16 d | i8 qs[32]                 x_j = d · qs[j]
//   Q4_0: 18 bytes = f16 d | u8 qs[16]                 x_j = d · (nibble_j − 8), nibble_j = qs[j] & 15
//                                                      for j < 16, qs[j − 16] >> 4 for j ≥ 16
#include "common.cuh"

#define TM_GEMV_WARPS 4

struct alignas(16) tm_f32x4 { float x, y, z, w; };
struct alignas(16) tm_u32x4 { unsigned int x, y, z, w; };

// The row of this warp and the block's vectors [v0, v0 + nv), or return when the warp has no row (the grid's last block).
#define TM_GEMV_BEGIN                                                             \
    const int lane = threadIdx.x % TM_WARP;                                       \
    const tm_i64 row = (tm_i64)blockIdx.x * TM_GEMV_WARPS + threadIdx.x / TM_WARP; \
    if (row >= rows) return;                                                      \
    const int v0 = blockIdx.y * NV;                                               \
    const int nv = num_vectors - v0 < NV ? num_vectors - v0 : NV;                 \
    const float* xt = x + (tm_i64)v0 * cols;                                      \
    float sum[NV] = {}

// Reduces each vector's sums across the warp; lane 0 writes y[v0 + t, row].
template <int NV>
__device__ __forceinline__ void tm_gemv_store(float* __restrict__ y, const float* sum, int lane, tm_i64 row, int rows, int v0, int nv)
{
#pragma unroll
    for (int t = 0; t < NV; t++)
        if (t < nv)
        {
            const float s = tm_warp_sum(sum[t]);
            if (lane == 0) y[(tm_i64)(v0 + t) * rows + row] = s;
        }
}

// sum[t] += w0..w3 · x[t][i..i+3] for every vector of the block (i a multiple of 4).
template <int NV>
__device__ __forceinline__ void tm_gemv_fma4(float* sum, const float* xt, tm_i64 cols, int nv, int i, float w0, float w1, float w2, float w3)
{
#pragma unroll
    for (int t = 0; t < NV; t++)
        if (t < nv)
        {
            const tm_f32x4 v = *(const tm_f32x4*)(xt + t * cols + i);
            sum[t] += w0 * v.x + w1 * v.y + w2 * v.z + w3 * v.w;
        }
}

template <int NV>
__device__ __forceinline__ void tm_gemv_fma1(float* sum, const float* xt, tm_i64 cols, int nv, int i, float w)
{
#pragma unroll
    for (int t = 0; t < NV; t++)
        if (t < nv) sum[t] += w * xt[t * cols + i];
}

// F16 and BF16: 8 elements (16 bytes) per lane and step where cols % 8 == 0.
template <bool BF16>
__device__ __forceinline__ float tm_gemv_widen(unsigned short h) { return BF16 ? tm_bf16_to_f32(h) : tm_f16_to_f32(h); }

template <int NV, bool BF16>
__device__ __forceinline__ void tm_gemv_half(const unsigned short* __restrict__ w, const float* __restrict__ x, float* __restrict__ y,
                                             int rows, int cols, int num_vectors)
{
    TM_GEMV_BEGIN;
    const unsigned short* wr = w + row * cols;
    if ((cols & 7) == 0)
        for (int i = lane * 8; i < cols; i += TM_WARP * 8)
        {
            const tm_u32x4 a = *(const tm_u32x4*)(wr + i);
            tm_gemv_fma4<NV>(sum, xt, cols, nv, i, tm_gemv_widen<BF16>((unsigned short)(a.x & 0xffff)), tm_gemv_widen<BF16>((unsigned short)(a.x >> 16)),
                         tm_gemv_widen<BF16>((unsigned short)(a.y & 0xffff)), tm_gemv_widen<BF16>((unsigned short)(a.y >> 16)));
            tm_gemv_fma4<NV>(sum, xt, cols, nv, i + 4, tm_gemv_widen<BF16>((unsigned short)(a.z & 0xffff)), tm_gemv_widen<BF16>((unsigned short)(a.z >> 16)),
                         tm_gemv_widen<BF16>((unsigned short)(a.w & 0xffff)), tm_gemv_widen<BF16>((unsigned short)(a.w >> 16)));
        }
    else
        for (int i = lane; i < cols; i += TM_WARP) tm_gemv_fma1<NV>(sum, xt, cols, nv, i, tm_gemv_widen<BF16>(wr[i]));
    tm_gemv_store<NV>(y, sum, lane, row, rows, v0, nv);
}

// The 4 bytes at a 2-byte aligned address, little-endian.
__device__ __forceinline__ unsigned int tm_load_u32_a2(const tm_u8* p)
{
    const unsigned short* h = (const unsigned short*)p;
    return (unsigned int)h[0] | ((unsigned int)h[1] << 16);
}

__device__ __forceinline__ float tm_i8_at(unsigned int word, int k) { return (float)(tm_i8)(word >> (8 * k)); }

template <int NV>
__device__ __forceinline__ void tm_gemv_f32(const float* __restrict__ w, const float* __restrict__ x, float* __restrict__ y,
                                            int rows, int cols, int num_vectors)
{
    TM_GEMV_BEGIN;
    const float* wr = w + row * cols;
    if ((cols & 3) == 0)
        for (int i = lane * 4; i < cols; i += TM_WARP * 4)
        {
            const tm_f32x4 a = *(const tm_f32x4*)(wr + i);
            tm_gemv_fma4<NV>(sum, xt, cols, nv, i, a.x, a.y, a.z, a.w);
        }
    else
        for (int i = lane; i < cols; i += TM_WARP) tm_gemv_fma1<NV>(sum, xt, cols, nv, i, wr[i]);
    tm_gemv_store<NV>(y, sum, lane, row, rows, v0, nv);
}

template <int NV>
__device__ __forceinline__ void tm_gemv_q8_0(const tm_u8* __restrict__ w, const float* __restrict__ x, float* __restrict__ y,
                                             int rows, int cols, int num_vectors)
{
    TM_GEMV_BEGIN;
    const int blocks = cols / 32;
    const tm_u8* wr = w + row * blocks * 34;
    const int part = lane % 8;   // quants 4·part .. 4·part + 3 of block b
    for (int b = lane / 8; b < blocks; b += TM_WARP / 8)
    {
        const tm_u8* block = wr + b * 34;
        const float d = tm_load_f16(block);
        const unsigned int q = tm_load_u32_a2(block + 2 + 4 * part);
        tm_gemv_fma4<NV>(sum, xt, cols, nv, b * 32 + 4 * part,
                     d * tm_i8_at(q, 0), d * tm_i8_at(q, 1), d * tm_i8_at(q, 2), d * tm_i8_at(q, 3));
    }
    tm_gemv_store<NV>(y, sum, lane, row, rows, v0, nv);
}

template <int NV>
__device__ __forceinline__ void tm_gemv_q4_0(const tm_u8* __restrict__ w, const float* __restrict__ x, float* __restrict__ y,
                                             int rows, int cols, int num_vectors)
{
    TM_GEMV_BEGIN;
    const int blocks = cols / 32;
    const tm_u8* wr = w + row * blocks * 18;
    const int part = lane % 4;   // bytes 4·part .. 4·part + 3: quants 4·part.. (low nibbles) and 16 + 4·part.. (high)
    for (int b = lane / 4; b < blocks; b += TM_WARP / 4)
    {
        const tm_u8* block = wr + b * 18;
        const float d = tm_load_f16(block);
        const unsigned int q = tm_load_u32_a2(block + 2 + 4 * part);
        tm_gemv_fma4<NV>(sum, xt, cols, nv, b * 32 + 4 * part,
                     d * (float)((int)(q & 15) - 8), d * (float)((int)((q >> 8) & 15) - 8),
                     d * (float)((int)((q >> 16) & 15) - 8), d * (float)((int)((q >> 24) & 15) - 8));
        tm_gemv_fma4<NV>(sum, xt, cols, nv, b * 32 + 16 + 4 * part,
                     d * (float)((int)((q >> 4) & 15) - 8), d * (float)((int)((q >> 12) & 15) - 8),
                     d * (float)((int)((q >> 20) & 15) - 8), d * (float)((int)(q >> 28) - 8));
    }
    tm_gemv_store<NV>(y, sum, lane, row, rows, v0, nv);
}

// The kernels: each type's body at one vector per block, and at eight (_x8). The single-vector kernels are held to 32
// registers (__launch_bounds__(128, 16): full occupancy), as memory-bound kernels whose only latency hiding is their warps;
// gemv_f32 is not (it spilled at 32 and at 40 registers on sm_80, and F32 weights are for checking, not serving).
extern "C" __global__ void gemv_f32(const float* __restrict__ w, const float* __restrict__ x, float* __restrict__ y, int rows, int cols, int num_vectors)
{
    tm_gemv_f32<1>(w, x, y, rows, cols, num_vectors);
}

extern "C" __global__ void gemv_f32_x8(const float* __restrict__ w, const float* __restrict__ x, float* __restrict__ y, int rows, int cols, int num_vectors)
{
    tm_gemv_f32<8>(w, x, y, rows, cols, num_vectors);
}

extern "C" __global__ void __launch_bounds__(128, 16) gemv_f16(const tm_f16* __restrict__ w, const float* __restrict__ x, float* __restrict__ y, int rows, int cols, int num_vectors)
{
    tm_gemv_half<1, false>(w, x, y, rows, cols, num_vectors);
}

extern "C" __global__ void gemv_f16_x8(const tm_f16* __restrict__ w, const float* __restrict__ x, float* __restrict__ y, int rows, int cols, int num_vectors)
{
    tm_gemv_half<8, false>(w, x, y, rows, cols, num_vectors);
}

extern "C" __global__ void __launch_bounds__(128, 16) gemv_bf16(const tm_bf16* __restrict__ w, const float* __restrict__ x, float* __restrict__ y, int rows, int cols, int num_vectors)
{
    tm_gemv_half<1, true>(w, x, y, rows, cols, num_vectors);
}

extern "C" __global__ void gemv_bf16_x8(const tm_bf16* __restrict__ w, const float* __restrict__ x, float* __restrict__ y, int rows, int cols, int num_vectors)
{
    tm_gemv_half<8, true>(w, x, y, rows, cols, num_vectors);
}

extern "C" __global__ void __launch_bounds__(128, 16) gemv_q8_0(const tm_u8* __restrict__ w, const float* __restrict__ x, float* __restrict__ y, int rows, int cols, int num_vectors)
{
    tm_gemv_q8_0<1>(w, x, y, rows, cols, num_vectors);
}

extern "C" __global__ void gemv_q8_0_x8(const tm_u8* __restrict__ w, const float* __restrict__ x, float* __restrict__ y, int rows, int cols, int num_vectors)
{
    tm_gemv_q8_0<8>(w, x, y, rows, cols, num_vectors);
}

extern "C" __global__ void __launch_bounds__(128, 16) gemv_q4_0(const tm_u8* __restrict__ w, const float* __restrict__ x, float* __restrict__ y, int rows, int cols, int num_vectors)
{
    tm_gemv_q4_0<1>(w, x, y, rows, cols, num_vectors);
}

extern "C" __global__ void gemv_q4_0_x8(const tm_u8* __restrict__ w, const float* __restrict__ x, float* __restrict__ y, int rows, int cols, int num_vectors)
{
    tm_gemv_q4_0<8>(w, x, y, rows, cols, num_vectors);
}
