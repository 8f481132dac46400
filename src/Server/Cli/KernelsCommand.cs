using System.Globalization;
using TokenMill.Backends.Cuda;
using TokenMill.Distributed;
using TokenMill.Interop;
using TokenMill.Interop.Driver;
using TokenMill.KvCache;

namespace TokenMill.Server.Cli;

/// <summary>
/// <c>tokenmill kernels check</c>: compiles every CUDA kernel file with NVRTC for each architecture and
/// prints one row per (file, architecture) — compile time, PTX size, OK/FAIL — then NVRTC's log for each
/// failure; where ptxas is found, assembles every kernel for the matching sm_NN and prints its registers,
/// spills, stack, shared memory and occupancy at the backend's launch configuration against the kernel's
/// budget (<see cref="KernelLaunches"/>). Needs NVRTC (and ptxas) only, no GPU. Exit code 1 when any
/// compilation fails, a budget is exceeded, or NVRTC cannot be loaded.
/// <c>tokenmill kernels sass NAME</c> prints one kernel's SASS (ptxas + cuobjdump).
/// </summary>
public static class KernelsCommand
{
    internal const string Help = """
        usage: tokenmill kernels check [--kernels-dir DIR] [--arch 80,90] [--ptxas PATH] [--no-cache]
               tokenmill kernels sass NAME [--arch sm_90] [--kernels-dir DIR] [--ptxas PATH]
               tokenmill kernels test [--emulate] [--kernel NAME,...] [--kernels-dir DIR] [--device N] [--no-cache]
               tokenmill kernels bench [--emulate] [--kernel NAME,...] [--kernels-dir DIR] [--device N] [--sweep full|small]
                                       [--samples N] [--launches N] [--output-json F] [--no-cache]
               tokenmill kernels nccl [--ranks N] [--emulate] [--stall-rank R] [--timeout SECONDS]
               tokenmill kernels forward [--emulate] [--model M] [--dtype T] [--dummy-layers N] [--partition-size N] [-tp N]
                                         [--gemm-min-rows N] [--kv-cache-dtype f32|f16|q8_0] [--stall-rank R | --fail-rank R]
                                         [--timeout SECONDS]

          check     compile every kernel with NVRTC (no GPU needed); with ptxas, assemble each for sm_NN
                    and check its registers, spills and occupancy against its budget
          sass      print the SASS of kernel NAME (ptxas, then cuobjdump -sass)
          test      run every kernel against the CPU reference (tolerance per dtype), print a pass/fail table:
                    on GPU N (default 0), or with --emulate on the CPU through the shim of tools/cuda-emu
                    (built with g++ at run time from the kernel sources; no GPU, no driver). 'selftest' is
                    the same command.
          bench     time every kernel over a sweep of shapes (CUDA events around --launches back-to-back
                    launches, median of --samples samples) and print µs per launch with the achieved GB/s and
                    GFLOP/s (from the bytes and operations the shape needs at the least); with --emulate the
                    times are the CPU shim's and say nothing about a GPU
          nccl      the NCCL communicator's tests (all-reduce, all-gather, broadcast, barrier on device
                    buffers, checked against the host) with N ranks in this process, rank r on GPU r; with
                    --emulate on the fake NCCL and emulated driver of tools/cuda-emu (ranks are threads);
                    with --stall-rank R, rank R first never calls (the others must time out naming it),
                    then aborts with an error (the others must get it at once).
                    With torchrun's RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT set, this
                    process is one rank of a group of processes (on GPU LOCAL_RANK)
          forward   the CUDA backend's whole forward pass against the CPU backend's on one model: a few steps
                    mixing prefills, chunked prefills and decodes of six sequences (up to 32 positions); per
                    step the attention kernels the backend chose, whether its products ran on cuBLAS or the
                    GEMV kernels, the largest logit difference and its tolerance (on GPU 0, or with --emulate
                    on the CPU through the shim and its fake cuBLAS);
                    with -tp N the CUDA side runs N tensor-parallel ranks (rank r on GPU r, NCCL; with --emulate the
                    fake NCCL); with --stall-rank R rank R stalls at layer 1 (the step must time out naming it), with
                    --fail-rank R it throws there (the step must fail at once naming it)

          --kernels-dir DIR  compile the .cu/.cuh files of DIR instead of the embedded kernels
                             (edit a kernel and rerun without rebuilding)
          --arch LIST        compute capabilities to compile for (default 80,90: compute_80, compute_90;
                             for sass one architecture, default sm_90)
          --ptxas PATH       NVIDIA's ptxas (default: found on PATH or in /usr/local/cuda-tools/bin,
                             where .ci/install-deps puts it); cuobjdump is looked for next to it
          --kernel LIST      test only these kernels (comma-separated names; cublas_gemm: the backend's
                             cuBLAS products, the activations' conversion included)
          --emulate          test, bench, nccl, forward: run on the CPU through the shim instead of on a GPU
          --device N         test, bench: the GPU to run on (default 0)
          --sweep S          bench: full (TinyLlama and Llama 3 8B sizes; default on a GPU) or small
                             (default with --emulate)
          --samples N        bench: timed samples per shape, the median is reported (default 10; 3 emulated)
          --launches N       bench: launches per sample (default 10; 1 emulated)
          --output-json F    bench: write every row as JSON
          --ranks N          nccl: ranks of the group (default 1)
          --stall-rank R     nccl: the rank that stalls, then fails (checks the timeout and the abort instead);
                             forward: the rank that stalls at layer 1
          --fail-rank R      forward: the rank that throws at layer 1
          --timeout SECONDS  nccl, forward: how long a collective waits for the others (default 10; 2 with
                             --stall-rank)
          -tp N              forward: tensor-parallel ranks of the CUDA side (--tensor-parallel-size; default 1)
          --model M          forward: the model (default dummy:tinyllama-1.1b; --dtype and --dummy-layers as
                             'tokenmill generate' takes them)
          --partition-size N forward: positions per split-K decode partition (default 512; 16 makes the
                             32-position sequence's decodes split)
          --gemm-min-rows N  forward: rows of a chunk (at most 8 here) from which its products run as cuBLAS
                             GEMMs (default 8; 9 or more: the GEMV kernels only)
          --kv-cache-dtype T forward: the KV cache type of both sides, f32 (default), f16 or q8_0
          --no-cache         compile even when the PTX cache has the result
                             (cache: $TOKENMILL_CACHE_DIR/kernels or ~/.cache/tokenmill/kernels; the
                             shim's objects go to its emulation/ folder)

        example: tokenmill kernels check --arch 80,90
                 tokenmill kernels test --emulate --kernels-dir my-kernels/
                 tokenmill kernels bench --kernel gemv_q4_0,gemv_q8_0 --output-json gemv.json
                 tokenmill kernels nccl --ranks 2 --emulate
                 tokenmill kernels forward --emulate --model stories260K.gguf --partition-size 16
        """;

