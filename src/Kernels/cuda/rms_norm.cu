// rms_norm.cu — RMSNorm, and RMSNorm fused with the residual add that precedes it.
//
//   rms_norm:           y = x / sqrt(mean(x²) + eps) · w
//   fused_add_rms_norm: x += delta (x is the residual stream, updated in place), then y = rms_norm(x)
//
// Launch: grid = (num_rows), block = (256) — any multiple of 32 up to 1024 works; each thread
// strides over the row and the sum of squares is reduced across the block (tm_block_sum).
// Rows are `dim` floats apart. The CPU reference (CpuForward.RmsNorm) accumulates the sum of
// squares in double; this sums in float over 256 partial sums, which is well inside the
// tolerance the backends are compared with.
// fused_add_rms_norm replaces CpuForward's "TensorPrimitives.Add(x, h, x)" followed by the next
// "RmsNorm(x, w, h)"; for the head/q-k norms (Qwen3) call rms_norm with rows = heads and dim = head_dim.
#include "common.cuh"

extern "C" __global__ void rms_norm(const float* __restrict__ x, const float* __restrict__ w, float* __restrict__ y,
                                    int dim, float eps)
{
    __shared__ float scratch[32];
    const float* xr = x + (tm_i64)blockIdx.x * dim;
    float* yr = y + (tm_i64)blockIdx.x * dim;
    float sum = 0.0f;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) sum += xr[i] * xr[i];
    sum = tm_block_sum(sum, scratch);
    float scale = rsqrtf(sum / dim + eps);
    for (int i = threadIdx.x; i < dim; i += blockDim.x) yr[i] = xr[i] * scale * w[i];
}

extern "C" __global__ void fused_add_rms_norm(float* __restrict__ x, const float* __restrict__ delta,
                                              const float* __restrict__ w, float* __restrict__ y, int dim, float eps)
{
    __shared__ float scratch[32];
    float* xr = x + (tm_i64)blockIdx.x * dim;
    const float* dr = delta + (tm_i64)blockIdx.x * dim;
    float* yr = y + (tm_i64)blockIdx.x * dim;
    float sum = 0.0f;
    for (int i = threadIdx.x; i < dim; i += blockDim.x)
    {
        float v = xr[i] + dr[i];
        xr[i] = v;                     // each element is read and written by the same thread: no race
        sum += v * v;
    }
    sum = tm_block_sum(sum, scratch);  // its __syncthreads also orders the writes above before the reads below
    float scale = rsqrtf(sum / dim + eps);
    for (int i = threadIdx.x; i < dim; i += blockDim.x) yr[i] = xr[i] * scale * w[i];
}
