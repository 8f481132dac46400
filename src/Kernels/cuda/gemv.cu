// gemv.cu — matrix × vector with the weights in their file format, dequantized on the fly:
//   y[t, r] = W[r, :] · x[t, :]   for r < rows, t < num_vectors
// (CpuForward.MatMul's contract: x is num_vectors × cols, y is num_vectors × rows, W is rows × cols
// row-major in GGUF's layout). For decode steps with few tokens; large prefill GEMMs go to cuBLAS.
//
// Launch: grid = (ceil(rows / TM_GEMV_WARPS), num_vectors), block = (TM_GEMV_WARPS × 32) = (128).
// One warp per weight row. In the quantized kernels lane l handles element l of every 32-element
// block, so a warp reads each block's bytes and the matching 32 floats of x contiguously
// (coalesced); the block scale d is a broadcast load. The dot product is reduced across the warp.
// cols must be a multiple of 32 for Q8_0/Q4_0 (GGUF guarantees it); any cols for F32/F16/BF16.
// W must be 2-byte aligned (device allocations are 256-byte aligned; Q8_0 rows are 34·k bytes,
// Q4_0 rows 18·k, both even).
//
// Block formats (ggml-common.h; see src/Engine/Quantization/BlockFormats.cs):
//   Q8_0: 34 bytes = f16 d | i8 qs[32]                 x_j = d · qs[j]
//   Q4_0: 18 bytes = f16 d | u8 qs[16]                 x_j = d · (nibble_j − 8), nibble_j = qs[j] & 15
//                                                      for j < 16, qs[j − 16] >> 4 for j ≥ 16
#include "common.cuh"

#define TM_GEMV_WARPS 4

// Evaluates to the row index of this warp, or returns when the warp has no row (the grid's last block).
#define TM_GEMV_ROW                                                               \
    const int lane = threadIdx.x % TM_WARP;                                       \
    const tm_i64 row = (tm_i64)blockIdx.x * TM_GEMV_WARPS + threadIdx.x / TM_WARP; \
    if (row >= rows) return;                                                      \
    const float* xt = x + (tm_i64)blockIdx.y * cols;                              \
    float* yt = y + (tm_i64)blockIdx.y * rows

extern "C" __global__ void gemv_f32(const float* __restrict__ w, const float* __restrict__ x, float* __restrict__ y,
                                    int rows, int cols)
{
    TM_GEMV_ROW;
    const float* wr = w + row * cols;
    float sum = 0.0f;
    for (int i = lane; i < cols; i += TM_WARP) sum += wr[i] * xt[i];
    sum = tm_warp_sum(sum);
    if (lane == 0) yt[row] = sum;
}

extern "C" __global__ void gemv_f16(const tm_f16* __restrict__ w, const float* __restrict__ x, float* __restrict__ y,
                                    int rows, int cols)
{
    TM_GEMV_ROW;
    const tm_f16* wr = w + row * cols;
    float sum = 0.0f;
    for (int i = lane; i < cols; i += TM_WARP) sum += tm_f16_to_f32(wr[i]) * xt[i];
    sum = tm_warp_sum(sum);
    if (lane == 0) yt[row] = sum;
}

extern "C" __global__ void gemv_bf16(const tm_bf16* __restrict__ w, const float* __restrict__ x, float* __restrict__ y,
                                     int rows, int cols)
{
    TM_GEMV_ROW;
    const tm_bf16* wr = w + row * cols;
    float sum = 0.0f;
    for (int i = lane; i < cols; i += TM_WARP) sum += tm_bf16_to_f32(wr[i]) * xt[i];
    sum = tm_warp_sum(sum);
    if (lane == 0) yt[row] = sum;
}

extern "C" __global__ void gemv_q8_0(const tm_u8* __restrict__ w, const float* __restrict__ x, float* __restrict__ y,
                                     int rows, int cols)
{
    TM_GEMV_ROW;
    const int blocks = cols / 32;
    const tm_u8* wr = w + row * blocks * 34;
    float sum = 0.0f;
    for (int b = 0; b < blocks; b++)
    {
        const tm_u8* block = wr + b * 34;
        sum += tm_load_f16(block) * (float)(tm_i8)block[2 + lane] * xt[b * 32 + lane];
    }
    sum = tm_warp_sum(sum);
    if (lane == 0) yt[row] = sum;
}

// __launch_bounds__(128, 16): 16 blocks of 4 warps (full occupancy) caps registers at 32; without it ptxas 11.8
// uses 34 (75 % occupancy on sm_80 and sm_90), and no spills with it ('tokenmill kernels check').
extern "C" __global__ void __launch_bounds__(128, 16) gemv_q4_0(const tm_u8* __restrict__ w, const float* __restrict__ x, float* __restrict__ y,
                                     int rows, int cols)
{
    TM_GEMV_ROW;
    const int blocks = cols / 32;
    const tm_u8* wr = w + row * blocks * 18;
    const int byte = lane % 16, shift = lane < 16 ? 0 : 4;   // elements 0..15 low nibbles, 16..31 high
    float sum = 0.0f;
    for (int b = 0; b < blocks; b++)
    {
        const tm_u8* block = wr + b * 18;
        const int nibble = (block[2 + byte] >> shift) & 15;
        sum += tm_load_f16(block) * (float)(nibble - 8) * xt[b * 32 + lane];
    }
    sum = tm_warp_sum(sum);
    if (lane == 0) yt[row] = sum;
}
