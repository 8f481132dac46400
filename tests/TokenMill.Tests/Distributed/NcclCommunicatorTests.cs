using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using TokenMill.Backends.Cuda;
using TokenMill.Distributed;
using TokenMill.Interop;
using TokenMill.Interop.Driver;

namespace TokenMill.Tests.Distributed;

/// <summary>The emulated driver with the fake NCCL (tools/cuda-emu), built once for the class.</summary>
public sealed class FakeNcclLibrary : IDisposable
{
    readonly string _cache = Directory.CreateTempSubdirectory("tm-nccl-emu").FullName;
    readonly Lazy<(string? Path, string? Problem)> _library;

    public FakeNcclLibrary() => _library = new(() =>
    {
        try { return (KernelEmulation.Build([], _cache).LibraryPath, null); }
        catch (InvalidOperationException e) { return (null, e.Message); }
    });

    /// <summary>The library's path; skips the test when g++ cannot build it.</summary>
    public string Require()
    {
        Skip.IfNot(OperatingSystem.IsLinux(), "the fake NCCL (tools/cuda-emu) is built with g++ on Linux");
        var (path, problem) = _library.Value;
        Skip.If(path is null, $"the fake NCCL cannot be built (it needs g++ 12+): {problem}");
        return path!;
    }

    public string CacheDirectory => _cache;

    public void Dispose() => Directory.Delete(_cache, recursive: true);
}

/// <summary>
/// NcclCommunicator: the communicator tests of the CPU communicator (all-reduce, all-gather, broadcast, barrier) on
/// device buffers, through the real host path (generated bindings, resolver, stream polling, ncclCommAbort) with only
/// libcuda and libnccl emulated. They run as child processes ('tokenmill kernels nccl'): the emulated driver must never
/// be loaded into the test host, where the GPU tests would take it for a GPU. With one GPU and NCCL installed, the
/// world-size-1 test also runs in-process on the real ones.
/// </summary>
public sealed class NcclCommunicatorTests(FakeNcclLibrary fake, Xunit.Abstractions.ITestOutputHelper log) : IClassFixture<FakeNcclLibrary>
{
    (int Code, string Output, TimeSpan Elapsed) Tokenmill(Dictionary<string, string> environment, params string[] args)
    {
        environment["TOKENMILL_CACHE_DIR"] = fake.CacheDirectory;
        var clock = Stopwatch.StartNew();
        var run = ExternalTool.Run("dotnet", [Path.Combine(AppContext.BaseDirectory, "tokenmill.dll"), .. args], TimeSpan.FromMinutes(3), environment);
        log.WriteLine(run.Text);
        Assert.True(run.ExitCode != -1, "the child process hung:\n" + run.Text);
        return (run.ExitCode, run.Text, clock.Elapsed);
    }

    [SkippableTheory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(4)]
    public void All_reduce_all_gather_broadcast_and_barrier_on_device_buffers_match_the_host_on_every_rank(int ranks)
    {
        string library = fake.Require();
        // The resolver's environment overrides point both libraries at the emulated one.
        var (code, output, _) = Tokenmill(new() { ["TOKENMILL_CUDA_LIBRARY"] = library, ["TOKENMILL_NCCL_LIBRARY"] = library },
                                          "kernels", "nccl", "--ranks", ranks.ToString(System.Globalization.CultureInfo.InvariantCulture));
        Assert.True(code == 0, output);
        // The emulated driver has a device per rank, as tensor parallelism on GPUs needs (rank r on device r).
        Assert.Contains($"rank {ranks - 1}: device {ranks - 1}, {TokenMill.Server.Cli.KernelsCommand.EmulatedDeviceName}", output);
        int expected = ranks * NcclSelfTest.Lengths.Length * 4;
        Assert.Contains($"all {expected} checks passed", output);
        foreach (int len in NcclSelfTest.Lengths)
            for (int r = 0; r < ranks; r++)
            {
                Assert.Matches($@"(?m)^all-reduce {len}\s+{r}  PASS", output);
                Assert.Matches($@"(?m)^all-gather {len}\s+{r}  PASS", output);
                Assert.Matches($@"(?m)^broadcast {len} from rank \d\s+{r}  PASS", output);
            }
    }

