using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using TokenMill.Core;
using TokenMill.Models;
using TokenMill.Sampling;

namespace TokenMill.Server.Cli;

/// <summary>
/// <c>tokenmill generate</c>: one prompt (completion on stdout, statistics on stderr), or a file
/// of prompts submitted at once to the engine and printed in input order.
/// </summary>
public static class GenerateCommand
{
    internal const string Help = """
        usage: tokenmill generate [--model <file.gguf | dummy:preset>] [--prompt TEXT | --prompts-file F] [options]

        model:
          --model M                  a GGUF file, a Hugging Face folder (config.json + safetensors),
                                     or dummy:<preset> (random weights in a real shape; its text is noise)
                                     presets: tinyllama-1.1b, llama-3.2-1b, llama-2-7b, llama-3.1-8b, qwen2.5-0.5b, qwen2.5-1.5b
                                     default: dummy:tinyllama-1.1b
                                     or a Hugging Face Hub model, Org/Name or Org/Name:QUANT (one GGUF file of a
                                     repository of quantizations, e.g. Qwen/Qwen2.5-0.5B-Instruct-GGUF:Q4_K_M),
                                     fetched into the huggingface_hub cache (HF_HOME, HF_ENDPOINT, HF_TOKEN, HF_HUB_OFFLINE)
          --revision R               branch, tag or commit of a Hub model (default main)
          --tokenizer T              tokenizer and chat template of a Hugging Face folder (--model DIR): a GGUF file or a
                                     folder with tokenizer.json (default: the model folder's own tokenizer.json)
          --dtype T                  weight type of a dummy model: F32, F16, BF16, Q8_0, Q4_0 (default Q8_0)
          --dummy-layers N           build only the first N layers of a dummy model (its real widths, a fraction of
                                     the time and memory: quick checks, --device cuda-emulated)
          --dummy-values T           with --dtype F32: weights holding T's values, e.g. BF16 (an F32 GGUF converted
                                     from a bf16 checkpoint, which the CPU backend multiplies as BF16, exactly)
          --max-model-len N          longest sequence, prompt + output (default: min(model's context, 4096))
        input and output:
          --prompt TEXT              the prompt (default "Once upon a time"); BOS is added as the model's metadata says
          --prompts-file F           one prompt per line, all submitted at once
          --jsonl                    with --prompts-file: one JSON object per prompt, in input order
        sampling:
          --max-tokens N             the sequence ends at N tokens in all, prompt (with BOS) included (default 128);
                                     llama2.c's -n steps, the convention of the reference outputs
          --min-tokens N             no end-of-generation before N tokens (default 0)
          --temperature T            0 is greedy (default 0.8)
          --top-k K                  0 disables (default 40)
          --top-p P                  1 disables (default 0.95)
          --min-p P                  0 disables (default 0.05)
          --repetition-penalty R     1 disables (default 1)
          --presence-penalty P       0 disables (default 0)
          --frequency-penalty P      0 disables (default 0)
          --seed S                   seed of the sampler (default: random; with --prompts-file, prompt i uses S + i)
          --stop TEXT                stop at this text (not included in the output)
          --ignore-eos               keep generating after an end-of-generation token
        engine:
          --device D                 where the model runs: cpu (default), cuda (GPU 0 through libcuda, kernels compiled
                                     by NVRTC; Llama-family models), or cuda-emulated (the CUDA path on the CPU through
                                     the emulated driver of tools/cuda-emu, built with g++: slow, for testing without a GPU)
          --gpu-memory-utilization F share of the GPU's memory to use, 0 < F ≤ 1 (default 0.9): the KV cache gets what
                                     the weights leave of it; --kv-cache-memory / --num-kv-blocks override it
          --host-sampling            CUDA: copy the logits back and sample on the host (default: sample on the GPU,
                                     one launch per step; seeded draws differ between the two, greedy ones do not)
          --enforce-eager            CUDA: launch every kernel of every step (default: decode steps are captured as
                                     CUDA graphs once per shape and replayed, one launch each)
          --block-size N             tokens per KV block (default 16)
          --kv-cache-memory SIZE     KV cache budget, e.g. 512MiB, 2GiB (default 2GiB, or one full sequence if more)
          --num-kv-blocks N          exact number of KV blocks (overrides --kv-cache-memory)
          --kv-cache-dtype T         how the KV cache stores keys and values: f32 (default, exact), f16 (half the memory
                                     per token, each key and value rounded once; llama.cpp's default cache type) or
                                     q8_0 (ggml's 8-bit blocks, 0.27 of f32's memory; head dimension a multiple of
                                     32)
          --max-num-batched-tokens N token budget per step (default 2048)
          --max-num-seqs N           sequences running at once (default 256)
          --max-queued-requests N    waiting requests before refusing more (default 4096)
          --max-preemptions N        recomputations one request may suffer before it fails with an error (default 32)
          --threads N                CPU threads (default: all processors); with tensor parallelism each rank gets N / tp
          --cpu-spin-us N            how long an idle CPU thread spins for the next parallel step before it blocks
                                     (default 100, 0..100000; 0 = block at once)
          --tensor-parallel-size N   split the model across N ranks (-tp N; threads of this process on the CPU, joined by
                                     a shared-memory communicator; with --device cuda rank r on GPU r, joined by NCCL):
                                     heads, FFN, vocabulary and KV cache each 1/N per rank
          --tensor-parallel-timeout SECONDS  how long a rank waits in one collective for the others before the engine
                                     stops with an error naming the rank that never arrived (default 60)
          --no-prefix-caching        compute every prompt in full (default: reuse cached KV blocks of shared prefixes)
          --eviction-policy P        which cached KV block goes first when blocks run out: lru, lfu, fifo, priority-lru (default lru)

        example: tokenmill generate --model stories260K.gguf --prompt "Once upon a time" --max-tokens 40 --temperature 0
        """;

