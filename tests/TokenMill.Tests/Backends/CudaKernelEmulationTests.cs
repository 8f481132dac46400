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

    [SkippableFact]
    public void Every_kernel_matches_its_scalar_reference_in_the_CPU_emulation()
    {
        Skip.IfNot(OperatingSystem.IsLinux() && HasGxx(), "g++ not found (the CPU emulation of the CUDA kernels, tools/cuda-emu/run.sh, needs g++ 12+)");
        var psi = new ProcessStartInfo("bash", [Path.Combine(TestData.RepoRoot, "tools", "cuda-emu", "run.sh")])
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
        };
        psi.Environment["TMPDIR"] = Directory.CreateTempSubdirectory("tm-emu").FullName;
        using var p = Process.Start(psi)!;
        var stderr = p.StandardError.ReadToEndAsync();
        string stdout = p.StandardOutput.ReadToEnd();
        p.WaitForExit();
        string output = stdout + stderr.Result;
        Assert.True(p.ExitCode == 0, output);
        Assert.DoesNotContain("FAIL", output);
        Assert.Matches(@"(\d+) of \1 checks passed", output);
    }
}