    [SkippableFact]
    public void A_stalled_rank_makes_the_others_time_out_naming_it_and_a_failed_rank_releases_them_at_once()
    {
        fake.Require();
        var (code, output, elapsed) = Tokenmill(new(), "kernels", "nccl", "--emulate", "--ranks", "3", "--stall-rank", "1", "--timeout", "1.5");
        Assert.True(code == 0, output);
        // Ranks 0 and 2 each waited the 1.5 s, got a CommunicatorException for rank 1's all-reduce (NcclSelfTest checks
        // rank, operation and that it came no earlier than the timeout), and the process ended.
        Assert.Matches(@"(?m)^rank 1 stalls: all-reduce times out\s+0  PASS", output);
        Assert.Matches(@"(?m)^rank 1 stalls: all-reduce times out\s+2  PASS", output);
        // Then, in a new group, rank 1 aborts with an error of its own: ranks 0 and 2, waiting in an all-gather, get it at once.
        Assert.Matches(@"(?m)^rank 1 aborts: all-gather fails with its error\s+0  PASS", output);
        Assert.Matches(@"(?m)^rank 1 aborts: all-gather fails with its error\s+2  PASS", output);
        Assert.Contains("tensor-parallel all-reduce timed out after 1.5 s on rank ", output);
        Assert.Contains(": rank 1 never reached it (stalled or dead)", output);
        Assert.Contains("tensor-parallel rank 1 failed in its forward pass: injected by the self test", output);
        Assert.Contains("all 4 checks passed", output);
        Assert.True(elapsed < TimeSpan.FromSeconds(90), $"took {elapsed}");
    }

    [SkippableFact]
    public void With_torchrun_variables_the_process_is_one_rank_of_a_group_and_bad_variables_are_an_error()
    {
        string library = fake.Require();
        Dictionary<string, string> Env(params (string, string)[] vars)
        {
            var env = new Dictionary<string, string> { ["TOKENMILL_CUDA_LIBRARY"] = library, ["TOKENMILL_NCCL_LIBRARY"] = library };
            foreach (var (k, v) in vars) env[k] = v;
            return env;
        }
        // A group of one process (the fake NCCL's ranks meet only within a process): the id exchange, init and checks.
        var (code, output, _) = Tokenmill(Env(("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0"), ("MASTER_ADDR", "127.0.0.1"),
                                              ("MASTER_PORT", FreePort().ToString(System.Globalization.CultureInfo.InvariantCulture))), "kernels", "nccl");
        Assert.True(code == 0, output);
        Assert.Contains("rank 0 of 1 (LOCAL_RANK 0, MASTER_ADDR=127.0.0.1", output);
        Assert.Contains($"all {NcclSelfTest.Lengths.Length * 4} checks passed", output);

        (code, output, _) = Tokenmill(Env(("RANK", "0"), ("WORLD_SIZE", "2")), "kernels", "nccl");
        Assert.Equal(1, code);
        Assert.Contains("RANK, WORLD_SIZE are set but LOCAL_RANK, MASTER_ADDR, MASTER_PORT are not", output);
    }

    [Fact]
    public void Kernels_nccl_refuses_bad_options_before_loading_anything()
    {
        var (code, _, err) = TokenMill.Tests.Cli.CliRun.Capture("kernels", "nccl", "--ranks", "2", "--stall-rank", "2");
        Assert.Equal(2, code);
        Assert.Contains("--stall-rank must be between 0 and 1, got 2", err);
        (code, _, err) = TokenMill.Tests.Cli.CliRun.Capture("kernels", "nccl", "--timeout", "0");
        Assert.Equal(2, code);
        Assert.Contains("--timeout must be more than 0", err);
    }

