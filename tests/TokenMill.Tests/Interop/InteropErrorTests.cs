using TokenMill.Interop;

namespace TokenMill.Tests.Interop;

public class InteropErrorTests
{
    [Fact]
    public void Exceptions_carry_the_call_the_code_name_and_the_library_message()
    {
        var e = new CudaException("cuMemAlloc_v2", CUresult.CUDA_ERROR_OUT_OF_MEMORY, "out of memory");
        Assert.Equal("cuMemAlloc_v2 failed: CUDA_ERROR_OUT_OF_MEMORY (2): out of memory", e.Message);
        Assert.Equal("CUDA_ERROR_OUT_OF_MEMORY", e.CodeName);
        Assert.Equal(2, e.Code);

        var n = new NvrtcException("nvrtcCompileProgram", nvrtcResult.NVRTC_ERROR_COMPILATION, "NVRTC_ERROR_COMPILATION",
            "k.cu(3): error: identifier \"x\" is undefined\n");
        Assert.Equal("nvrtcCompileProgram failed: NVRTC_ERROR_COMPILATION (6)\nk.cu(3): error: identifier \"x\" is undefined", n.Message);

        Assert.Equal("cublasSgemm_v2 failed: CUBLAS_STATUS_INVALID_VALUE (7)",
            new CublasException("cublasSgemm_v2", cublasStatus_t.CUBLAS_STATUS_INVALID_VALUE, null).Message);
        Assert.Equal("ncclAllReduce failed: ncclInvalidUsage (5): invalid usage",
            new NcclException("ncclAllReduce", ncclResult_t.ncclInvalidUsage, "invalid usage").Message);
    }

    [Fact]
    public void A_code_newer_than_the_declarations_is_named_by_its_number()
    {
        var e = new CudaException("cuInit", (CUresult)12345, null);
        Assert.Equal("cuInit failed: CUresult(12345) (12345)", e.Message);
    }

    [Fact]
    public void The_resolver_tries_overrides_then_the_lib_dir_then_CUDA_13_12_11_sonames()
    {
        var env = new Dictionary<string, string>
        {
            ["TOKENMILL_NVRTC_LIBRARY"] = "/opt/x/libnvrtc.so.12.4",
            ["TOKENMILL_CUDA_LIB_DIR"] = "/opt/cuda/lib64",
        };
        var names = NativeLibraryResolver.Candidates(CudaLibrary.Nvrtc, k => env.GetValueOrDefault(k));
        Assert.Equal("/opt/x/libnvrtc.so.12.4", names[0]);
        Assert.Contains("/opt/cuda/lib64/libnvrtc.so.13", names);
        Assert.Equal(["libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so.11.2", "libnvrtc.so"], names.Skip(names.Count - 4));
        Assert.Contains("libcublas.so.11", NativeLibraryResolver.SonamesFor(CudaLibrary.Cublas));
        Assert.Equal("libnccl.so.2", NativeLibraryResolver.SonamesFor(CudaLibrary.Nccl)[0]);
    }

    [Fact]
    public void When_nothing_loads_one_exception_lists_every_name_tried_and_how_to_install()
    {
        var e = new NativeLibraryNotFoundException(CudaLibrary.Nvrtc,
            NativeLibraryResolver.Candidates(CudaLibrary.Nvrtc, _ => null), NativeLibraryResolver.InstallHint(CudaLibrary.Nvrtc));
        Assert.Contains("libnvrtc.so.13, libnvrtc.so.12, libnvrtc.so.11.2", e.Message);
        Assert.Contains("libnvrtc11.2 libnvrtc-builtins11.8", e.Message);
        Assert.Contains("TOKENMILL_NVRTC_LIBRARY", e.Message);
        Assert.Contains("NVIDIA driver", NativeLibraryResolver.InstallHint(CudaLibrary.Driver));
    }

    [SkippableFact]
    public void A_call_into_a_missing_library_throws_the_resolver_message()
    {
        Skip.If(NativeLibraryResolver.TryLoad(CudaLibrary.Driver, out _), "libcuda.so.1 is installed here; this test needs a machine without the NVIDIA driver");
        var e = Assert.Throws<NativeLibraryNotFoundException>(() => CudaApi.cuInit(0));
        Assert.Contains("libcuda.so.1", e.Message);
        Assert.Contains("NVIDIA driver", e.Message);
    }
}
