using TokenMill.KvCache;
using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using TokenMill.Core;
using TokenMill.Models;
using TokenMill.Sampling;

namespace TokenMill.Server.Cli;

/// <summary>
/// <c>tokenmill bench latency|throughput</c>: offline measurements through the real engine, on random
/// prompt token ids (seeded) so any model — dummy presets included — measures the same work.
/// </summary>
public static class BenchCommand
{
    internal const string Help = """
        usage: tokenmill bench latency    [--model M] [--input-len 512] [--output-len 128] [--repeat 3] [options]
               tokenmill bench throughput [--model M] [--num-prompts 32] [--input-len 128] [--output-len 128] [options]
               tokenmill bench serve      --base-url URL [--concurrency 32] [--num-prompts 64] … ('bench serve --help')

          latency       prefill tokens/s for one prompt of --input-len tokens (time to first token), and decode
                        tokens/s of that one sequence for --output-len tokens; best of --repeat runs
          throughput    --num-prompts requests submitted at once through the engine: generated tokens/s and
                        total tokens/s over the whole run, requests/s, and batch_decode_tokens_per_s: tokens/s
                        while every request decodes in one batch (after the last first token, before the first
                        request finishes; llama-batched-bench's S_TG)

          --model M          a GGUF file or dummy:<preset> (default dummy:tinyllama-1.1b)
          --tokenizer T      tokenizer of a Hugging Face folder (--model DIR): a GGUF file or a folder with tokenizer.json
          --dtype T          weight type of a dummy model (default Q8_0)
          --seed S           seed of the random prompts (default 0)
          --repeat N         latency: runs, of which the best is reported (default 3)
          --output-json F    write the full result as JSON
          engine options as 'tokenmill generate --help' lists them (--max-num-seqs 1 runs requests one at a time;
                        --device cpu|cuda|cuda-emulated)

        example: tokenmill bench throughput --model dummy:qwen2.5-0.5b --num-prompts 16 --output-len 32
        """;

    internal static readonly HashSet<string> ValueOptions =
        [.. GenerateCommand.EngineValueOptions, "input-len", "output-len", "repeat", "num-prompts", "seed", "output-json"];
    internal static readonly HashSet<string> Flags = [.. GenerateCommand.EngineFlags];

    internal static readonly HashSet<string> ServeValueOptions =
    [
        "base-url", "endpoint", "model", "api-key", "num-prompts", "concurrency", "request-rate", "dataset", "input-len", "output-len",
        "seed", "goodput-ttft-ms", "goodput-tpot-ms", "hourly-cost", "output-json", "chart",
    ];
    internal static readonly HashSet<string> ServeFlags = ["help", "no-progress"];