    /// <summary>The model and engine options every model-running command takes (parsed by <see cref="ParseEngineOptions"/>).</summary>
    internal static readonly string[] EngineValueOptions =
    [
        "model", "revision", "dtype", "tokenizer", "max-model-len", "threads", "cpu-spin-us", "block-size", "kv-cache-memory", "num-kv-blocks", "max-num-batched-tokens",
        "max-num-seqs", "max-queued-requests", "max-preemptions", "eviction-policy", "tensor-parallel-size",
        "tensor-parallel-timeout", "device", "gpu-memory-utilization", "dummy-layers", "dummy-values", "kv-cache-dtype",
    ];
    internal static readonly string[] EngineFlags = ["no-prefix-caching", "host-sampling", "enforce-eager", "help"];

    internal static readonly HashSet<string> ValueOptions =
    [
        .. EngineValueOptions, "prompt", "prompts-file", "max-tokens", "min-tokens", "temperature", "top-k", "top-p", "min-p",
        "repetition-penalty", "presence-penalty", "frequency-penalty", "seed", "stop",
    ];
    internal static readonly HashSet<string> Flags = [.. EngineFlags, "ignore-eos", "jsonl"];

    public static int Run(string[] args, TextWriter stdout, TextWriter stderr)
    {
        var a = new CliArguments("generate", args, ValueOptions, Flags);
        if (a.Flag("help"))
        {
            stdout.WriteLine(Help);
            return Cli.ExitOk;
        }
        if (a.Positional.Count > 0)
            throw new UsageException($"unexpected argument '{a.Positional[0]}' (give the prompt with --prompt)");
        if (a.String("prompt") is not null && a.String("prompts-file") is not null)
            throw new UsageException("give either --prompt or --prompts-file, not both");
        if (a.Flag("jsonl") && a.String("prompts-file") is null)
            throw new UsageException("--jsonl goes with --prompts-file");

        var (modelName, loadOptions) = Cli.ParseModel(a, stderr);
        var engineOptions = ParseEngineOptions(a);
        var sampling = new SamplingParams
        {
            MaxTokens = a.Int("max-tokens", 128, min: 0), // a total length here; per prompt it becomes the completion budget
            MinTokens = a.Int("min-tokens", 0, min: 0),
            IgnoreEos = a.Flag("ignore-eos"),
            Temperature = a.Float("temperature", 0.8f, min: 0),
            TopK = a.Int("top-k", 40, min: 0),
            TopP = a.Float("top-p", 0.95f, min: float.Epsilon, max: 1),
            MinP = a.Float("min-p", 0.05f, min: 0, max: 1),
            RepetitionPenalty = a.Float("repetition-penalty", 1f, min: float.Epsilon),
            PresencePenalty = a.Float("presence-penalty", 0f, min: -2, max: 2),
            FrequencyPenalty = a.Float("frequency-penalty", 0f, min: -2, max: 2),
            Seed = a.ULong("seed"),
            Stop = a.String("stop") is { } stop ? [stop] : [],
        };

        string[] prompts = a.String("prompts-file") is { } file ? ReadPrompts(file) : [a.String("prompt") ?? "Once upon a time"];

        var clock = Stopwatch.StartNew();
        using var model = ModelLoader.Load(modelName, loadOptions);
        var loadTime = clock.Elapsed;
        using var engine = new LlmEngine(model, engineOptions);

        return a.String("prompts-file") is null
            ? RunOne(engine, prompts[0], sampling, loadTime, stdout, stderr)
            : RunMany(engine, prompts, sampling, a.Flag("jsonl"), loadTime, stdout, stderr);
    }

