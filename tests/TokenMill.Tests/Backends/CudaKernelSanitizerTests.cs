using TokenMill.Backends.Cuda;

namespace TokenMill.Tests.Backends;

/// <summary>
/// The kernels on the CPU shim under ThreadSanitizer: tools/cuda-emu/kernels_test.cpp built with
/// <c>-fsanitize=thread</c> and <c>TM_EMU_FREE_RUNNING</c> (all threads of a block at once), so a shared-memory
/// access not ordered by a barrier is reported whatever the timing. The shim's own barriers are a mutex and a
/// condition variable, which TSan models exactly: no report comes from the emulation itself.
/// </summary>
public sealed class CudaKernelSanitizerTests : IDisposable
{
    readonly string _dir = Directory.CreateTempSubdirectory("tm-tsan").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    static string Tool(string name) => Path.Combine(TestData.RepoRoot, "tools", "cuda-emu", name);
    static string Kernels => Path.Combine(TestData.RepoRoot, "src", "Kernels", "cuda");

    void RequireTsan()
    {
        Skip.IfNot(OperatingSystem.IsLinux(), "ThreadSanitizer runs on Linux here");
        string probe = Path.Combine(_dir, "probe.cpp");
        File.WriteAllText(probe, "#include <thread>\nint main() { std::thread t([] {}); t.join(); }\n");
        ExternalTool.Output r;
        try { r = ExternalTool.Run("g++", ["-fsanitize=thread", "-pthread", probe, "-o", Path.Combine(_dir, "probe")], TimeSpan.FromMinutes(1)); }
        catch (System.ComponentModel.Win32Exception) { Skip.If(true, "g++ not found (the TSan build of the CPU shim needs g++ 12+ with libtsan)"); return; }
        Skip.If(r.ExitCode != 0, "g++ cannot build with -fsanitize=thread (Debian: the libtsan2 package comes with g++ 12): " + r.Text.Trim());
    }

    ExternalTool.Output BuildAndRun(string kernelsDir, params string[] groups)
    {
        string exe = Path.Combine(_dir, "kernels-tsan");
        var build = ExternalTool.Run("g++", ["-std=c++20", "-O1", "-g", "-fsanitize=thread", "-DTM_EMU_FREE_RUNNING", "-pthread", "-w",
                                      "-I", kernelsDir, "-o", exe, Tool("kernels_test.cpp")], TimeSpan.FromMinutes(3));
        Assert.True(build.ExitCode == 0, build.Text);
        // exitcode=66: TSan's exit status when it reported anything (distinct from the harness's 1 for a wrong value).
        var run = ExternalTool.Run(exe, groups, TimeSpan.FromMinutes(5), new Dictionary<string, string> { ["TSAN_OPTIONS"] = "exitcode=66 halt_on_error=0" });
        Assert.True(run.ExitCode != -1, run.Text);
        return run;
    }

    [SkippableFact]
    public void Every_kernel_is_race_free_under_ThreadSanitizer()
    {
        RequireTsan();
        var (code, output) = BuildAndRun(Kernels);
        Assert.DoesNotContain("ThreadSanitizer", output);
        Assert.True(code == 0, output);
        Assert.Matches(@"(\d+) of \1 checks passed", output);
    }

    [SkippableFact]
    public void ThreadSanitizer_reports_a_missing_syncthreads()
    {
        RequireTsan();
        string broken = Path.Combine(_dir, "broken");
        Directory.CreateDirectory(broken);
        foreach (string f in Directory.GetFiles(Kernels)) File.Copy(f, Path.Combine(broken, Path.GetFileName(f)));
        string argmax = Path.Combine(broken, "argmax.cu");
        string text = File.ReadAllText(argmax);
        const string barrier = "    }\n    __syncthreads();\n    if (warp == 0)";
        Assert.Contains(barrier, text);
        File.WriteAllText(argmax, text.Replace(barrier, "    }\n    if (warp == 0)", StringComparison.Ordinal));

        var (code, output) = BuildAndRun(broken, "argmax");
        Assert.Equal(66, code);
        Assert.Contains("WARNING: ThreadSanitizer: data race", output);
        Assert.Contains("argmax.cu", output);   // the racing accesses are in the kernel, not in the shim
    }
}
