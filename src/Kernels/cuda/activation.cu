// activation.cu — the gated MLP's activation: out = act(gate) ⊙ up, elementwise over n values.
//
// Launch: grid = (min(ceil(n / 256), 65535 × 8)), block = (256); a grid-stride loop covers any n.
// gate, up and out are [num_tokens][ffn_dim] flattened (n = num_tokens · ffn_dim); out may alias gate,
// as CpuForward computes it in place in its gate buffer.
//   silu_and_mul:      silu(g) = g · σ(g) = g / (1 + e^(−g))             (Llama, Qwen, Mistral)
//   gelu_tanh_and_mul: gelu(g) ≈ ½·g·(1 + tanh(√(2/π)·(g + 0.044715·g³)))  (Gemma)
#include "common.cuh"

// __launch_bounds__(256, 8): 8 resident blocks of 256 threads (full occupancy) caps registers at 32; without it
// CUDA 11.8's ptxas gives silu_and_mul 34 registers on sm_80, 6 blocks per SM (75 %). No spills either way
// ('tokenmill kernels check' shows both).

extern "C" __global__ void __launch_bounds__(256, 8) silu_and_mul(const float* gate, const float* __restrict__ up, float* out, tm_i64 n)
{
    for (tm_i64 i = (tm_i64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (tm_i64)gridDim.x * blockDim.x)
    {
        float g = gate[i];
        out[i] = g / (1.0f + expf(-g)) * up[i];
    }
}

extern "C" __global__ void gelu_tanh_and_mul(const float* gate, const float* __restrict__ up, float* out, tm_i64 n)
{
    const float sqrt_two_over_pi = 0.7978845608028654f;
    for (tm_i64 i = (tm_i64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (tm_i64)gridDim.x * blockDim.x)
    {
        float g = gate[i];
        out[i] = 0.5f * g * (1.0f + tanhf(sqrt_two_over_pi * (g + 0.044715f * g * g * g))) * up[i];
    }
}