    /// <summary>On CUDA, what the summary line says of CUDA graphs: " | CUDA graphs: 1 captured, 15 launches" or " | CUDA graphs: off"; else nothing.</summary>
    static string CudaGraphSummary(LlmEngine engine) => engine.Executor is TokenMill.Backends.Cuda.CudaExecutor cuda
        ? cuda.GraphsEnabled ? $" | CUDA graphs: {cuda.GraphsCaptured} captured, {cuda.GraphLaunches} launches"
          : cuda.GraphsOffReason is { } why ? $" | CUDA graphs: off after {cuda.GraphLaunches} launches ({why})" : " | CUDA graphs: off"
        : "";

    internal static EngineOptions ParseEngineOptions(CliArguments a) => new()
    {
        BlockSize = a.Int("block-size", 16, min: 1, max: 1024),
        NumKvBlocks = a.String("num-kv-blocks") is null ? null : a.Int("num-kv-blocks", 0, min: 1),
        KvCacheMemoryBytes = a.String("kv-cache-memory") is { } m ? ParseSize("kv-cache-memory", m) : null,
        MaxModelLen = a.String("max-model-len") is null ? null : a.Int("max-model-len", 0, min: 1),
        MaxNumBatchedTokens = a.Int("max-num-batched-tokens", 2048, min: 1),
        MaxNumSeqs = a.Int("max-num-seqs", 256, min: 1),
        MaxQueuedRequests = a.Int("max-queued-requests", 4096, min: 0),
        MaxPreemptionsPerRequest = a.Int("max-preemptions", 32, min: 0),
        Threads = a.Int("threads", 0, min: 0, max: 1024),
        CpuSpinMicroseconds = a.Int("cpu-spin-us", TokenMill.Backends.Cpu.CpuWorkerPool.DefaultSpinMicroseconds, min: 0, max: TokenMill.Backends.Cpu.CpuWorkerPool.MaxSpinMicroseconds),
        TensorParallelSize = a.Int("tensor-parallel-size", 1, min: 1, max: 64),
        TensorParallelTimeout = ParseTimeout("tensor-parallel-timeout", a.String("tensor-parallel-timeout"), TimeSpan.FromSeconds(60)),
        EnablePrefixCaching = !a.Flag("no-prefix-caching"),
        EvictionPolicy = ParseEvictionPolicy(a.String("eviction-policy") ?? "lru"),
        Device = ParseDevice(a.String("device") ?? "cpu"),
        GpuMemoryUtilization = a.Float("gpu-memory-utilization", 0.9f, min: 0.01f, max: 1),
        HostSampling = a.Flag("host-sampling"),
        EnforceEager = a.Flag("enforce-eager"),
        KvCacheDtype = ParseKvCacheDtype(a.String("kv-cache-dtype") ?? "f32"),
    };

    internal static TokenMill.KvCache.KvCacheDtype ParseKvCacheDtype(string name) => TokenMill.KvCache.KvCacheDtypes.Parse(name)
        ?? throw new UsageException($"--kv-cache-dtype must be one of {string.Join(", ", TokenMill.KvCache.KvCacheDtypes.Names)}; got '{name}'");

    /// <summary>The <c>--device</c> names, as <see cref="ParseDevice"/> takes them.</summary>
    internal static readonly string[] DeviceNames = ["cpu", "cuda", "cuda-emulated"];

    internal static EngineDevice ParseDevice(string name) => name.ToLowerInvariant() switch
    {
        "cpu" => EngineDevice.Cpu,
        "cuda" => EngineDevice.Cuda,
        "cuda-emulated" => EngineDevice.CudaEmulated,
        _ => throw new UsageException($"--device must be one of {string.Join(", ", DeviceNames)}; got '{name}'"),
    };

