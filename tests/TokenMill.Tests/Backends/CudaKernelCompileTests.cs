using System.Text;
using TokenMill.Backends.Cuda;
using TokenMill.Interop;

namespace TokenMill.Tests.Backends;

/// <summary>
/// The CUDA kernels compile with NVRTC (no GPU needed). CI installs NVRTC with .ci/install-deps,
/// so these run there; they skip only where NVRTC cannot be loaded at all.
/// </summary>
public sealed class CudaKernelCompileTests : IDisposable
{
    readonly string _cache = Directory.CreateTempSubdirectory("tm-kernels").FullName;

    public void Dispose() => Directory.Delete(_cache, recursive: true);

    static void RequireNvrtc() =>
        Skip.IfNot(NativeLibraryResolver.TryLoad(CudaLibrary.Nvrtc, out string reason), "NVRTC cannot be loaded: " + reason);

    /// <summary>The entry points the CUDA backend looks up, per file.</summary>
    public static readonly Dictionary<string, string[]> EntryPoints = new()
    {
        ["activation.cu"] = ["silu_and_mul", "gelu_tanh_and_mul"],
        ["argmax.cu"] = ["argmax"],
        ["convert.cu"] = ["convert_f32_to_f16", "convert_f32_to_bf16", "dequantize_q8_0_f16", "dequantize_q4_0_f16"],
        ["embedding.cu"] = ["embedding_f32", "embedding_f16", "embedding_bf16", "embedding_q8_0"],
        ["gemv.cu"] = ["gemv_f32", "gemv_f16", "gemv_bf16", "gemv_q8_0", "gemv_q4_0", "gemv_f32_x8", "gemv_f16_x8", "gemv_bf16_x8", "gemv_q8_0_x8", "gemv_q4_0_x8"],
        ["paged_attention.cu"] = ["paged_attention_decode_f32", "paged_attention_decode_f16", "paged_attention_decode_q8_0",
                                  "paged_attention_decode_split_f32", "paged_attention_decode_split_f16", "paged_attention_decode_split_q8_0",
                                  "paged_attention_reduce"],
        ["paged_attention_prefill.cu"] = ["paged_attention_prefill_f32", "paged_attention_prefill_f16", "paged_attention_prefill_q8_0"],
        ["reshape_and_cache.cu"] = ["reshape_and_cache_f32", "reshape_and_cache_f16", "reshape_and_cache_q8_0"],
        ["rms_norm.cu"] = ["rms_norm", "fused_add_rms_norm"],
        ["rope.cu"] = ["rope"],
        ["sampling.cu"] = ["sample"],
    };

    [Fact]
    public void Every_kernel_file_and_its_header_are_embedded()
    {
        var names = KernelSources.Embedded().Select(s => s.FileName).ToList();
        Assert.Contains("common.cuh", names);
        Assert.Equal(EntryPoints.Keys.Order(StringComparer.Ordinal), names.Where(n => n.EndsWith(".cu", StringComparison.Ordinal)));
    }

    [SkippableTheory]
    [InlineData("compute_80")]
    [InlineData("compute_90")]
    public void Every_embedded_kernel_compiles_to_PTX_with_its_entry_points(string arch)
    {
        RequireNvrtc();
        var sources = KernelSources.Embedded();
        var compiler = new KernelCompiler(cacheDirectory: null);
        foreach (var kernel in sources.Where(s => !s.IsHeader))
        {
            var result = compiler.Compile(kernel, sources, arch);
            string ptx = Encoding.ASCII.GetString(result.Ptx);
            Assert.Contains($".target sm_{arch["compute_".Length..]}", ptx);
            foreach (string entry in EntryPoints[kernel.FileName])
                Assert.Contains($".entry {entry}(", ptx);
            // The attention's per-lane q/acc arrays must stay in registers (fully unrolled loops), not local memory.
            // (rope.cu does use local memory: libdevice's double sin/cos slow path for huge arguments.)
            if (kernel.FileName.StartsWith("paged_attention", StringComparison.Ordinal)) Assert.DoesNotContain(".local", ptx);
        }
    }