    /// <summary>What the emulated driver calls its device: the proof that --emulate really runs on the shim.</summary>
    public const string EmulatedDeviceName = KernelEmulation.DeviceName;

    internal static readonly HashSet<string> ValueOptions = ["kernels-dir", "arch", "device", "ptxas", "kernel", "sweep", "samples", "launches", "output-json", "ranks", "stall-rank", "fail-rank", "timeout", "model", "dtype", "dummy-layers", "tensor-parallel-size", "partition-size", "gemm-min-rows", "kv-cache-dtype"];
    internal static readonly HashSet<string> Flags = ["no-cache", "help", "emulate"];

    public static int Run(string[] args, TextWriter stdout, TextWriter stderr)
    {
        var a = new CliArguments("kernels", args, ValueOptions, Flags);
        if (a.Flag("help") || a.Positional.Count == 0)
        {
            stdout.WriteLine(Help);
            return a.Flag("help") ? Cli.ExitOk : Cli.ExitUsage;
        }
        if (a.Positional is ["selftest"] or ["test"]) return SelfTest(a, stdout, stderr);
        if (a.Positional is ["sass", ..]) return Sass(a, stdout, stderr);
        if (a.Positional is ["bench"]) return Bench(a, stdout, stderr);
        if (a.Positional is ["nccl"]) return NcclTest(a, stdout, stderr);
        if (a.Positional is ["forward"]) return Forward(a, stdout);
        if (a.Positional is not ["check"]) throw new UsageException($"unknown kernels subcommand '{string.Join(' ', a.Positional)}' (subcommands: bench, check, forward, nccl, sass, test)");

        var archs = ParseArchs(a.String("arch") ?? "80,90");
        var sources = a.String("kernels-dir") is { } dir ? KernelSources.FromDirectory(dir) : KernelSources.Embedded();
        string? ptxas = FindPtxas(a, stderr, out bool ptxasMissing);
        if (ptxasMissing) return Cli.ExitFailure;
        if (ptxas is not null)
            foreach (string arch in archs)
                if (SmLimits.Find(RealArchitecture(arch)) is null)
                    throw new UsageException($"--arch {arch}: no SM limits known for {RealArchitecture(arch)} to compute occupancy with (known: {string.Join(", ", SmLimits.All.Select(l => l.Architecture))})");
        if (!NativeLibraryResolver.TryLoad(CudaLibrary.Nvrtc, out string reason))
        {
            stderr.WriteLine($"tokenmill kernels: error: {reason}");
            return Cli.ExitFailure;
        }
        var (major, minor) = Nvrtc.Version();
        string? cacheDir = a.Flag("no-cache") ? null : KernelCompiler.DefaultCacheDirectory();
        stdout.WriteLine($"NVRTC {major}.{minor}; options {string.Join(' ', KernelCompiler.BaseOptions)}; cache {cacheDir ?? "off"}");
        var results = Check(new KernelCompiler(cacheDir), sources, archs);
        WriteTable(stdout, results);
        foreach (var r in results.Where(r => r.Error is not null || !string.IsNullOrWhiteSpace(r.Kernel?.Log)))
        {
            stdout.WriteLine();
            stdout.WriteLine($"--- {r.FileName} for {r.Architecture}{(r.Error is null ? " (compiled, with warnings)" : "")}:");
            stdout.WriteLine(r.Error ?? r.Kernel!.Log.TrimEnd());
        }
        int failed = results.Count(r => r.Error is not null);
        stdout.WriteLine(failed == 0 ? $"all {results.Count} compilations OK" : $"{failed} of {results.Count} compilations FAILED");

        int overBudget = 0;
        if (ptxas is null)
        {
            stdout.WriteLine();
            stdout.WriteLine($"ptxas not found on PATH or in {Ptxas.InstallDirectory} (.ci/install-deps installs it; or pass --ptxas PATH): " +
                             "registers, spills and occupancy NOT checked");
        }
        else
        {
            stdout.WriteLine();
            stdout.WriteLine($"ptxas {ptxas}: resources per kernel at the backend's launch configuration (budgets: KernelLaunches)");
            var rows = CheckResources(ptxas, sources, results);
            WriteResourceTable(stdout, rows);
            overBudget = rows.Count(r => r.Problem is not null);
            stdout.WriteLine(overBudget == 0 ? $"all {rows.Count} kernel resource budgets met" : $"{overBudget} of {rows.Count} kernel resource checks FAILED");
        }
        return failed == 0 && overBudget == 0 ? Cli.ExitOk : Cli.ExitFailure;
    }

    /// <summary>ptxas from --ptxas (missing = error), else found on PATH or in the install folder (null = not found).</summary>
    static string? FindPtxas(CliArguments a, TextWriter stderr, out bool missing)
    {
        missing = false;
        if (a.String("ptxas") is not { } path) return Ptxas.Find("ptxas");
        if (File.Exists(path)) return Path.GetFullPath(path);
        stderr.WriteLine($"tokenmill kernels: error: --ptxas {path}: no such file");
        missing = true;
        return null;
    }

    /// <summary>compute_90 → sm_90: the real architecture ptxas assembles the compute_90 PTX for.</summary>
    static string RealArchitecture(string computeArch) => "sm_" + computeArch["compute_".Length..];

    /// <summary>
    /// One kernel on one architecture: what ptxas reported, the occupancy at its launch configuration, and
    /// what is wrong (over budget, no budget declared, ptxas failed) — null when it is within budget.
    /// </summary>
    public sealed record ResourceRow(string Kernel, string Architecture, KernelResources? Resources, KernelLaunch? Launch,
                                     OccupancyResult? Occupancy, string? Problem);