    /// <summary>The must-show on a GPU: a one-rank NCCL communicator passes the same checks. Skips where no GPU or NCCL loads.</summary>
    [SkippableFact]
    public void On_a_real_gpu_a_one_rank_nccl_communicator_passes_the_same_checks()
    {
        Skip.IfNot(NativeLibraryResolver.TryLoad(CudaLibrary.Driver, out string reason), "no CUDA driver: " + reason);
        Skip.IfNot(NativeLibraryResolver.TryLoad(CudaLibrary.Nccl, out reason), "no NCCL: " + reason);
        Skip.If(CudaContext.DeviceCount() == 0, "the CUDA driver reports no device");
        using var context = CudaContext.Create(0);
        Skip.If(context.DeviceName == TokenMill.Server.Cli.KernelsCommand.EmulatedDeviceName, "the emulated driver is loaded, not a GPU");
        var checks = NcclSelfTest.Run([context], TimeSpan.FromSeconds(30));
        foreach (var c in checks) log.WriteLine($"{c.Name} rank {c.Rank}: {(c.Passed ? "PASS" : c.Failure)}");
        Assert.All(checks, c => Assert.True(c.Passed, $"{c.Name}: {c.Failure}"));
        Assert.Equal(NcclSelfTest.Lengths.Length * 4, checks.Count);
    }

    // ---- torchrun-style environment ----

    static Func<string, string?> Env(params (string Name, string Value)[] values) =>
        name => values.FirstOrDefault(v => v.Name == name).Value;

    static readonly (string, string)[] Complete =
        [("RANK", "1"), ("WORLD_SIZE", "4"), ("LOCAL_RANK", "1"), ("MASTER_ADDR", "10.0.0.7"), ("MASTER_PORT", "29500")];

    static (string, string)[] With(string name, string value) =>
        [.. Complete.Where(v => v.Item1 != name), (name, value)];

    [Fact]
    public void The_torchrun_environment_is_read_and_absent_means_a_single_process()
    {
        Assert.Null(TorchrunEnvironment.Parse(Env()));
        Assert.Equal(new TorchrunEnvironment(1, 4, 1, "10.0.0.7", 29500), TorchrunEnvironment.Parse(Env(Complete)));
        Assert.Equal("node-0.cluster", TorchrunEnvironment.Parse(Env(With("MASTER_ADDR", "node-0.cluster")))!.MasterAddress);
    }

    [Theory]
    [InlineData("RANK", null, "RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT")]
    [InlineData("RANK", "4", "RANK=4 is not below WORLD_SIZE=4 (ranks are 0 … 3)")]
    [InlineData("RANK", "one", "RANK must be a whole number, got 'one'")]
    [InlineData("RANK", "-1", "RANK must be at least 0, got -1")]
    [InlineData("WORLD_SIZE", "0", "WORLD_SIZE must be at least 1, got 0")]
    [InlineData("LOCAL_RANK", "2", "LOCAL_RANK=2 is above RANK=1")]
    [InlineData("MASTER_PORT", "70000", "MASTER_PORT must be between 1 and 65535, got 70000")]
    [InlineData("MASTER_ADDR", "two words", "MASTER_ADDR='two words' is not a host name or an IP address")]
    public void A_missing_or_inconsistent_variable_is_an_error_that_names_it(string name, string? value, string message)
    {
        var env = value is null ? Env([.. Complete.Where(v => v.Item1 != name)]) : Env(With(name, value));
        var e = Assert.Throws<DistributedEnvironmentException>(() => TorchrunEnvironment.Parse(env));
        Assert.Contains(message, e.Message);
        if (value is null) Assert.StartsWith("WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT are set but RANK is not", e.Message);
    }

    // ---- unique-id rendezvous over TCP ----

