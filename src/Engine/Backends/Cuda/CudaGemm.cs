using TokenMill.Interop;
using TokenMill.Interop.Driver;
using TokenMill.Models.Gguf;

namespace TokenMill.Backends.Cuda;

/// <summary>The kernels of convert.cu that <see cref="CudaGemm"/> launches before its cuBLAS calls.</summary>
internal sealed record GemmKernels(CudaKernel ToF16, CudaKernel ToBf16, CudaKernel DequantizeQ8_0, CudaKernel DequantizeQ4_0)
{
    /// <summary>The four kernels, looked up by name.</summary>
    public static GemmKernels From(Func<string, CudaKernel> kernel) =>
        new(kernel("convert_f32_to_f16"), kernel("convert_f32_to_bf16"), kernel("dequantize_q8_0_f16"), kernel("dequantize_q4_0_f16"));
}

/// <summary>
/// y = x · Wᵀ for many activation rows at once on cuBLAS: <see cref="CudaForward"/>'s products for chunks of at least
/// <see cref="CudaForward.GemmMinRows"/> rows (prefill), where the GEMV kernels would read the weights once per row.
/// CpuForward.MatMul's contract: W is rows × cols row-major in the file's type, x is n × cols and y is n × rows, both
/// row-major float. In cuBLAS's column-major terms y is the rows × n matrix C = op(A) · B with A the weights' buffer
/// read as a cols × rows matrix (lda = cols) and transposed, B the activations read as cols × n (ldb = cols), C with
/// ldc = rows.
/// </summary>
/// <remarks>
/// Per weight type, as vLLM and llama.cpp do it:
/// <list type="bullet">
/// <item>F32 (and the K-quants, which the backend dequantizes to F32 at load): <c>cublasSgemm</c> in full FP32 — the
/// handle's default math mode, no TF32 — so the products agree with the CPU's to float rounding.</item>
/// <item>F16 and BF16: <c>cublasGemmEx</c> on the weights in place, the activations first rounded to the same type
/// (convert.cu), float accumulation and output (<c>CUBLAS_COMPUTE_32F</c>): the tensor-core path. The rounding of the
/// activations (2⁻¹¹ relative for f16, 2⁻⁸ for bf16) is the price; the CPU keeps them in float.</item>
/// <item>Q8_0 and Q4_0: the weights stay quantized on the device (the GEMV kernels read them so); for a GEMM a slice of
/// rows at a time is dequantized to f16 into a scratch buffer of at most <see cref="ScratchElements"/> values, then
/// multiplied as F16 — llama.cpp's dequantize-then-cuBLAS path for large batches. Keeping an f16 copy instead would
/// cost 2 bytes a weight for the whole model, 1.9–3.6× the quantized size.</item>
/// </list>
/// All work goes on the legacy default stream, in order with the kernels around it.
/// Run on an H100 with cuBLAS 13 (the self test's GEMMs of five types, kernels bench) and on the emulated driver's cuBLAS.
/// </remarks>
internal sealed unsafe class CudaGemm : IDisposable
{
    /// <summary>
    /// cuBLAS's workspace, ours: 32 MiB, what PyTorch gives it on Hopper (CUBLAS_WORKSPACE_CONFIG=:4096:8). A GEMM captured
    /// into a CUDA graph may not allocate, so the handle gets it up front.
    /// </summary>
    public const long WorkspaceBytes = 32L << 20;

    /// <summary>What <c>kernels test</c>, <c>kernels bench</c> and <c>--kernel</c> call the backend's cuBLAS products (no kernel of the sources).</summary>
    public const string Name = "cublas_gemm";

    /// <summary>Dequantized f16 weights one GEMM takes at most: 16 Mi values, 32 MiB (TinyLlama's 32000 × 2048 classifier in 4 slices).</summary>
    public const long ScratchElements = 16L << 20;

    readonly CublasHandle _blas;
    readonly GemmKernels _kernels;
    readonly DeviceBuffer _xHalf;          // a product's activations in the weights' 16-bit type
    readonly DeviceBuffer? _dequantized;   // Q8_0/Q4_0 rows as f16, a slice at a time
    readonly long _maxActivations, _scratchElements;
    readonly KernelArgs _args = new();

    readonly CudaStream? _stream;
    readonly DeviceBuffer? _workspace;