    /// <summary>Assembles every compiled kernel file with ptxas for its sm_NN and checks each kernel against its budget.</summary>
    public static IReadOnlyList<ResourceRow> CheckResources(string ptxas, IReadOnlyList<KernelSource> sources, IReadOnlyList<CheckResult> compiled)
    {
        var rows = new List<ResourceRow>();
        string work = Directory.CreateTempSubdirectory("tokenmill-ptxas").FullName;
        try
        {
            foreach (var c in compiled.Where(c => c.Kernel is not null))
            {
                string sm = RealArchitecture(c.Architecture);
                var kernels = sources.First(s => s.FileName == c.FileName).Kernels();
                var output = Ptxas.Assemble(ptxas, c.Kernel!.Ptx, sm, Path.Combine(work, $"{Path.GetFileNameWithoutExtension(c.FileName)}-{sm}.cubin"));
                var reported = output.ExitCode == 0 ? Ptxas.ParseResources(output.Text) : [];
                foreach (var (name, _) in kernels)
                {
                    if (output.ExitCode != 0)
                    {
                        rows.Add(new ResourceRow(name, sm, null, null, null, $"ptxas failed on {c.FileName}: {output.Text.Trim()}"));
                        continue;
                    }
                    var r = reported.FirstOrDefault(k => k.Kernel == name);
                    var launch = KernelLaunches.Find(name);
                    if (r is null) { rows.Add(new ResourceRow(name, sm, null, launch, null, "ptxas reported nothing for this kernel")); continue; }
                    if (launch is null) { rows.Add(new ResourceRow(name, sm, r, null, null, "no launch configuration or budget declared (KernelLaunches)")); continue; }
                    var occupancy = Occupancy.Compute(SmLimits.Find(sm)!, launch.BlockSize, r.Registers, r.StaticSharedBytes, launch.DynamicSharedBytes);
                    string? problem =
                        occupancy.BlocksPerSm == 0 ? $"cannot launch {launch.BlockSize} threads per block ({occupancy.LimitedBy})" :
                        r.SpillStoreBytes + r.SpillLoadBytes > launch.MaxSpillBytes ? $"spills {r.SpillStoreBytes} + {r.SpillLoadBytes} bytes (budget {launch.MaxSpillBytes})" :
                        occupancy.Occupancy < launch.MinOccupancy ? $"occupancy {occupancy.Occupancy:P1} below budget {launch.MinOccupancy:P1} (limited by {occupancy.LimitedBy})" :
                        null;
                    rows.Add(new ResourceRow(name, sm, r, launch, occupancy, problem));
                }
            }
        }
        finally { Directory.Delete(work, recursive: true); }
        return rows;
    }

    static void WriteResourceTable(TextWriter w, IReadOnlyList<ResourceRow> rows)
    {
        var inv = CultureInfo.InvariantCulture;
        int nameWidth = Math.Max("kernel".Length, rows.Count == 0 ? 0 : rows.Max(r => r.Kernel.Length));
        w.WriteLine(string.Create(inv, $"{"kernel".PadRight(nameWidth)}  {"arch",-5}  {"regs",4}  {"spill st/ld",11}  {"stack",5}  {"smem",5}  {"block",5}  {"blocks/SM",9}  {"occupancy",9}  {"limited by",-13}  {"budget",7}  result"));
        foreach (var r in rows)
        {
            var k = r.Resources;
            string spill = k is null ? "-" : $"{k.SpillStoreBytes}/{k.SpillLoadBytes}";
            string occ = r.Occupancy is { } o ? o.Occupancy.ToString("P1", inv) : "-";
            w.WriteLine(string.Create(inv,
                $"{r.Kernel.PadRight(nameWidth)}  {r.Architecture,-5}  {(k is null ? "-" : k.Registers.ToString(inv)),4}  {spill,11}  {(k is null ? "-" : k.StackFrameBytes.ToString(inv)),5}  " +
                $"{(k is null ? "-" : k.StaticSharedBytes.ToString(inv)),5}  {(r.Launch is null ? "-" : r.Launch.BlockSize.ToString(inv)),5}  " +
                $"{(r.Occupancy is null ? "-" : r.Occupancy.BlocksPerSm.ToString(inv)),9}  {occ,9}  {r.Occupancy?.LimitedBy ?? "-",-13}  " +
                $"{(r.Launch is null ? "-" : r.Launch.MinOccupancy.ToString("P1", inv)),7}  {(r.Problem is null ? "OK" : "FAIL: " + r.Problem)}"));
        }
    }