    static int FreePort()
    {
        var l = new TcpListener(IPAddress.Loopback, 0);
        l.Start();
        int port = ((IPEndPoint)l.LocalEndpoint).Port;
        l.Stop();
        return port;
    }

    static (byte[]? Id, Exception? Error)[] OnRanks(TimeSpan timeout, byte[] id, params TorchrunEnvironment[] ranks)
    {
        var results = new (byte[]?, Exception?)[ranks.Length];
        var threads = ranks.Select((env, i) => new Thread(() =>
        {
            try { results[i] = (UniqueIdRendezvous.Exchange(env, () => id, timeout), null); }
            catch (Exception e) { results[i] = (null, e); }
        })).ToList();
        // Rank 0 last: the others must retry until it listens.
        for (int i = threads.Count - 1; i >= 0; i--)
        {
            threads[i].Start();
            Thread.Sleep(50);
        }
        foreach (var t in threads) Assert.True(t.Join(timeout * 3 + TimeSpan.FromSeconds(10)), "a rank hung");
        return results;
    }

    [Fact]
    public void Two_ranks_on_loopback_receive_rank_0_s_unique_id()
    {
        int port = FreePort();
        byte[] id = [.. Enumerable.Range(0, 128).Select(i => (byte)(i * 37 + 11))];
        var results = OnRanks(TimeSpan.FromSeconds(10), id,
            new TorchrunEnvironment(0, 2, 0, "127.0.0.1", port), new TorchrunEnvironment(1, 2, 0, "localhost", port));
        Assert.All(results, r => Assert.Null(r.Error));
        Assert.Equal(id, results[0].Id);
        Assert.Equal(id, results[1].Id);
    }

    [Fact]
    public void A_rank_with_another_world_size_is_refused_and_rank_0_times_out_naming_the_missing_rank()
    {
        int port = FreePort();
        var clock = Stopwatch.StartNew();
        // 5 s: rank 1 must connect and be refused within rank 0's wait however loaded the machine is.
        var results = OnRanks(TimeSpan.FromSeconds(5), new byte[128],
            new TorchrunEnvironment(0, 2, 0, "127.0.0.1", port), new TorchrunEnvironment(1, 3, 1, "127.0.0.1", port));
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(30));
        var refused = Assert.IsType<CommunicatorException>(results[1].Error);
        Assert.Equal((1, "rendezvous"), (refused.Rank, refused.Operation));
        Assert.Contains("refused rank 1: rank 1 has WORLD_SIZE=3, rank 0 has WORLD_SIZE=2", refused.Message);
        var missing = Assert.IsType<CommunicatorException>(results[0].Error);
        Assert.Equal((1, "rendezvous"), (missing.Rank, missing.Operation));
        Assert.Contains($"for rank 1 of WORLD_SIZE=2, which never connected", missing.Message);
    }

    [Fact]
    public void A_rank_whose_rank_0_never_listens_fails_after_the_timeout_naming_rank_0()
    {
        // A socket bound but never listening holds the port for the whole test: connections to it are refused, and no
        // other test's listener can take it.
        using var held = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        held.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        int port = ((IPEndPoint)held.LocalEndPoint!).Port;
        var clock = Stopwatch.StartNew();
        var e = Assert.Throws<CommunicatorException>(() =>
            UniqueIdRendezvous.Exchange(new TorchrunEnvironment(1, 2, 0, "127.0.0.1", port), () => new byte[128], TimeSpan.FromSeconds(1)));
        Assert.InRange(clock.Elapsed, TimeSpan.FromSeconds(0.9), TimeSpan.FromSeconds(15));
        Assert.Equal((0, "rendezvous"), (e.Rank, e.Operation));
        Assert.Contains($"rank 1 could not get the NCCL unique id from rank 0 at MASTER_ADDR=127.0.0.1 MASTER_PORT={port} within 1 s", e.Message);
    }
}
