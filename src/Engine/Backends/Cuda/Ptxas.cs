using System.Globalization;
using System.Text.RegularExpressions;

namespace TokenMill.Backends.Cuda;

/// <summary>What ptxas reports for one kernel assembled for one SM architecture (<c>ptxas -v</c>).</summary>
public sealed record KernelResources(string Kernel, string Architecture, int Registers, int SpillStoreBytes, int SpillLoadBytes,
                                     int StackFrameBytes, int StaticSharedBytes);

/// <summary>
/// NVIDIA's PTX assembler and its SASS disassembler (CUDA 11.8's, from Debian's nvidia-cuda-toolkit; see
/// .ci/install-deps). They need no GPU: ptxas turns NVRTC's PTX into a cubin for one real architecture
/// (<c>sm_80</c>, <c>sm_90</c>) and, with <c>-v</c>, reports each kernel's registers, spills, stack and shared
/// memory; cuobjdump prints the cubin's SASS.
/// </summary>
public static partial class Ptxas
{
    /// <summary>Where .ci/install-deps puts ptxas, cuobjdump and nvdisasm.</summary>
    public const string InstallDirectory = "/usr/local/cuda-tools/bin";

    /// <summary>
    /// <paramref name="tool"/> (<c>ptxas</c>, <c>cuobjdump</c>): the folder of <paramref name="near"/> first (a
    /// cuobjdump next to the ptxas given), then PATH, then <see cref="InstallDirectory"/>; null when none has it.
    /// </summary>
    public static string? Find(string tool, string? near = null)
    {
        var folders = new List<string>();
        if (near is not null && Path.GetDirectoryName(Path.GetFullPath(near)) is { } dir) folders.Add(dir);
        folders.AddRange((Environment.GetEnvironmentVariable("PATH") ?? "").Split(Path.PathSeparator, StringSplitOptions.RemoveEmptyEntries));
        folders.Add(InstallDirectory);
        return folders.Select(f => Path.Combine(f, tool)).FirstOrDefault(File.Exists);
    }

    /// <summary>
    /// Assembles <paramref name="ptx"/> (compiled for <c>compute_NN</c>) into <paramref name="cubinPath"/> for
    /// <paramref name="smArchitecture"/> with <c>ptxas -v</c>. ptxas refuses PTX whose <c>.target</c> is newer
    /// than its <c>-arch</c>, so the PTX must come from the same or an older virtual architecture.
    /// </summary>
    public static ExternalTool.Output Assemble(string ptxas, byte[] ptx, string smArchitecture, string cubinPath)
    {
        string ptxPath = Path.ChangeExtension(cubinPath, ".ptx");
        File.WriteAllBytes(ptxPath, ptx);
        return ExternalTool.Run(ptxas, ["-v", $"-arch={smArchitecture}", "-o", cubinPath, ptxPath], TimeSpan.FromMinutes(2));
    }

    /// <summary>
    /// Parses ptxas's <c>-v</c> report, one entry per kernel:
    /// <code>
    /// ptxas info    : Compiling entry function 'rms_norm' for 'sm_80'
    /// ptxas info    : Function properties for rms_norm
    ///     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
    /// ptxas info    : Used 16 registers, 128 bytes smem, 380 bytes cmem[0]
    /// </code>
    /// (sm_90's "Used" line has no cmem part; smem is absent when the kernel has none.)
    /// </summary>
    public static IReadOnlyList<KernelResources> ParseResources(string log)
    {
        var results = new List<KernelResources>();
        string? kernel = null, arch = null;
        int stack = 0, spillStores = 0, spillLoads = 0;
        foreach (string line in log.Split('\n'))
        {
            if (EntryLine().Match(line) is { Success: true } e)
            {
                (kernel, arch) = (e.Groups[1].Value, e.Groups[2].Value);
                (stack, spillStores, spillLoads) = (0, 0, 0);
            }
            else if (kernel is not null && PropertiesLine().Match(line) is { Success: true } p)
            {
                stack = Int(p.Groups[1]);
                spillStores = Int(p.Groups[2]);
                spillLoads = Int(p.Groups[3]);
            }
            else if (kernel is not null && UsedLine().Match(line) is { Success: true } u)
            {
                int smem = SharedPart().Match(line) is { Success: true } m ? Int(m.Groups[1]) : 0;
                results.Add(new KernelResources(kernel, arch!, Int(u.Groups[1]), spillStores, spillLoads, stack, smem));
                kernel = null;
            }
        }
        return results;
    }

    static int Int(Group g) => int.Parse(g.Value, NumberStyles.None, CultureInfo.InvariantCulture);

    [GeneratedRegex(@"Compiling entry function '(\w+)' for '(sm_\w+)'")]
    private static partial Regex EntryLine();

    [GeneratedRegex(@"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")]
    private static partial Regex PropertiesLine();

    [GeneratedRegex(@"Used (\d+) registers")]
    private static partial Regex UsedLine();

    [GeneratedRegex(@"(\d+) bytes smem")]
    private static partial Regex SharedPart();
}