    static int Sass(CliArguments a, TextWriter stdout, TextWriter stderr)
    {
        if (a.Positional is not ["sass", var name]) throw new UsageException("usage: tokenmill kernels sass NAME [--arch sm_90] [--kernels-dir DIR] [--ptxas PATH]");
        string arch = a.String("arch") ?? "sm_90";
        string digits = arch.StartsWith("sm_", StringComparison.Ordinal) ? arch[3..] : arch.StartsWith("compute_", StringComparison.Ordinal) ? arch[8..] : arch;
        if (!int.TryParse(digits, NumberStyles.None, CultureInfo.InvariantCulture, out int cc) || cc < 50 || cc > 200)
            throw new UsageException($"--arch for sass takes one architecture like sm_90 (or 90); got '{arch}'");
        var sources = a.String("kernels-dir") is { } dir ? KernelSources.FromDirectory(dir) : KernelSources.Embedded();
        var file = sources.FirstOrDefault(s => !s.IsHeader && s.Kernels().Any(k => k.Name == name));
        if (file is null)
        {
            var all = sources.Where(s => !s.IsHeader).SelectMany(s => s.Kernels().Select(k => k.Name)).Order(StringComparer.Ordinal);
            stderr.WriteLine($"tokenmill kernels: error: no kernel named '{name}' (kernels: {string.Join(", ", all)})");
            return Cli.ExitFailure;
        }
        string? ptxas = FindPtxas(a, stderr, out bool missing);
        if (missing) return Cli.ExitFailure;
        string? cuobjdump = ptxas is null ? null : Ptxas.Find("cuobjdump", near: ptxas);
        if (ptxas is null || cuobjdump is null)
        {
            stderr.WriteLine($"tokenmill kernels: error: {(ptxas is null ? "ptxas" : "cuobjdump")} not found on PATH or in {Ptxas.InstallDirectory} (.ci/install-deps installs both)");
            return Cli.ExitFailure;
        }
        if (!NativeLibraryResolver.TryLoad(CudaLibrary.Nvrtc, out string reason))
        {
            stderr.WriteLine($"tokenmill kernels: error: {reason}");
            return Cli.ExitFailure;
        }
        CompiledKernel compiled;
        try { compiled = new KernelCompiler(a.Flag("no-cache") ? null : KernelCompiler.DefaultCacheDirectory()).Compile(file, sources, $"compute_{cc}"); }
        catch (NvrtcException e)
        {
            stderr.WriteLine($"tokenmill kernels: error: {file.FileName} does not compile for compute_{cc}:\n{e.Message}");
            return Cli.ExitFailure;
        }
        string work = Directory.CreateTempSubdirectory("tokenmill-sass").FullName;
        try
        {
            string cubin = Path.Combine(work, $"{Path.GetFileNameWithoutExtension(file.FileName)}.cubin");
            var assembled = Ptxas.Assemble(ptxas, compiled.Ptx, $"sm_{cc}", cubin);
            if (assembled.ExitCode != 0)
            {
                stderr.WriteLine($"tokenmill kernels: error: ptxas -arch=sm_{cc} failed on {file.FileName}:\n{assembled.Text.Trim()}");
                return Cli.ExitFailure;
            }
            var resources = Ptxas.ParseResources(assembled.Text).FirstOrDefault(r => r.Kernel == name);
            if (resources is not null)
                stdout.WriteLine($"// {name} for sm_{cc}: {resources.Registers} registers, {resources.SpillStoreBytes}/{resources.SpillLoadBytes} bytes spill stores/loads, " +
                                 $"{resources.StackFrameBytes} bytes stack, {resources.StaticSharedBytes} bytes static shared memory");
            var sass = ExternalTool.Run(cuobjdump, ["-sass", "-fun", name, cubin], TimeSpan.FromMinutes(1));
            if (sass.ExitCode != 0)
            {
                stderr.WriteLine($"tokenmill kernels: error: cuobjdump -sass failed:\n{sass.Text.Trim()}");
                return Cli.ExitFailure;
            }
            stdout.Write(sass.Text);
            return Cli.ExitOk;
        }
        finally { Directory.Delete(work, recursive: true); }
    }

    /// <summary><c>kernels forward</c>: <see cref="ForwardComparison"/> of the CUDA executor against the CPU's, as a table.</summary>
    static int Forward(CliArguments a, TextWriter stdout)
    {
        if (a.String("device") is not null) throw new UsageException("kernels forward runs on GPU 0 (or with --emulate on the shim); --device is for 'kernels test'");
        if (a.String("kernels-dir") is not null || a.String("kernel") is not null)
            throw new UsageException("kernels forward runs the embedded kernels; --kernels-dir and --kernel are for 'kernels test'");
        int partitionSize = a.Int("partition-size", PagedAttentionDecodePlan.PartitionSize, min: 1);
        int gemmMinRows = a.Int("gemm-min-rows", CudaForward.GemmMinRows, min: 1);
        var kvDtype = GenerateCommand.ParseKvCacheDtype(a.String("kv-cache-dtype") ?? "f32");
        var (modelName, load) = Cli.ParseModel(a);
        using var model = TokenMill.Models.ModelLoader.Load(modelName, load);
        // Four-token blocks, so the short sequences still span several blocks each; eight rows per chunk, so the
        // ten-token steps run in two chunks on both backends (and the 30-token prompt in four).
        const int maxBatchTokens = 8;
        if (model.Config.ContextLength < ForwardComparison.ContextNeeded)
            throw new UsageException($"kernels forward needs a model of at least {ForwardComparison.ContextNeeded} positions; {modelName} has {model.Config.ContextLength}");
        int maxModelLen = ForwardComparison.ContextNeeded;
        int tp = a.Int("tensor-parallel-size", 1, min: 1, max: 64);
        int? stall = a.String("stall-rank") is null ? null : a.Int("stall-rank", 0, min: 0, max: tp - 1);
        int? fail = a.String("fail-rank") is null ? null : a.Int("fail-rank", 0, min: 0, max: tp - 1);
        if (stall is not null && fail is not null) throw new UsageException("--stall-rank and --fail-rank are two tests: give one");
        if ((stall ?? fail) is not null && tp == 1) throw new UsageException("--stall-rank and --fail-rank need tensor-parallel ranks (-tp 2 or more)");
        // Rank 0 runs on the calling thread: stalled, nothing is left to notice it (its peers' error waits for it).
        if (stall == 0) throw new UsageException($"--stall-rank 0 would stall the thread that reports the error (rank 0 runs on it); choose a rank in 1..{tp - 1}");
        var options = new TokenMill.Core.EngineOptions
        {
            Device = a.Flag("emulate") ? TokenMill.Core.EngineDevice.CudaEmulated : TokenMill.Core.EngineDevice.Cuda,
            BlockSize = ForwardComparison.BlockSize,
            NumKvBlocks = ForwardComparison.BlocksNeeded,
            KvCacheDtype = kvDtype,
            TensorParallelSize = tp,
            TensorParallelTimeout = GenerateCommand.ParseTimeout("timeout", a.String("timeout"), TimeSpan.FromSeconds(stall is null ? 10 : 2)),
        };
        using var cpu = new TokenMill.Backends.Cpu.CpuExecutor(model, 1, 0, maxBatchTokens, ForwardComparison.BlocksNeeded, ForwardComparison.BlockSize, TimeSpan.FromMinutes(1), kvDtype);
        using var cuda = CudaExecutor.Create(model, options, maxModelLen, maxBatchTokens, partitionSize, gemmMinRows);
        string ranks = tp == 1 ? "" : $"; tensor-parallel {tp} ranks on devices 0–{tp - 1}";
        string products = gemmMinRows > maxBatchTokens ? $"the GEMV kernels (--gemm-min-rows {gemmMinRows} > the {maxBatchTokens}-row chunks)"
            : cuda.GemmUnavailable is { } why ? $"the GEMV kernels (cuBLAS: {why})"
            : $"cuBLAS for chunks of {gemmMinRows}+ rows, else the GEMV kernels";
        stdout.WriteLine($"model {model.Name}; device: {cuda.DeviceName}{ranks}; reference: the CPU backend; split-K partitions of {partitionSize} positions; products: {products}; KV cache: " +
                          (cpu.KvCacheDtype == cuda.KvCacheDtype ? $"{cuda.KvCacheDtype.Name()} on both" : $"{cpu.KvCacheDtype.Name()} (CPU), {cuda.KvCacheDtype.Name()} (CUDA)"));
        if ((stall ?? fail) is { } faulty) return RankFault(model, cpu, cuda, faulty, stalls: stall is not null, options.TensorParallelTimeout, stdout);
        var checks = ForwardComparison.Run(model, cpu, cuda, () => Describe(cuda.LastAttention), () => cuda.LastGemm, () => cuda.LastGraph, kvDtype);
        int width = checks.Max(c => c.Step.Length), kernels = Math.Max("attention".Length, checks.Max(c => c.CandidatePath.Length));
        stdout.WriteLine($"{"step".PadRight(width)}  {"attention".PadRight(kernels)}  tokens  products  graph     logit rows  {"max error",10}  {"max |logit|",11}  {"tolerance",9}  argmax  result");
        foreach (var c in checks)
            stdout.WriteLine($"{c.Step.PadRight(width)}  {c.CandidatePath.PadRight(kernels)}  {c.Tokens,6}  {(c.CandidateGemm ? "cuBLAS" : "GEMV"),-8}  {GraphLabel(c.CandidateGraph),-8}  {c.LogitRows,10}  {c.MaxError,10:G3}  {c.MaxLogit,11:G4}  {c.Tolerance,9:G3}  {(c.SameArgMax ? "same" : "DIFF"),6}  {(c.Passed ? "PASS" : "FAIL")}");
        int failed = checks.Count(c => !c.Passed);
        stdout.WriteLine(failed == 0 ? $"all {checks.Count} steps within tolerance" : $"{failed} of {checks.Count} steps FAILED");
        return failed == 0 ? Cli.ExitOk : Cli.ExitFailure;
    }