    CudaGemm(CublasHandle blas, GemmKernels kernels, DeviceBuffer xHalf, DeviceBuffer? dequantized, DeviceBuffer? workspace, long maxActivations, long scratchElements,
             CudaStream? stream)
    {
        (_blas, _kernels, _xHalf, _dequantized, _workspace, _maxActivations, _scratchElements, _stream) =
            (blas, kernels, xHalf, dequantized, workspace, maxActivations, scratchElements, stream);
    }

    /// <summary>
    /// A cuBLAS handle on the current context and the scratch buffers for products of at most <paramref name="maxRows"/>
    /// activation rows of at most <paramref name="maxColumns"/> columns; with <paramref name="maxQuantizedElements"/> &gt; 0
    /// (the largest Q8_0/Q4_0 matrix), the dequantization scratch too. Null, with the reason, when cuBLAS cannot be loaded:
    /// the backend then runs every product on its GEMV kernels.
    /// </summary>
    /// <param name="context">The device's context, current on the calling thread.</param>
    /// <param name="kernels">convert.cu's kernels, loaded on that context.</param>
    /// <param name="maxRows">Activation rows of a product, at most.</param>
    /// <param name="maxColumns">Columns of a weight, at most.</param>
    /// <param name="maxQuantizedElements">Values of the largest Q8_0/Q4_0 weight; 0 when there is none.</param>
    /// <param name="unavailable">Why cuBLAS cannot be used, when it returns null.</param>
    /// <param name="stream">The stream its work goes on (null: the legacy stream).</param>
    /// <param name="scratchElements">Dequantized values a GEMM takes at most (<see cref="ScratchElements"/>; the self test takes fewer, to slice).</param>
    public static CudaGemm? TryCreate(CudaContext context, GemmKernels kernels, int maxRows, int maxColumns, long maxQuantizedElements, out string? unavailable,
                                      CudaStream? stream = null, long scratchElements = ScratchElements)
    {
        if (!NativeLibraryResolver.TryLoad(CudaLibrary.Cublas, out string reason))
        {
            unavailable = reason;
            return null;
        }
        cublasHandle_t h;
        try { CublasApi.cublasCreate_v2(&h); }
        catch (CublasException e)
        {
            unavailable = e.Message;   // e.g. CUBLAS_STATUS_NOT_INITIALIZED: a library that does not match the driver
            return null;
        }
        unavailable = null;
        var blas = new CublasHandle(h);
        DeviceBuffer? xHalf = null, dequantized = null, workspace = null;
        try
        {
            if (stream is not null) CublasApi.cublasSetStream_v2(blas.Blas, stream.Stream);   // before the workspace: setting a stream resets it
            workspace = context.Allocate(WorkspaceBytes);
            try { CublasApi.cublasSetWorkspace_v2(blas.Blas, (void*)workspace.Pointer.Value, (nuint)WorkspaceBytes); }
            catch (EntryPointNotFoundException) { workspace.Dispose(); workspace = null; }   // cuBLAS before 11.4: its own pool
            long activations = (long)maxRows * maxColumns;
            xHalf = context.Allocate(Math.Max(8, activations) * sizeof(ushort));
            long scratch = maxQuantizedElements <= 0 ? 0 : Math.Max(maxColumns, Math.Min(scratchElements, maxQuantizedElements));
            dequantized = scratch > 0 ? context.Allocate(scratch * sizeof(ushort)) : null;
            // One 1 × 1 × 1 product now: cuBLAS may still take memory of its own on a handle's first GEMM (its kernels), and
            // that must come out of the device's memory before the KV cache is sized from what is free — and not in a capture.
            float one = 1, zero = 0;
            var p = (float*)xHalf.Pointer.Value;
            CublasApi.cublasSgemm_v2(blas.Blas, cublasOperation_t.CUBLAS_OP_T, cublasOperation_t.CUBLAS_OP_N, 1, 1, 1, &one, p, 1, p + 1, 1, &zero, p + 2, 1);
            context.Synchronize();
            return new CudaGemm(blas, kernels, xHalf, dequantized, workspace, activations, scratch, stream);
        }
        catch
        {
            dequantized?.Dispose();
            xHalf?.Dispose();
            workspace?.Dispose();
            blas.Dispose();
            throw;
        }
    }

    /// <summary>Device memory of the scratch buffers.</summary>
    public long DeviceBytes => _xHalf.Bytes + (_dequantized?.Bytes ?? 0) + (_workspace?.Bytes ?? 0);