    [SkippableFact]
    public void A_broken_kernel_throws_an_NvrtcException_carrying_the_compiler_log()
    {
        RequireNvrtc();
        var broken = new KernelSource("broken.cu", "extern \"C\" __global__ void k(float* y)\n{\n    y[0] = undefined_thing;\n}\n");
        var e = Assert.Throws<NvrtcException>(() => new KernelCompiler(null).Compile(broken, [broken], "compute_80"));
        Assert.Equal(nvrtcResult.NVRTC_ERROR_COMPILATION, e.Status);
        Assert.Contains("NVRTC_ERROR_COMPILATION", e.Message);
        Assert.Contains("broken.cu(3): error: identifier \"undefined_thing\" is undefined", e.Message);
    }

    [SkippableFact]
    public void The_second_compile_is_a_cache_hit_and_an_edit_is_a_miss()
    {
        RequireNvrtc();
        var sources = KernelSources.Embedded();
        var kernel = sources.Single(s => s.FileName == "activation.cu");
        var compiler = new KernelCompiler(_cache);

        var first = compiler.Compile(kernel, sources, "compute_80");
        var second = compiler.Compile(kernel, sources, "compute_80");
        Assert.False(first.FromCache);
        Assert.True(second.FromCache);
        Assert.Equal(first.Ptx, second.Ptx);
        Assert.Single(Directory.GetFiles(_cache, "*.ptx"));

        var edited = kernel with { Text = kernel.Text + "\n// edited\n" };
        Assert.False(compiler.Compile(edited, sources, "compute_80").FromCache);
        Assert.False(compiler.Compile(kernel, sources, "compute_90").FromCache);
    }

    [Fact]
    public void The_cache_key_covers_source_headers_options_architecture_and_NVRTC_version()
    {
        var k = new KernelSource("a.cu", "x");
        (string, string)[] h = [("common.cuh", "1")];
        string key = KernelCompiler.CacheKey(k, h, ["-o"], "compute_80", "11.8");
        Assert.Equal(64, key.Length);
        Assert.NotEqual(key, KernelCompiler.CacheKey(k with { Text = "y" }, h, ["-o"], "compute_80", "11.8"));
        Assert.NotEqual(key, KernelCompiler.CacheKey(k, [("common.cuh", "2")], ["-o"], "compute_80", "11.8"));
        Assert.NotEqual(key, KernelCompiler.CacheKey(k, h, ["-p"], "compute_80", "11.8"));
        Assert.NotEqual(key, KernelCompiler.CacheKey(k, h, ["-o"], "compute_90", "11.8"));
        Assert.NotEqual(key, KernelCompiler.CacheKey(k, h, ["-o"], "compute_80", "12.4"));
        Assert.Equal(key, KernelCompiler.CacheKey(k, h, ["-o"], "compute_80", "11.8"));
    }
}

/// <summary>The kernels run on a GPU against scalar references (KernelSelfTest); skips without one.</summary>
public class CudaKernelGpuTests
{
    [SkippableFact]
    public void Every_kernel_matches_its_scalar_reference_on_the_GPU()
    {
        Skip.IfNot(NativeLibraryResolver.TryLoad(CudaLibrary.Driver, out _), "no CUDA driver (libcuda.so.1 not found)");
        Skip.IfNot(NativeLibraryResolver.TryLoad(CudaLibrary.Nvrtc, out string reason), "NVRTC cannot be loaded: " + reason);
        Skip.If(TokenMill.Interop.Driver.CudaContext.DeviceCount() == 0, "the CUDA driver reports no device");
        using var ctx = TokenMill.Interop.Driver.CudaContext.Create();
        var checks = KernelSelfTest.Run(ctx, new KernelCompiler(null), KernelSources.Embedded());
        Assert.NotEmpty(checks);
        var failed = checks.Where(c => !c.Passed).Select(c => $"{c.Kernel} [{c.Case}]: max error {c.MaxError} > {c.Tolerance}").ToList();
        Assert.True(failed.Count == 0, string.Join("\n", failed));
    }
}