    /// <summary>
    /// <c>kernels forward -tp N --stall-rank R</c> or <c>--fail-rank R</c>: rank R stalls (or throws) at the start of
    /// layer 1 of the first step. It passes when that step fails with a <see cref="CommunicatorException"/> naming rank R
    /// and the operation (the all-reduce the others waited in, or the forward pass that threw), soon: a stall within a
    /// few timeouts, a throw well before one.
    /// </summary>
    static int RankFault(TokenMill.Models.Model model, TokenMill.Backends.IModelExecutor cpu, CudaExecutor cuda, int faulty, bool stalls, TimeSpan timeout, TextWriter stdout)
    {
        using var release = new ManualResetEventSlim(false);
        cuda.LayerHook = (rank, layer) =>
        {
            if (rank != faulty || layer != 1) return;
            if (!stalls) throw new InvalidOperationException("injected fault (kernels forward --fail-rank)");
            release.Wait(timeout * 10);   // stalls until the step has failed (or long after the timeout)
        };
        var clock = System.Diagnostics.Stopwatch.StartNew();
        CommunicatorException? error = null;
        try { ForwardComparison.Run(model, cpu, cuda); }
        catch (CommunicatorException e) { error = e; }
        finally { release.Set(); }   // the stalled rank goes on, finds the group aborted, and stops
        var elapsed = clock.Elapsed;
        string fault = stalls ? $"rank {faulty} stalls at layer 1" : $"rank {faulty} throws at layer 1";
        string expected = stalls ? "all-reduce" : "forward";
        var limit = stalls ? timeout * 3 + TimeSpan.FromSeconds(5) : timeout / 2;
        if (error is null)
        {
            stdout.WriteLine($"{fault}: FAIL: the steps ran to the end without an error");
            return Cli.ExitFailure;
        }
        stdout.WriteLine($"{fault}: the step failed after {elapsed.TotalSeconds:0.00} s with: {error.Message}");
        bool passed = error.Rank == faulty && error.Operation == expected && elapsed < limit && cuda.Failure is not null;
        stdout.WriteLine(passed
            ? $"PASS: the error names rank {faulty} and the {expected}, within {limit.TotalSeconds:0.#} s, and the executor stays failed"
            : $"FAIL: expected rank {faulty} and the {expected} within {limit.TotalSeconds:0.#} s and a failed executor; got rank {error.Rank}, " +
              $"the {error.Operation}, {elapsed.TotalSeconds:0.00} s, executor {(cuda.Failure is null ? "not failed" : "failed")}");
        return passed ? Cli.ExitOk : Cli.ExitFailure;
    }

    /// <summary>A step's use of CUDA graphs, as <c>kernels forward</c> prints it.</summary>
    static string GraphLabel(GraphUse use) => use switch
    {
        GraphUse.None => "-",
        GraphUse.Captured => "captured",
        GraphUse.Replayed => "replayed",
        _ => "both",
    };

    /// <summary>The attention kernels of a step, as <c>kernels forward</c> prints them: "prefill + decode split-K".</summary>
    static string Describe(AttentionKernels kernels) => string.Join(" + ", new[]
    {
        kernels.HasFlag(AttentionKernels.Prefill) ? "prefill" : null,
        kernels.HasFlag(AttentionKernels.Decode) ? "decode" : null,
        kernels.HasFlag(AttentionKernels.DecodeSplitK) ? "decode split-K" : null,
    }.Where(k => k is not null));

