using System.Diagnostics;

namespace TokenMill.Backends.Cuda;

/// <summary>Runs the command-line tools the kernel checks use (ptxas, cuobjdump, g++) and collects what they print.</summary>
public static class ExternalTool
{
    /// <summary>A finished run: its exit code (−1 when killed for running too long) and stdout followed by stderr.</summary>
    public sealed record Output(int ExitCode, string Text);

    /// <summary>
    /// Runs <paramref name="file"/> with <paramref name="args"/> (no shell); kills it and its children after
    /// <paramref name="timeout"/>. Throws <see cref="System.ComponentModel.Win32Exception"/> when it cannot be started.
    /// </summary>
    public static Output Run(string file, IEnumerable<string> args, TimeSpan timeout, IReadOnlyDictionary<string, string>? environment = null)
    {
        var psi = new ProcessStartInfo(file, args) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var (k, v) in environment ?? new Dictionary<string, string>()) psi.Environment[k] = v;
        using var p = Process.Start(psi) ?? throw new InvalidOperationException($"cannot start {file}");
        // Both streams drained concurrently: a tool that fills one pipe while we wait on the other would hang.
        var stderr = p.StandardError.ReadToEndAsync();
        var stdout = p.StandardOutput.ReadToEndAsync();
        if (!p.WaitForExit(timeout))
        {
            p.Kill(entireProcessTree: true);
            p.WaitForExit();
            return new Output(-1, $"{Path.GetFileName(file)} did not finish within {timeout.TotalSeconds:F0} s and was killed");
        }
        return new Output(p.ExitCode, stdout.Result + stderr.Result);
    }
}
