using Microsoft.Win32.SafeHandles;

namespace TokenMill.Interop;

// One SafeHandle per owned native resource. Release never throws (a finalizer may run it); the
// status is returned as success/failure, which the runtime reports through its release-failed MDA.
// Driver objects belong to a context: dispose them before the context, on a thread where it is
// current (CudaContextHandle owns that order in the runtime layer).

/// <summary>A CUDA context (cuCtxCreate_v2 / cuCtxDestroy_v2).</summary>
public sealed class CudaContextHandle : SafeHandleZeroOrMinusOneIsInvalid
{
    public CudaContextHandle() : base(ownsHandle: true) { }
    public CudaContextHandle(CUcontext context) : base(ownsHandle: true) => SetHandle(context.Value);
    public CUcontext Context => new(handle);
    protected override bool ReleaseHandle() => CudaApi.cuCtxDestroy_v2(new CUcontext(handle)) == CUresult.CUDA_SUCCESS;
}

/// <summary>A loaded module (cuModuleLoadData / cuModuleUnload).</summary>
public sealed class CudaModuleHandle : SafeHandleZeroOrMinusOneIsInvalid
{
    public CudaModuleHandle() : base(ownsHandle: true) { }
    public CudaModuleHandle(CUmodule module) : base(ownsHandle: true) => SetHandle(module.Value);
    public CUmodule Module => new(handle);
    protected override bool ReleaseHandle() => CudaApi.cuModuleUnload(new CUmodule(handle)) == CUresult.CUDA_SUCCESS;
}

/// <summary>A stream (cuStreamCreate / cuStreamDestroy_v2).</summary>
public sealed class CudaStreamHandle : SafeHandleZeroOrMinusOneIsInvalid
{
    public CudaStreamHandle() : base(ownsHandle: true) { }
    public CudaStreamHandle(CUstream stream) : base(ownsHandle: true) => SetHandle(stream.Value);
    public CUstream Stream => new(handle);
    protected override bool ReleaseHandle() => CudaApi.cuStreamDestroy_v2(new CUstream(handle)) == CUresult.CUDA_SUCCESS;
}

/// <summary>An event (cuEventCreate / cuEventDestroy_v2).</summary>
public sealed class CudaEventHandle : SafeHandleZeroOrMinusOneIsInvalid
{
    public CudaEventHandle() : base(ownsHandle: true) { }
    public CudaEventHandle(CUevent ev) : base(ownsHandle: true) => SetHandle(ev.Value);
    public CUevent Event => new(handle);
    protected override bool ReleaseHandle() => CudaApi.cuEventDestroy_v2(new CUevent(handle)) == CUresult.CUDA_SUCCESS;
}

/// <summary>A captured CUDA graph (cuStreamEndCapture / cuGraphDestroy).</summary>
public sealed class CudaGraphHandle : SafeHandleZeroOrMinusOneIsInvalid
{
    public CudaGraphHandle() : base(ownsHandle: true) { }
    public CudaGraphHandle(CUgraph graph) : base(ownsHandle: true) => SetHandle(graph.Value);
    public CUgraph Graph => new(handle);
    protected override bool ReleaseHandle() => CudaApi.cuGraphDestroy(new CUgraph(handle)) == CUresult.CUDA_SUCCESS;
}

/// <summary>An instantiated CUDA graph (cuGraphInstantiateWithFlags / cuGraphExecDestroy).</summary>
public sealed class CudaGraphExecHandle : SafeHandleZeroOrMinusOneIsInvalid
{
    public CudaGraphExecHandle() : base(ownsHandle: true) { }
    public CudaGraphExecHandle(CUgraphExec exec) : base(ownsHandle: true) => SetHandle(exec.Value);
    public CUgraphExec Exec => new(handle);
    protected override bool ReleaseHandle() => CudaApi.cuGraphExecDestroy(new CUgraphExec(handle)) == CUresult.CUDA_SUCCESS;
}

/// <summary>Device memory (cuMemAlloc_v2 / cuMemFree_v2) with its size in bytes.</summary>
public sealed class DeviceMemoryHandle : SafeHandleZeroOrMinusOneIsInvalid
{
    public DeviceMemoryHandle() : base(ownsHandle: true) { }
    public DeviceMemoryHandle(CUdeviceptr pointer, long bytes) : base(ownsHandle: true)
    {
        SetHandle((nint)pointer.Value);
        Bytes = bytes;
    }

    public CUdeviceptr Pointer => new((ulong)handle);
    public long Bytes { get; }
    protected override bool ReleaseHandle() => CudaApi.cuMemFree_v2(new CUdeviceptr((ulong)handle)) == CUresult.CUDA_SUCCESS;
}

/// <summary>An NVRTC program (nvrtcCreateProgram / nvrtcDestroyProgram).</summary>
public sealed class NvrtcProgramHandle : SafeHandleZeroOrMinusOneIsInvalid
{
    public NvrtcProgramHandle() : base(ownsHandle: true) { }
    public NvrtcProgramHandle(nvrtcProgram program) : base(ownsHandle: true) => SetHandle(program.Value);
    public nvrtcProgram Program => new(handle);

    protected override unsafe bool ReleaseHandle()
    {
        var p = new nvrtcProgram(handle);
        return NvrtcApi.nvrtcDestroyProgram(&p) == nvrtcResult.NVRTC_SUCCESS;
    }
}

/// <summary>A cuBLAS handle (cublasCreate_v2 / cublasDestroy_v2).</summary>
public sealed class CublasHandle : SafeHandleZeroOrMinusOneIsInvalid
{
    public CublasHandle() : base(ownsHandle: true) { }
    public CublasHandle(cublasHandle_t blas) : base(ownsHandle: true) => SetHandle(blas.Value);
    public cublasHandle_t Blas => new(handle);
    protected override bool ReleaseHandle() => CublasApi.cublasDestroy_v2(new cublasHandle_t(handle)) == cublasStatus_t.CUBLAS_STATUS_SUCCESS;
}

/// <summary>An NCCL communicator (ncclCommInitRank / ncclCommDestroy).</summary>
public sealed class NcclCommHandle : SafeHandleZeroOrMinusOneIsInvalid
{
    public NcclCommHandle() : base(ownsHandle: true) { }
    public NcclCommHandle(ncclComm_t comm) : base(ownsHandle: true) => SetHandle(comm.Value);
    public ncclComm_t Comm => new(handle);
    protected override bool ReleaseHandle() => NcclApi.ncclCommDestroy(new ncclComm_t(handle)) == ncclResult_t.ncclSuccess;
}
