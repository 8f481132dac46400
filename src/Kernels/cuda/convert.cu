// convert.cu — the 16-bit inputs of the cuBLAS GEMMs that CudaForward runs for chunks of many rows (prefill):
//   convert_f32_to_f16 / _bf16:  y[i] = x[i] rounded to nearest even    (activations, to the weights' type)
//   dequantize_q8_0_f16:         y[i] = f16(d · qs[j])                   (Q8_0 weight rows → f16)
//   dequantize_q4_0_f16:         y[i] = f16(d · (nibble_j − 8))          (Q4_0 weight rows → f16)
// where element i is element j = i mod 32 of quantized block i / 32 (rows are whole blocks: cols is a multiple
// of 32, so rows × cols elements are rows × cols / 32 blocks in a row). Block formats as gemv.cu says
// (ggml-common.h): Q8_0 = f16 d | i8 qs[32]; Q4_0 = f16 d | u8 qs[16], nibble_j = qs[j] & 15 for j < 16,
// qs[j − 16] >> 4 for j ≥ 16. d · q is exact in float (11 × 8 significant bits); the f16 it is rounded to is
// what llama.cpp's dequantize-to-f16 path gives.
//
// Launch: grid = (min(ceil(n / 256), 65535 × 8)), block = (256); grid-stride loops cover any n. Memory-bound
// element-wise passes: __launch_bounds__(256, 8) keeps them at full occupancy.
#include "common.cuh"

#define TM_GRID_STRIDE(i, n) for (tm_i64 i = (tm_i64)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (tm_i64)gridDim.x * blockDim.x)

extern "C" __global__ void __launch_bounds__(256, 8) convert_f32_to_f16(const float* __restrict__ x, tm_f16* __restrict__ y, tm_i64 n)
{
    TM_GRID_STRIDE(i, n) y[i] = tm_f32_to_f16(x[i]);
}

extern "C" __global__ void __launch_bounds__(256, 8) convert_f32_to_bf16(const float* __restrict__ x, tm_bf16* __restrict__ y, tm_i64 n)
{
    TM_GRID_STRIDE(i, n) y[i] = tm_f32_to_bf16(x[i]);
}

extern "C" __global__ void __launch_bounds__(256, 8) dequantize_q8_0_f16(const tm_u8* __restrict__ w, tm_f16* __restrict__ y, tm_i64 n)
{
    TM_GRID_STRIDE(i, n)
    {
        const tm_u8* block = w + (i / 32) * 34;
        y[i] = tm_f32_to_f16(tm_load_f16(block) * (float)(tm_i8)block[2 + i % 32]);
    }
}

extern "C" __global__ void __launch_bounds__(256, 8) dequantize_q4_0_f16(const tm_u8* __restrict__ w, tm_f16* __restrict__ y, tm_i64 n)
{
    TM_GRID_STRIDE(i, n)
    {
        const tm_u8* block = w + (i / 32) * 18;
        const int j = (int)(i % 32);
        const int nibble = j < 16 ? block[2 + j] & 15 : block[2 + j - 16] >> 4;
        y[i] = tm_f32_to_f16(tm_load_f16(block) * (float)(nibble - 8));
    }
}