    /// <summary>
    /// A positive number of seconds (fractions allowed). Zero or a negative value is refused rather than taken to mean
    /// "no timeout": a group that waits forever is exactly the hang the timeout exists to prevent.
    /// </summary>
    internal static TimeSpan ParseTimeout(string option, string? s, TimeSpan defaultValue)
    {
        if (s is null) return defaultValue;
        if (!double.TryParse(s, System.Globalization.NumberStyles.Float, System.Globalization.CultureInfo.InvariantCulture, out double seconds) || !double.IsFinite(seconds))
            throw new UsageException($"--{option} must be a number of seconds, got '{s}'");
        // TimeSpan holds about 29,000 years; a day is already far past any collective's honest duration.
        if (seconds <= 0 || seconds > 86400)
            throw new UsageException($"--{option} must be more than 0 and at most 86400 seconds, got {s}");
        return TimeSpan.FromSeconds(seconds);
    }

    internal static string ParseEvictionPolicy(string name) =>
        TokenMill.KvCache.EvictionPolicies.Names.Contains(name.ToLowerInvariant())
            ? name.ToLowerInvariant()
            : throw new UsageException($"--eviction-policy must be one of {string.Join(", ", TokenMill.KvCache.EvictionPolicies.Names)}; got '{name}'");

    /// <summary>Parses 512MiB, 2GiB, 1.5GB, 1048576 (bytes); binary and decimal units.</summary>
    internal static long ParseSize(string option, string s)
    {
        var units = new (string Suffix, double Factor)[]
        {
            ("KiB", 1L << 10), ("MiB", 1L << 20), ("GiB", 1L << 30), ("TiB", 1L << 40),
            ("KB", 1e3), ("MB", 1e6), ("GB", 1e9), ("TB", 1e12), ("K", 1L << 10), ("M", 1L << 20), ("G", 1L << 30), ("B", 1),
        };
        string t = s.Trim();
        double factor = 1;
        foreach (var (suffix, f) in units)
            if (t.EndsWith(suffix, StringComparison.OrdinalIgnoreCase))
            {
                t = t[..^suffix.Length].Trim();
                factor = f;
                break;
            }
        if (!double.TryParse(t, NumberStyles.Float, CultureInfo.InvariantCulture, out double v) || !(v > 0) || double.IsInfinity(v * factor))
            throw new UsageException($"--{option} must be a size such as 512MiB or 2GiB, got '{s}'");
        return (long)(v * factor);
    }

    static string[] ReadPrompts(string file)
    {
        if (!File.Exists(file)) throw new FileNotFoundException($"{file}: no such prompts file", file);
        var prompts = File.ReadAllLines(file).Where(l => l.Length > 0).ToArray();
        if (prompts.Length == 0) throw new UsageException($"{file} holds no prompts (one per line; empty lines are skipped)");
        return prompts;
    }

    /// <summary>
    /// The request for one prompt: <paramref name="totalTokens"/> caps prompt + completion (as llama2.c's steps),
    /// so the completion budget is what the prompt leaves; null when it leaves nothing.
    /// </summary>
    static GenerationRequest? Request(LlmEngine engine, string id, string prompt, SamplingParams sampling, int totalTokens)
    {
        int promptTokens = engine.Model.Tokenizer.Encode(prompt, addSpecial: true, parseSpecial: true).Length;
        int budget = totalTokens - promptTokens;
        if (budget <= 0) return null;
        return new GenerationRequest
        {
            RequestId = id,
            Prompt = prompt,
            Sampling = sampling with { MaxTokens = budget, MinTokens = Math.Min(sampling.MinTokens, budget) },
        };
    }