    /// <summary><c>kernels nccl</c>: <see cref="NcclSelfTest"/> on GPUs 0 … N−1, or on the fake NCCL with --emulate.</summary>
    static int NcclTest(CliArguments a, TextWriter stdout, TextWriter stderr)
    {
        int ranks = a.Int("ranks", 1, min: 1, max: 64);
        int? stall = a.String("stall-rank") is null ? null : a.Int("stall-rank", 0, min: 0, max: ranks - 1);
        var timeout = GenerateCommand.ParseTimeout("timeout", a.String("timeout"), TimeSpan.FromSeconds(stall is null ? 10 : 2));
        bool emulate = a.Flag("emulate");
        if (emulate)
        {
            try
            {
                // The driver alone, no kernels: the fake NCCL is part of the same library.
                var driver = KernelEmulation.Build([], KernelCompiler.DefaultCacheDirectory());
                KernelEmulation.Use(driver);
            }
            catch (Exception e) when (e is InvalidOperationException or DllNotFoundException or BadImageFormatException)
            {
                stderr.WriteLine($"tokenmill kernels: error: {e.Message}");
                return Cli.ExitFailure;
            }
        }
        foreach (var library in new[] { CudaLibrary.Driver, CudaLibrary.Nccl })
            if (!NativeLibraryResolver.TryLoad(library, out string reason))
            {
                stderr.WriteLine($"tokenmill kernels: error: {reason} (without GPUs, 'kernels nccl --emulate' runs on the fake NCCL)");
                return Cli.ExitFailure;
            }
        int count = CudaContext.DeviceCount();
        if (count == 0)
        {
            stderr.WriteLine("tokenmill kernels: error: the CUDA driver reports no device");
            return Cli.ExitFailure;
        }
        // Started by torchrun (or with its variables set by hand): this process is one rank of a group of processes,
        // on the GPU of its LOCAL_RANK, and gets the unique id from rank 0 over MASTER_ADDR:MASTER_PORT.
        TorchrunEnvironment? env;
        try { env = TorchrunEnvironment.FromProcess(); }
        catch (DistributedEnvironmentException e)
        {
            stderr.WriteLine($"tokenmill kernels: error: {e.Message}");
            return Cli.ExitFailure;
        }
        if (env is not null)
        {
            if (a.String("ranks") is not null || stall is not null)
                throw new UsageException($"--ranks and --stall-rank are for ranks in this process; with RANK/WORLD_SIZE set this process is rank {env.Rank} of {env.WorldSize}");
            // The GPU of LOCAL_RANK; on the emulated driver, device 0 serves local ranks beyond its devices.
            using var device = CudaContext.Create(env.LocalRank < count ? env.LocalRank : 0);
            if (env.LocalRank >= count && device.DeviceName != EmulatedDeviceName)
            {
                stderr.WriteLine($"tokenmill kernels: error: LOCAL_RANK={env.LocalRank} needs GPU {env.LocalRank}, the driver reports {count}");
                return Cli.ExitFailure;
            }
            stdout.WriteLine($"NCCL {FormatVersion(NcclCommunicator.Version())}, rank {env.Rank} of {env.WorldSize} (LOCAL_RANK {env.LocalRank}, " +
                             $"MASTER_ADDR={env.MasterAddress} MASTER_PORT={env.MasterPort}), timeout {timeout.TotalSeconds:0.###} s");
            stdout.WriteLine($"rank {env.Rank}: device {device.Device.Value}, {device.DeviceName}");
            NcclCommunicator comm;
            try { comm = NcclCommunicator.FromEnvironment(env, device, timeout); }
            catch (CommunicatorException e)
            {
                stderr.WriteLine($"tokenmill kernels: error: {e.Message}");
                return Cli.ExitFailure;
            }
            using (comm) return WriteNcclChecks(NcclSelfTest.RunRank(device, comm), stdout);
        }
        var contexts = new List<CudaContext> { CudaContext.Create(0) };
        try
        {
            // The emulated driver (chosen by --emulate or by TOKENMILL_CUDA_LIBRARY) reports a few devices, all the same CPU;
            // ranks beyond them share device 0: the fake NCCL allows it, real NCCL refuses two ranks on one GPU.
            bool shared = contexts[0].DeviceName == EmulatedDeviceName;
            if (!shared && count < ranks)
            {
                stderr.WriteLine($"tokenmill kernels: error: --ranks {ranks} needs {ranks} GPUs (one per rank), the driver reports {count}");
                return Cli.ExitFailure;
            }
            for (int r = 1; r < ranks; r++) contexts.Add(CudaContext.Create(shared && r >= count ? 0 : r));
            stdout.WriteLine($"NCCL {FormatVersion(NcclCommunicator.Version())}, {ranks} rank{(ranks == 1 ? "" : "s")}, timeout {timeout.TotalSeconds:0.###} s");
            for (int r = 0; r < ranks; r++) stdout.WriteLine($"rank {r}: device {contexts[r].Device.Value}, {contexts[r].DeviceName}");
            return WriteNcclChecks(NcclSelfTest.Run(contexts, timeout, stall), stdout);
        }
        finally
        {
            foreach (var c in contexts) c.Dispose();
        }
    }

    /// <summary>NCCL's version code (major·10000 + minor·100 + patch since 2.9) as 2.18.5.</summary>
    static string FormatVersion(int code) => $"{code / 10000}.{code / 100 % 100}.{code % 100}";

    static int WriteNcclChecks(IReadOnlyList<NcclCheck> checks, TextWriter stdout)
    {
        int width = Math.Max(5, checks.Max(c => c.Name.Length));
        stdout.WriteLine($"{"check".PadRight(width)}  rank  result");
        foreach (var c in checks)
            stdout.WriteLine($"{c.Name.PadRight(width)}  {c.Rank,4}  {(c.Passed ? "PASS" : "FAIL: " + c.Failure)}{(c.Detail is null ? "" : "  (" + c.Detail + ")")}");
        int failed = checks.Count(c => !c.Passed);
        stdout.WriteLine(failed == 0 ? $"all {checks.Count} checks passed" : $"{failed} of {checks.Count} checks FAILED");
        return failed == 0 ? Cli.ExitOk : Cli.ExitFailure;
    }

    /// <summary>
    /// The kernel sources, the --kernel selection and the device that <c>test</c> and <c>bench</c> run on: GPU
    /// --device N, or with --emulate the CPU shim built from the sources. Null (after an error on stderr) when
    /// NVRTC, the driver, the shim or the device cannot be had.
    /// </summary>
    sealed record DeviceRun(IReadOnlyList<KernelSource> Sources, HashSet<string> Known, HashSet<string>? Only,
                            IReadOnlyList<EmulationFailure> ShimFailures, CudaContext Context) : IDisposable
    {
        public bool Selected(string kernel) => Only is null || Only.Contains(kernel);
        public void Dispose() => Context.Dispose();
    }

