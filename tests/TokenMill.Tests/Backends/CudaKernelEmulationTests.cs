using System.Diagnostics;

namespace TokenMill.Tests.Backends;

/// <summary>
/// Runs every CUDA kernel on the CPU through tools/cuda-emu (g++ with a small CUDA emulation: one OS
/// thread per CUDA thread, real barriers and warp shuffles) against scalar references. It checks the
/// kernels' indexing, reductions and formulas where no GPU exists; it says nothing about the hardware.
/// </summary>
public class CudaKernelEmulationTests
{
    static bool HasGxx()
    {
        try
        {
            using var p = Process.Start(new ProcessStartInfo("g++", "--version") { RedirectStandardOutput = true, RedirectStandardError = true });
            p!.WaitForExit();
            return p.ExitCode == 0;
        }
        catch (System.ComponentModel.Win32Exception) { return false; }
    }

    static (int Code, string Output) RunProcess(string file, IEnumerable<string> args, Dictionary<string, string> env)
    {
        var psi = new ProcessStartInfo(file, args) { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var (k, v) in env) psi.Environment[k] = v;
        using var p = Process.Start(psi)!;
        var stderr = p.StandardError.ReadToEndAsync();
        string stdout = p.StandardOutput.ReadToEnd();
        p.WaitForExit();
        return (p.ExitCode, stdout + stderr.Result);
    }

    static string Tool(string name) => Path.Combine(TestData.RepoRoot, "tools", "cuda-emu", name);

    static void RequireGxx() =>
        Skip.IfNot(OperatingSystem.IsLinux() && HasGxx(), "g++ not found (the CPU emulation of the CUDA kernels, tools/cuda-emu, needs g++ 12+)");

    [SkippableFact]
    public void Every_kernel_matches_its_scalar_reference_in_the_CPU_emulation()
    {
        RequireGxx();
        string tmp = Directory.CreateTempSubdirectory("tm-emu").FullName;
        var (code, output) = RunProcess("bash", [Tool("run.sh")], new() { ["TMPDIR"] = tmp });
        Assert.True(code == 0, output);
        Assert.DoesNotContain("FAIL", output);
        Assert.Matches(@"(\d+) of \1 checks passed", output);
    }

    /// <summary>
    /// 'tokenmill kernels selftest' end to end against the emulated driver (fake_cuda.cpp): NVRTC really
    /// compiles PTX for compute_90, modules are loaded and kernels looked up by name, arguments packed,
    /// launched with the C# launch shapes and copied back — only the kernels' execution is emulated.
    /// </summary>
    [SkippableFact]
    public void Kernels_selftest_passes_on_the_emulated_driver()
    {
        RequireGxx();
        Skip.IfNot(TokenMill.Interop.NativeLibraryResolver.TryLoad(TokenMill.Interop.CudaLibrary.Nvrtc, out string reason), "NVRTC cannot be loaded: " + reason);
        string tmp = Directory.CreateTempSubdirectory("tm-emu").FullName;
        var (built, library) = RunProcess("bash", [Tool("build-fake-driver.sh")], new() { ["TMPDIR"] = tmp });
        Assert.True(built == 0, library);
        var (code, output) = RunProcess("dotnet", [Path.Combine(AppContext.BaseDirectory, "tokenmill.dll"), "kernels", "selftest", "--no-cache"],
            new() { ["TOKENMILL_CUDA_LIBRARY"] = library.Trim().Split('\n')[^1] });
        Assert.True(code == 0, output);
        Assert.Contains("TokenMill CPU emulation (no GPU), compute capability 9.0", output);
        Assert.DoesNotContain("FAIL", output);
        Assert.Matches(@"all \d+ checks passed", output);
    }
}