    public static int Run(string[] args, TextWriter stdout, TextWriter stderr)
    {
        if (args.Length == 0 || args[0] is "--help" or "help")
        {
            stdout.WriteLine(Help);
            return args.Length == 0 ? Cli.ExitUsage : Cli.ExitOk;
        }
        string mode = args[0];
        if (mode == "serve")
        {
            var sa = new CliArguments("bench serve", args.Skip(1), ServeValueOptions, ServeFlags);
            if (sa.Flag("help"))
            {
                stdout.WriteLine(BenchServe.Help);
                return Cli.ExitOk;
            }
            return BenchServe.Run(sa, stdout, stderr);
        }
        if (mode is not ("latency" or "throughput")) throw new UsageException($"unknown bench mode '{mode}' (modes: latency, throughput, serve)");
        var a = new CliArguments($"bench {mode}", args.Skip(1), ValueOptions, Flags);
        if (a.Flag("help"))
        {
            stdout.WriteLine(Help);
            return Cli.ExitOk;
        }
        if (a.Positional.Count > 0) throw new UsageException($"unexpected argument '{a.Positional[0]}'");

        var (modelName, loadOptions) = Cli.ParseModel(a, stderr);
        int inputLen = a.Int("input-len", mode == "latency" ? 512 : 128, min: 1);
        int outputLen = a.Int("output-len", 128, min: 1);
        int seed = a.Int("seed", 0, min: 0);
        var engineOptions = GenerateCommand.ParseEngineOptions(a);
        if (engineOptions.MaxModelLen is null) engineOptions = engineOptions with { MaxModelLen = inputLen + outputLen };

        var load = Stopwatch.StartNew();
        using var model = ModelLoader.Load(modelName, loadOptions);
        double loadSeconds = load.Elapsed.TotalSeconds;
        using var engine = new LlmEngine(model, engineOptions);
        var random = new Random(seed);
        int[] RandomPrompt() => [.. Enumerable.Range(0, inputLen).Select(_ => random.Next(model.Config.VocabSize))];

        var result = new JsonObject
        {
            ["mode"] = mode,
            ["model"] = model.Name,
            ["weights"] = model.Weights.Layers[0].Wq.Type.ToString(),
            ["threads"] = engineOptions.Threads == 0 ? Environment.ProcessorCount : engineOptions.Threads,
            ["tensor_parallel_size"] = engineOptions.TensorParallelSize,
            ["threads_per_rank"] = engine.ThreadsPerRank,
            ["kv_cache_dtype"] = engineOptions.KvCacheDtype.Name(),
            ["cpu_spin_us"] = engineOptions.CpuSpinMicroseconds,
            ["input_len"] = inputLen,
            ["output_len"] = outputLen,
            ["load_seconds"] = loadSeconds,
        };
        var gc = (Gen0: GC.CollectionCount(0), Gen1: GC.CollectionCount(1), Gen2: GC.CollectionCount(2));
        var allocated = GC.GetTotalAllocatedBytes();

        if (mode == "latency") Latency(engine, a.Int("repeat", 3, min: 1), RandomPrompt, outputLen, result);
        else Throughput(engine, a.Int("num-prompts", 32, min: 1), RandomPrompt, outputLen, result);

        result["gc_collections"] = new JsonObject
        {
            ["gen0"] = GC.CollectionCount(0) - gc.Gen0,
            ["gen1"] = GC.CollectionCount(1) - gc.Gen1,
            ["gen2"] = GC.CollectionCount(2) - gc.Gen2,
        };
        result["allocated_mib"] = (GC.GetTotalAllocatedBytes() - allocated) / (1024.0 * 1024.0);

        stdout.WriteLine($"tokenmill bench {mode}: {model.Name} ({result["weights"]}), {result["threads"]} threads");
        foreach (var (key, value) in result)
            if (key is not ("mode" or "model" or "weights" or "threads"))
                stdout.WriteLine(string.Create(CultureInfo.InvariantCulture, $"  {key,-28} {Format(value)}"));
        if (a.String("output-json") is { } path)
            File.WriteAllText(path, result.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
        return Cli.ExitOk;
    }

    static string Format(JsonNode? v) => v is JsonValue jv && jv.TryGetValue(out double d)
        ? d.ToString(d >= 100 ? "F1" : "F3", CultureInfo.InvariantCulture)
        : v?.ToJsonString() ?? "";

    static GenerationRequest Request(int[] prompt, int outputLen) => new()
    {
        PromptTokenIds = prompt,
        Sampling = SamplingParams.Greedy with { MaxTokens = outputLen, IgnoreEos = true },
    };

    static void Latency(LlmEngine engine, int repeat, Func<int[]> prompt, int outputLen, JsonObject result)
    {
        // One warm-up run pages the weights in and JITs the kernels; then the best of the repeats.
        double bestPrefill = 0, bestDecode = 0;
        var runs = new JsonArray();
        for (int r = -1; r < repeat; r++)
        {
            var p = prompt();
            var clock = Stopwatch.StartNew();
            TimeSpan? first = null;
            int tokens = 0;
            // Rank 0's time in all-reduce (waiting for the other ranks included), read as the first token arrives and at the end.
            var comm = engine.TensorParallelStats;
            comm.Reset();
            TimeSpan allReduceAtFirst = TimeSpan.Zero, arrivalAtFirst = TimeSpan.Zero;
            foreach (var chunk in engine.Generate(Request(p, outputLen)).ToBlockingEnumerable())
            {
                if (chunk.TokenIds.Length == 0) continue;
                if (first is null)
                {
                    first = clock.Elapsed;
                    allReduceAtFirst = comm.AllReduceTime;
                    arrivalAtFirst = comm.AllReduceArrivalWait;
                }
                tokens += chunk.TokenIds.Length;
            }
            var total = clock.Elapsed;
            double prefill = p.Length / first!.Value.TotalSeconds;
            var decodeTime = total - first.Value;
            double decode = (tokens - 1) / Math.Max(decodeTime.TotalSeconds, 1e-9);
            if (r < 0) continue;
            var run = new JsonObject { ["prefill_tokens_per_s"] = prefill, ["decode_tokens_per_s"] = decode, ["ttft_s"] = first.Value.TotalSeconds };
            if (engine.Options.TensorParallelSize > 1)
            {
                var decodeAllReduce = comm.AllReduceTime - allReduceAtFirst;
                run["prefill_allreduce_share"] = allReduceAtFirst / first.Value;
                run["decode_allreduce_share"] = decodeAllReduce / decodeTime;
                // Of that, waiting for the other rank to arrive (skew, or its thread not scheduled) vs the reduction itself;
                // the CPU communicator measures it, NCCL does not tell the two apart.
                if (engine.Options.Device == TokenMill.Core.EngineDevice.Cpu)
                    run["decode_allreduce_arrival_wait_share"] = (comm.AllReduceArrivalWait - arrivalAtFirst) / decodeTime;
                run["decode_allreduce_ms_per_step"] = decodeAllReduce.TotalMilliseconds / Math.Max(tokens - 1, 1);
                run["decode_ms_per_step"] = decodeTime.TotalMilliseconds / Math.Max(tokens - 1, 1);
                run["allreduce_calls"] = comm.AllReduceCalls;
            }
            runs.Add((JsonNode)run);   // JsonNode overload: the generic Add<T> is not trim-safe (gpu-check publishes trimmed)
            bestPrefill = Math.Max(bestPrefill, prefill);
            bestDecode = Math.Max(bestDecode, decode);
        }
        result["prefill_tokens_per_s"] = bestPrefill;
        result["decode_tokens_per_s"] = bestDecode;
        result["runs"] = runs;
    }

    static void Throughput(LlmEngine engine, int numPrompts, Func<int[]> prompt, int outputLen, JsonObject result)
    {
        var prompts = Enumerable.Range(0, numPrompts).Select(_ => prompt()).ToArray();
        engine.CompleteAsync(Request(prompts[0][..Math.Min(16, prompts[0].Length)], 2)).GetAwaiter().GetResult(); // warm-up
        // Every token's arrival time, so the run splits into phases: until the last request has its first token
        // (prefills, mixed with early decodes) and after it, when every request decodes in the same batch — the
        // steady state that llama-batched-bench's S_TG measures.
        var arrivals = new List<(double Seconds, int Tokens)>[numPrompts];
        var clock = Stopwatch.StartNew();
        // Every request is queued here, before any is read, so that they start together however busy the thread pool is.
        var streams = prompts.Select(p => engine.Generate(Request(p, outputLen))).ToArray();
        // A thread of its own per request stamps each chunk as it arrives, not when a busy thread pool gets to it.
        var errors = new Exception?[numPrompts];
        var readers = streams.Select((stream, i) => new Thread(() =>
        {
            arrivals[i] = new List<(double, int)>(outputLen);
            try
            {
                foreach (var chunk in stream.ToBlockingEnumerable())
                    if (chunk.TokenIds.Length > 0) arrivals[i].Add((clock.Elapsed.TotalSeconds, chunk.TokenIds.Length));
            }
            catch (Exception e) { errors[i] = e; }   // thrown on the bench's thread below, not left to end the process
        }) { IsBackground = true, Name = $"bench reader {i}" }).ToArray();
        foreach (var reader in readers) reader.Start();
        foreach (var reader in readers) reader.Join();
        if (errors.FirstOrDefault(e => e is not null) is { } error) throw error;
        double seconds = clock.Elapsed.TotalSeconds;
        int generated = arrivals.Sum(a => a.Sum(x => x.Tokens)), prompted = prompts.Sum(p => p.Length);
        var (allDecoding, steadyRate) = SteadyBatchDecode(arrivals);
        result["num_prompts"] = numPrompts;
        result["elapsed_s"] = seconds;
        result["requests_per_s"] = numPrompts / seconds;
        result["generated_tokens_per_s"] = generated / seconds;
        result["total_tokens_per_s"] = (generated + prompted) / seconds;
        result["prefill_phase_s"] = allDecoding;
        // No steady phase when a request finished before the last one started decoding (few output tokens, or
        // --max-num-seqs below --num-prompts): then the field is null rather than a rate of nothing.
        result["batch_decode_tokens_per_s"] = steadyRate;
        result["preemptions"] = engine.Stats.Preemptions;
    }

    /// <summary>
    /// The steady phase of a batch of requests from each one's token arrivals (seconds since the start, tokens):
    /// it starts when the last request has its first token and ends when the first request has its last — the
    /// stretch in which every request decodes in the same batch. Returns when it starts (null when a request got no
    /// token) and the tokens/s that arrived within it, or null when it is empty.
    /// </summary>
    internal static (double? AllDecoding, double? TokensPerSecond) SteadyBatchDecode(IReadOnlyList<IReadOnlyList<(double Seconds, int Tokens)>> arrivals)
    {
        if (arrivals.Count == 0 || arrivals.Any(a => a.Count == 0)) return (null, null);
        double allDecoding = arrivals.Max(a => a[0].Seconds), firstDone = arrivals.Min(a => a[^1].Seconds);
        int tokens = arrivals.Sum(a => a.Where(x => x.Seconds > allDecoding && x.Seconds <= firstDone).Sum(x => x.Tokens));
        return (allDecoding, firstDone > allDecoding && tokens > 0 ? tokens / (firstDone - allDecoding) : null);
    }
}