    static DeviceRun? OpenDevice(CliArguments a, string subcommand, TextWriter stdout, TextWriter stderr)
    {
        int device = a.Int("device", 0, min: 0);
        bool emulate = a.Flag("emulate");
        var sources = a.String("kernels-dir") is { } dir ? KernelSources.FromDirectory(dir) : KernelSources.Embedded();
        var known = sources.Where(s => !s.IsHeader).SelectMany(s => s.Kernels().Select(k => k.Name)).Append(CudaGemm.Name).ToHashSet(StringComparer.Ordinal);
        HashSet<string>? only = null;
        if (a.String("kernel") is { } list)
        {
            only = [.. list.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries)];
            if (only.Count == 0) throw new UsageException("--kernel needs at least one kernel name");
            foreach (string k in only.Where(k => !known.Contains(k)))
                throw new UsageException($"--kernel {k}: no such kernel (kernels: {string.Join(", ", known.Order(StringComparer.Ordinal))})");
        }
        if (!NativeLibraryResolver.TryLoad(CudaLibrary.Nvrtc, out string nvrtcReason))
        {
            stderr.WriteLine($"tokenmill kernels: error: {nvrtcReason}");
            return null;
        }
        IReadOnlyList<EmulationFailure> shimFailures = [];
        if (emulate)
        {
            if (device != 0) throw new UsageException("--device has no meaning with --emulate (every device of the shim is the same CPU)");
            EmulatedDriver driver;
            // --no-cache: build into a scratch folder, removed once the driver is loaded (Linux keeps a mapped file alive).
            string? scratch = a.Flag("no-cache") ? Directory.CreateTempSubdirectory("tokenmill-emu-objects").FullName : null;
            try
            {
                driver = KernelEmulation.Build(sources, scratch ?? KernelCompiler.DefaultCacheDirectory());
                KernelEmulation.Use(driver);
            }
            catch (Exception e) when (e is InvalidOperationException or DllNotFoundException or BadImageFormatException)
            {
                stderr.WriteLine($"tokenmill kernels: error: {e.Message}");
                return null;
            }
            finally
            {
                if (scratch is not null) Directory.Delete(scratch, recursive: true);
            }
            stdout.WriteLine($"CPU shim built in {driver.Elapsed.TotalSeconds:F1} s: {driver.LibraryPath}");
            shimFailures = [.. driver.Failures.Where(f => only is null || only.Contains(f.Kernel))];
        }
        else if (!NativeLibraryResolver.TryLoad(CudaLibrary.Driver, out string reason))
        {
            stderr.WriteLine($"tokenmill kernels: error: {reason} (without a GPU, 'kernels {subcommand} --emulate' runs the kernels on the CPU)");
            return null;
        }
        int count = CudaContext.DeviceCount();
        if (device >= count)
        {
            stderr.WriteLine($"tokenmill kernels: error: no CUDA device {device} (the driver reports {count})");
            return null;
        }
        var ctx = CudaContext.Create(device);
        stdout.WriteLine($"device {device}: {ctx.DeviceName}, compute capability {ctx.ComputeCapability.Major}.{ctx.ComputeCapability.Minor}, {ctx.TotalMemory >> 20} MiB");
        if (emulate && ctx.DeviceName != EmulatedDeviceName)
        {
            stderr.WriteLine($"tokenmill kernels: error: --emulate loaded a driver whose device is '{ctx.DeviceName}', not the CPU shim");
            ctx.Dispose();
            return null;
        }
        return new DeviceRun(sources, known, only, shimFailures, ctx);
    }

    static int SelfTest(CliArguments a, TextWriter stdout, TextWriter stderr)
    {
        using var run = OpenDevice(a, "test", stdout, stderr);
        if (run is null) return Cli.ExitFailure;
        var (sources, known, only, shimFailures, ctx) = (run.Sources, run.Known, run.Only, run.ShimFailures, run.Context);
        // A kernel the shim could not build is a failing row with the compiler's message, never left out.
        var checks = shimFailures.Select(f => new KernelCheck(f.Kernel, f.Message, double.NaN, 0)).Concat(
            KernelSelfTest.Run(ctx, new KernelCompiler(a.Flag("no-cache") ? null : KernelCompiler.DefaultCacheDirectory()), sources,
                k => (only is null || only.Contains(k)) && !shimFailures.Any(f => f.Kernel == k))).ToList();
        // Every kernel of the sources is tested: one without a check in KernelSelfTest fails rather than passing unseen.
        var tested = checks.Select(c => c.Kernel.Split(' ')[0]).ToHashSet(StringComparer.Ordinal);
        checks.AddRange(known.Where(k => (only is null || only.Contains(k)) && !tested.Contains(k)).Order(StringComparer.Ordinal)
            .Select(k => new KernelCheck(k, "no test for this kernel (KernelSelfTest)", double.NaN, 0)));
        if (checks.Count == 0)
        {
            stderr.WriteLine("tokenmill kernels: error: no checks ran");
            return Cli.ExitFailure;
        }
        int kWidth = Math.Max(6, checks.Max(c => c.Kernel.Length)), cWidth = Math.Max(4, checks.Max(c => c.Case.Length));
        stdout.WriteLine($"{"kernel".PadRight(kWidth)}  {"case".PadRight(cWidth)}  {"max error",10}  {"tolerance",9}  result");
        foreach (var c in checks)
            stdout.WriteLine($"{c.Kernel.PadRight(kWidth)}  {c.Case.PadRight(cWidth)}  {c.MaxError,10:G3}  {c.Tolerance,9:G3}  {(c.Passed ? "PASS" : "FAIL")}");
        int failed = checks.Count(c => !c.Passed);
        stdout.WriteLine(failed == 0 ? $"all {checks.Count} checks passed" : $"{failed} of {checks.Count} checks FAILED");
        return failed == 0 ? Cli.ExitOk : Cli.ExitFailure;
    }

    static int Bench(CliArguments a, TextWriter stdout, TextWriter stderr)
    {
        bool emulate = a.Flag("emulate");
        var sweep = a.String("sweep") switch
        {
            null => emulate ? KernelBenchSweep.Small : KernelBenchSweep.Full,
            "full" => KernelBenchSweep.Full,
            "small" => KernelBenchSweep.Small,
            var other => throw new UsageException($"--sweep {other}: expected full or small"),
        };
        var options = new KernelBenchOptions(sweep, a.Int("samples", emulate ? 3 : 10, min: 1), a.Int("launches", emulate ? 1 : 10, min: 1), WarmupLaunches: emulate ? 1 : 3);
        using var run = OpenDevice(a, "bench", stdout, stderr);
        if (run is null) return Cli.ExitFailure;
        if (emulate) stdout.WriteLine("emulated: the times below are the CPU shim's, not a GPU's");
        var rows = run.ShimFailures.Select(f => new KernelTiming(f.Kernel, "-", 0, 0, double.NaN, double.NaN, 0, 0, f.Message)).Concat(
            KernelBench.Run(run.Context, new KernelCompiler(a.Flag("no-cache") ? null : KernelCompiler.DefaultCacheDirectory()), run.Sources, options,
                k => run.Selected(k) && !run.ShimFailures.Any(f => f.Kernel == k))).ToList();
        if (rows.Count == 0)
        {
            stderr.WriteLine("tokenmill kernels: error: no kernels were timed");
            return Cli.ExitFailure;
        }
        int kWidth = Math.Max(6, rows.Max(r => r.Kernel.Length)), sWidth = Math.Max(5, rows.Max(r => r.Shape.Length));
        stdout.WriteLine($"{"kernel".PadRight(kWidth)}  {"shape".PadRight(sWidth)}  {"median µs",10}  {"min µs",10}  {"GB/s",8}  {"GFLOP/s",8}");
        foreach (var r in rows)
        {
            if (r.Error is not null)
            {
                stdout.WriteLine($"{r.Kernel.PadRight(kWidth)}  {r.Shape.PadRight(sWidth)}  ERROR: {r.Error}");
                continue;
            }
            string flops = r.Flops > 0 ? r.GigaflopsPerSecond.ToString("F1", CultureInfo.InvariantCulture) : "-";
            stdout.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"{r.Kernel.PadRight(kWidth)}  {r.Shape.PadRight(sWidth)}  {r.MedianMicroseconds,10:F1}  {r.MinMicroseconds,10:F1}  {r.GigabytesPerSecond,8:F1}  {flops,8}"));
        }
        if (a.String("output-json") is { } path)
        {
            var json = new System.Text.Json.Nodes.JsonObject
            {
                ["device"] = run.Context.DeviceName,
                ["emulated"] = emulate,
                ["sweep"] = sweep.ToString().ToLowerInvariant(),
                ["rows"] = new System.Text.Json.Nodes.JsonArray([.. rows.Select(r => (System.Text.Json.Nodes.JsonNode)new System.Text.Json.Nodes.JsonObject
                {
                    ["kernel"] = r.Kernel,
                    ["shape"] = r.Shape,
                    ["samples"] = r.Samples,
                    ["launches_per_sample"] = r.LaunchesPerSample,
                    ["median_us"] = r.Error is null ? r.MedianMicroseconds : null,
                    ["min_us"] = r.Error is null ? r.MinMicroseconds : null,
                    ["bytes"] = r.Bytes,
                    ["flops"] = r.Flops,
                    ["gb_per_s"] = r.Error is null ? r.GigabytesPerSecond : null,
                    ["gflop_per_s"] = r.Error is null && r.Flops > 0 ? r.GigaflopsPerSecond : null,
                    ["error"] = r.Error,
                })]),
            };
            File.WriteAllText(path, json.ToJsonString(new System.Text.Json.JsonSerializerOptions { WriteIndented = true }));
        }
        int failed = rows.Count(r => r.Error is not null);
        stdout.WriteLine(failed == 0 ? $"{rows.Count} timings" : $"{failed} of {rows.Count} rows FAILED");
        return failed == 0 ? Cli.ExitOk : Cli.ExitFailure;
    }

    /// <summary>One row of the table: the PTX when it compiled, else the error (with NVRTC's log).</summary>
    public sealed record CheckResult(string FileName, string Architecture, CompiledKernel? Kernel, string? Error);

    public static IReadOnlyList<CheckResult> Check(KernelCompiler compiler, IReadOnlyList<KernelSource> sources, IReadOnlyList<string> archs)
    {
        var results = new List<CheckResult>();
        foreach (var kernel in sources.Where(s => !s.IsHeader))
            foreach (string arch in archs)
            {
                try { results.Add(new CheckResult(kernel.FileName, arch, compiler.Compile(kernel, sources, arch), null)); }
                catch (NvrtcException e) { results.Add(new CheckResult(kernel.FileName, arch, null, e.Message)); }
            }
        return results;
    }

    static void WriteTable(TextWriter w, IReadOnlyList<CheckResult> results)
    {
        int nameWidth = Math.Max("kernel file".Length, results.Count == 0 ? 0 : results.Max(r => r.FileName.Length));
        w.WriteLine($"{"kernel file".PadRight(nameWidth)}  {"arch",-10}  {"compile ms",10}  {"PTX bytes",10}  result");
        foreach (var r in results)
        {
            string ms = r.Kernel is { } k ? k.Elapsed.TotalMilliseconds.ToString("F0", CultureInfo.InvariantCulture) : "-";
            string bytes = r.Kernel is { } k2 ? k2.Ptx.Length.ToString(CultureInfo.InvariantCulture) : "-";
            string result = r.Kernel is null ? "FAIL" : r.Kernel.FromCache ? "OK (cached)" : "OK";
            w.WriteLine($"{r.FileName.PadRight(nameWidth)}  {r.Architecture,-10}  {ms,10}  {bytes,10}  {result}");
        }
    }

    static List<string> ParseArchs(string s)
    {
        var list = new List<string>();
        foreach (string part in s.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries))
        {
            string digits = part.StartsWith("compute_", StringComparison.Ordinal) ? part["compute_".Length..] : part;
            if (!int.TryParse(digits, NumberStyles.None, CultureInfo.InvariantCulture, out int cc) || cc < 50 || cc > 200)
                throw new UsageException($"--arch takes compute capabilities like 80,90 (or compute_80); got '{part}'");
            list.Add($"compute_{cc}");
        }
        if (list.Count == 0) throw new UsageException("--arch needs at least one architecture");
        return list;
    }
}