    /// <summary>Whether <see cref="Multiply"/> takes weights of <paramref name="type"/> as the device holds them.</summary>
    public static bool Supports(GgmlType type) => type is GgmlType.F32 or GgmlType.F16 or GgmlType.BF16 or GgmlType.Q8_0 or GgmlType.Q4_0;

    /// <summary>
    /// y (n × rows) = x (n × cols) · Wᵀ for the weights at <paramref name="weights"/> in <paramref name="type"/>, rows
    /// <paramref name="rowBytes"/> apart.
    /// </summary>
    public void Multiply(CUdeviceptr weights, GgmlType type, long rowBytes, int rows, int cols, CUdeviceptr x, CUdeviceptr y, int n)
    {
        if ((long)n * cols > _maxActivations) throw new ArgumentOutOfRangeException(nameof(n), $"{n} rows × {cols} columns exceed the GEMM's activation scratch of {_maxActivations} values");
        var blas = _blas.Blas;
        float alpha = 1, beta = 0;
        if (type == GgmlType.F32)
        {
            CublasApi.cublasSgemm_v2(blas, cublasOperation_t.CUBLAS_OP_T, cublasOperation_t.CUBLAS_OP_N, rows, n, cols,
                &alpha, (float*)weights.Value, cols, (float*)x.Value, cols, &beta, (float*)y.Value, rows);
            return;
        }
        bool bf16 = type == GgmlType.BF16;
        long elements = (long)n * cols;
        Launch(bf16 ? _kernels.ToBf16 : _kernels.ToF16, x, _xHalf.Pointer, elements);
        var half = bf16 ? cudaDataType.CUDA_R_16BF : cudaDataType.CUDA_R_16F;
        if (type is GgmlType.F16 or GgmlType.BF16)
        {
            GemmEx(blas, rows, n, cols, weights, half, y, &alpha, &beta);
            return;
        }
        var dequantize = type switch
        {
            GgmlType.Q8_0 => _kernels.DequantizeQ8_0,
            GgmlType.Q4_0 => _kernels.DequantizeQ4_0,
            _ => throw new NotSupportedException($"CudaGemm: no GEMM for {type} weights"),
        };
        if (_dequantized is null) throw new InvalidOperationException($"CudaGemm: {type} weights, but no dequantization scratch was allocated");
        int slice = (int)Math.Min(rows, _scratchElements / cols);
        for (int r0 = 0; r0 < rows; r0 += slice)
        {
            int count = Math.Min(slice, rows - r0);
            Launch(dequantize, new CUdeviceptr(weights.Value + (ulong)(r0 * rowBytes)), _dequantized.Pointer, (long)count * cols);
            GemmEx(blas, count, n, cols, _dequantized.Pointer, cudaDataType.CUDA_R_16F, new CUdeviceptr(y.Value + (ulong)r0 * sizeof(float)), &alpha, &beta, ldc: rows);
        }
    }

    /// <summary>C (m × n floats, ldc) = Aᵀ · B for A the m rows of <paramref name="a"/> (k = cols of <paramref name="type"/>) and B the converted activations.</summary>
    void GemmEx(cublasHandle_t blas, int m, int n, int k, CUdeviceptr a, cudaDataType type, CUdeviceptr c, float* alpha, float* beta, int ldc = 0) =>
        CublasApi.cublasGemmEx(blas, cublasOperation_t.CUBLAS_OP_T, cublasOperation_t.CUBLAS_OP_N, m, n, k,
            alpha, (void*)a.Value, type, k, (void*)_xHalf.Pointer.Value, type, k, beta, (void*)c.Value, cudaDataType.CUDA_R_32F, ldc == 0 ? m : ldc,
            cublasComputeType_t.CUBLAS_COMPUTE_32F, cublasGemmAlgo_t.CUBLAS_GEMM_DEFAULT);

    /// <summary>One of convert.cu's element-wise kernels over <paramref name="elements"/> values (its grid-stride launch).</summary>
    void Launch(CudaKernel kernel, CUdeviceptr input, CUdeviceptr output, long elements) =>
        kernel.Launch(KernelLaunches.ElementGrid(elements), new Dim3((uint)KernelLaunches.For(kernel.Name).BlockSize),
            _args.Clear().Add(input).Add(output).Add(elements), stream: _stream);

    public void Dispose()
    {
        _blas.Dispose();   // before its workspace
        _workspace?.Dispose();
        _dequantized?.Dispose();
        _xHalf.Dispose();
    }
}