    static int RunOne(LlmEngine engine, string prompt, SamplingParams sampling, TimeSpan loadTime, TextWriter stdout, TextWriter stderr)
    {
        var clock = Stopwatch.StartNew();
        TimeSpan? firstToken = null;
        CompletionChunk? last = null;
        var request = Request(engine, "prompt-0", prompt, sampling, sampling.MaxTokens);
        var stream = request is null ? [] : engine.Generate(request).ToBlockingEnumerable();
        foreach (var chunk in stream)
        {
            firstToken ??= clock.Elapsed;
            stdout.Write(chunk.Text);
            stdout.Flush();
            last = chunk;
        }
        stdout.WriteLine();
        var total = clock.Elapsed;
        // A prompt that already fills --max-tokens runs no request: its length still comes from the tokenizer.
        int promptTokens = last?.PromptTokens ?? engine.Model.Tokenizer.Encode(prompt, addSpecial: true, parseSpecial: true).Length;
        int completionTokens = last?.CompletionTokens ?? 0;
        var ttft = firstToken ?? total;
        double promptRate = promptTokens / Math.Max(ttft.TotalSeconds, 1e-9);
        double genRate = Math.Max(completionTokens - 1, 0) / Math.Max((total - ttft).TotalSeconds, 1e-9);
        stderr.WriteLine(string.Format(CultureInfo.InvariantCulture,
            "model {0}: load {1:F2} s | prompt {2} tokens, {3:F1} tokens/s | generation {4} tokens, {5:F1} tokens/s | finish: {6}{7}",
            engine.Model.Name, loadTime.TotalSeconds, promptTokens, promptRate, completionTokens, genRate, last?.FinishReason ?? FinishReason.Length,
            CudaGraphSummary(engine)));
        return Cli.ExitOk;
    }

    static int RunMany(LlmEngine engine, string[] prompts, SamplingParams sampling, bool jsonl, TimeSpan loadTime, TextWriter stdout, TextWriter stderr)
    {
        var clock = Stopwatch.StartNew();
        var tasks = new Task<CompletionResult>[prompts.Length];
        for (int i = 0; i < prompts.Length; i++)
        {
            var s = sampling.Seed is { } seed ? sampling with { Seed = seed + (ulong)i } : sampling;
            string id = $"prompt-{i}";
            tasks[i] = Request(engine, id, prompts[i], s, sampling.MaxTokens) is { } request
                ? engine.CompleteAsync(request)
                : Task.FromResult(new CompletionResult(id, "", [],
                    FinishReason.Length, engine.Model.Tokenizer.Encode(prompts[i], addSpecial: true, parseSpecial: true).Length, 0, null));
        }
        var results = Task.WhenAll(tasks).GetAwaiter().GetResult();
        var elapsed = clock.Elapsed;

        for (int i = 0; i < results.Length; i++)
        {
            var r = results[i];
            if (jsonl)
            {
                stdout.WriteLine(JsonSerializer.Serialize(new JsonlRecord(i, prompts[i], r.Text, r.TokenIds, r.FinishReason, r.PromptTokens, r.CompletionTokens, r.CachedPromptTokens),
                    JsonlContext.Default.JsonlRecord));
            }
            else
            {
                stdout.WriteLine(r.Text.ReplaceLineEndings(" "));
            }
        }
        int generated = results.Sum(r => r.CompletionTokens), prompted = results.Sum(r => r.PromptTokens);
        var stats = engine.Stats;
        stderr.WriteLine(string.Format(CultureInfo.InvariantCulture,
            "model {0}: load {1:F2} s | {2} prompts, {3} prompt + {4} generated tokens in {5:F2} s: {6:F1} generated tokens/s | {7} steps, {8} preemptions | " +
            "prefix cache: {9} of {10} looked-up tokens hit{11}",
            engine.Model.Name, loadTime.TotalSeconds, prompts.Length, prompted, generated, elapsed.TotalSeconds,
            generated / Math.Max(elapsed.TotalSeconds, 1e-9), stats.Steps, stats.Preemptions, stats.PrefixCacheHitTokens, stats.PrefixCacheQueryTokens,
            CudaGraphSummary(engine)));
        return Cli.ExitOk;
    }
}

internal sealed record JsonlRecord(
    [property: System.Text.Json.Serialization.JsonPropertyName("index")] int Index,
    [property: System.Text.Json.Serialization.JsonPropertyName("prompt")] string Prompt,
    [property: System.Text.Json.Serialization.JsonPropertyName("text")] string Text,
    [property: System.Text.Json.Serialization.JsonPropertyName("token_ids")] int[] TokenIds,
    [property: System.Text.Json.Serialization.JsonPropertyName("finish_reason")] string FinishReason,
    [property: System.Text.Json.Serialization.JsonPropertyName("prompt_tokens")] int PromptTokens,
    [property: System.Text.Json.Serialization.JsonPropertyName("completion_tokens")] int CompletionTokens,
    [property: System.Text.Json.Serialization.JsonPropertyName("cached_prompt_tokens")] int CachedPromptTokens);

[System.Text.Json.Serialization.JsonSerializable(typeof(JsonlRecord))]
internal sealed partial class JsonlContext : System.Text.Json.Serialization.JsonSerializerContext;
