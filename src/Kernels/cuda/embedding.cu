// embedding.cu — token embedding lookup: out[t, :] = scale · dequantize(table[tokens[t], :]).
//
// Launch: grid = (num_tokens), block = (256); each thread strides over the row's columns.
// Token ids are checked on the host (CpuForward does the same) — out-of-range ids are not guarded here.
// Matches CpuForward.RunChunk: Dequantize.Row of the token's row, then × EmbeddingScale (1 for Llama,
// √d for Gemma).
#include "common.cuh"

extern "C" __global__ void embedding_f32(const float* __restrict__ table, const int* __restrict__ tokens,
                                         float* __restrict__ out, int dim, float scale)
{
    const float* row = table + (tm_i64)tokens[blockIdx.x] * dim;
    float* y = out + (tm_i64)blockIdx.x * dim;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) y[i] = row[i] * scale;
}

extern "C" __global__ void embedding_f16(const tm_f16* __restrict__ table, const int* __restrict__ tokens,
                                         float* __restrict__ out, int dim, float scale)
{
    const tm_f16* row = table + (tm_i64)tokens[blockIdx.x] * dim;
    float* y = out + (tm_i64)blockIdx.x * dim;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) y[i] = tm_f16_to_f32(row[i]) * scale;
}

extern "C" __global__ void embedding_bf16(const tm_bf16* __restrict__ table, const int* __restrict__ tokens,
                                          float* __restrict__ out, int dim, float scale)
{
    const tm_bf16* row = table + (tm_i64)tokens[blockIdx.x] * dim;
    float* y = out + (tm_i64)blockIdx.x * dim;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) y[i] = tm_bf16_to_f32(row[i]) * scale;
}

// Q8_0 rows (the dummy models' default type): dim/32 blocks of { f16 d; i8 qs[32] } = 34 bytes,
// x = d · q. dim must be a multiple of 32 (GGUF guarantees it for quantized tensors).
extern "C" __global__ void embedding_q8_0(const tm_u8* __restrict__ table, const int* __restrict__ tokens,
                                          float* __restrict__ out, int dim, float scale)
{
    const tm_i64 row_bytes = (tm_i64)(dim / 32) * 34;
    const tm_u8* row = table + (tm_i64)tokens[blockIdx.x] * row_bytes;
    float* y = out + (tm_i64)blockIdx.x * dim;
    for (int i = threadIdx.x; i < dim; i += blockDim.x)
    {
        const tm_u8* block = row + (i / 32) * 34;
        y[i] = tm_load_f16(block) * (float)(tm_i8)block[2 + i % 32] * scale;
    }
}
