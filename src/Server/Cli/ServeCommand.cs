using TokenMill.KvCache;
using TokenMill.Core;
using TokenMill.Models;
using TokenMill.Server.Http;

namespace TokenMill.Server.Cli;

/// <summary><c>tokenmill serve</c>: the OpenAI-compatible HTTP server.</summary>
public static class ServeCommand
{
    internal const string Help = """
        usage: tokenmill serve [--model <file.gguf | dummy:preset | Org/Name[:QUANT]>] [options]

          --model M                  a GGUF file, a Hugging Face folder (config.json + safetensors), or dummy:<preset>
                                     (default dummy:tinyllama-1.1b; its text is noise), or a Hugging Face Hub model
                                     Org/Name or Org/Name:QUANT, fetched into the huggingface_hub cache
          --revision R               branch, tag or commit of a Hub model, --model Org/Name[:QUANT] (default main)
          --tokenizer T              tokenizer and chat template of a Hugging Face folder: a GGUF file or a folder
                                     with tokenizer.json (default: the model folder's own tokenizer.json)
          --dtype T                  weight type of a dummy model (default Q8_0)
          --host H                   address to bind (default 127.0.0.1: loopback only)
          --port P                   port (default 8000)
          --served-model-name NAME   the model name clients use (default: --model)
          --api-key KEY              require 'Authorization: Bearer KEY' on /v1 endpoints (or TOKENMILL_API_KEY)
          --api-key-file FILE        read the key from a file (first line), so it stays out of the process list
          --shutdown-timeout SECONDS on SIGTERM/Ctrl+C, how long in-flight requests may finish before they are aborted (default 30)
          --max-request-body SIZE    largest request body (default 4MiB); larger ones get 413
          --log-format text|json    the one-line-per-request log on stderr (default text)
          --rate-limit-rpm N         generation requests per minute per client (API key, else address); 0 = off (default)
          --rate-limit-tpm N         tokens per minute per client (prompt + max_tokens × n, charged on admission); 0 = off
          --no-ui                    do not serve the browser playground at / (the /v1/engine endpoints stay)
          --chat-template-max-output N   longest chat-template output, and longest string or list it builds (default 16777216)
          --chat-template-max-steps N    statements plus loop iterations one rendering may run (default 1000000)
          --chat-template-max-depth N    macro calls nested inside each other, 1..1000 (default 100)
          --chat-template-timeout MS     time one rendering may take (default 1000); a template past a limit is a 400
        engine options: as 'tokenmill generate --help' lists them (--max-model-len, --block-size, --kv-cache-memory,
          --num-kv-blocks, --max-num-batched-tokens, --max-num-seqs, --max-queued-requests, --threads, --cpu-spin-us,
          -tp / --tensor-parallel-size, --tensor-parallel-timeout, --device cpu|cuda|cuda-emulated,
          --gpu-memory-utilization, --host-sampling, --enforce-eager)

        example: tokenmill serve --model qwen2.5-0.5b-instruct-q8_0.gguf --port 8000 --api-key-file ~/.tokenmill-key
                 then open http://127.0.0.1:8000/ for the playground and the live KV-cache view
        """;

    internal static readonly HashSet<string> ValueOptions =
    [
        .. GenerateCommand.EngineValueOptions, "host", "port", "served-model-name", "api-key", "api-key-file", "shutdown-timeout",
        "max-request-body", "rate-limit-rpm", "rate-limit-tpm", "log-format",
        "chat-template-max-output", "chat-template-max-steps", "chat-template-max-depth", "chat-template-timeout",
    ];
    internal static readonly HashSet<string> Flags = [.. GenerateCommand.EngineFlags, "no-ui"];
    internal static readonly string[] LogFormats = ["text", "json"];

    static string? ApiKey(CliArguments a)
    {
        if (a.String("api-key") is not null && a.String("api-key-file") is not null)
            throw new UsageException("give either --api-key or --api-key-file, not both");
        if (a.String("api-key-file") is { } file)
        {
            if (!File.Exists(file)) throw new FileNotFoundException($"{file}: no such API key file", file);
            string key = File.ReadLines(file).FirstOrDefault()?.Trim() ?? "";
            return key.Length > 0 ? key : throw new UsageException($"{file} holds no API key on its first line");
        }
        return a.String("api-key") ?? Environment.GetEnvironmentVariable("TOKENMILL_API_KEY");
    }

    public static int Run(string[] args, TextWriter stdout, TextWriter stderr)
    {
        var a = new CliArguments("serve", args, ValueOptions, Flags);
        if (a.Flag("help"))
        {
            stdout.WriteLine(Help);
            return Cli.ExitOk;
        }
        if (a.Positional.Count > 0) throw new UsageException($"unexpected argument '{a.Positional[0]}'");
        var (modelName, loadOptions) = Cli.ParseModel(a, stderr);
        var engineOptions = GenerateCommand.ParseEngineOptions(a);
        engineOptions.Validate();
        var options = new ServerOptions
        {
            Host = a.String("host") ?? "127.0.0.1",
            Port = a.Int("port", 8000, min: 0, max: 65535),
            // A Hub model is served under the name it was asked by (Org/Name[:QUANT]), as vLLM does, not its cache path.
            ServedModelName = a.String("served-model-name")
                ?? (TokenMill.Models.Hub.HubModelReference.TryParse(modelName, out var hub) ? hub.ToString() : null),
            ApiKey = ApiKey(a),
            ShutdownTimeout = TimeSpan.FromSeconds(a.Float("shutdown-timeout", 30, min: 0, max: 3600)),
            RateLimitRequestsPerMinute = a.Int("rate-limit-rpm", 0, min: 0),
            LogJson = (a.String("log-format") ?? "text") switch
            {
                "text" => false,
                "json" => true,
                var f => throw new UsageException($"--log-format must be {string.Join(" or ", LogFormats)}, got '{f}'"),
            },
            RateLimitTokensPerMinute = a.Int("rate-limit-tpm", 0, min: 0),
            EnableUi = !a.Flag("no-ui"),
            ChatTemplateLimits = new Chat.ChatTemplateLimits
            {
                MaxOutputChars = a.Int("chat-template-max-output", Chat.ChatTemplateLimits.Default.MaxOutputChars, min: 1, max: 1 << 30),
                MaxSteps = a.Int("chat-template-max-steps", (int)Chat.ChatTemplateLimits.Default.MaxSteps, min: 1),
                MaxCallDepth = a.Int("chat-template-max-depth", Chat.ChatTemplateLimits.Default.MaxCallDepth, min: 1, max: 1000),
                TimeBudget = TimeSpan.FromMilliseconds(a.Int("chat-template-timeout", (int)Chat.ChatTemplateLimits.Default.TimeBudget.TotalMilliseconds, min: 1)),
            },
            MaxRequestBodyBytes = a.String("max-request-body") is { } m ? GenerateCommand.ParseSize("max-request-body", m) : 4 << 20,
            Log = stderr,
        };
        if (!System.Net.IPAddress.TryParse(options.Host == "localhost" ? "127.0.0.1" : options.Host, out _))
            throw new UsageException($"--host must be an IP address (e.g. 127.0.0.1 or 0.0.0.0), got '{options.Host}'");

        var server = OpenAiServer.Create(options, () => new LlmEngine(ModelLoader.Load(modelName, loadOptions), engineOptions));
        server.StartAsync().GetAwaiter().GetResult();
        stderr.WriteLine($"tokenmill: listening on {server.BaseAddress} (loading {modelName}; /health answers 200 when ready)" +
                         (options.EnableUi ? $"; playground and KV-cache view at {server.BaseAddress}" : ""));
        try
        {
            var engine = server.Ready.GetAwaiter().GetResult();
            var c = engine.Model.Config;
            long kvBytes = engine.Stats.TotalKvBlocks * TokenMill.KvCache.PagedKvStore.BytesPerBlock(
                c with { HeadCountKv = Math.Max(c.HeadCountKv, engine.Options.TensorParallelSize) }, engine.Options.BlockSize,
                engine.Options.KvCacheDtype); // replicated KV heads count once per rank
            string tensorParallel = engine.Options.TensorParallelSize > 1
                ? $", tensor-parallel {engine.Options.TensorParallelSize} ranks × {engine.ThreadsPerRank} threads"
                : "";
            string device = engine.Executor is TokenMill.Backends.Cuda.CudaExecutor cuda
                ? $"device {(engine.Options.Device == TokenMill.Core.EngineDevice.CudaEmulated ? "cuda-emulated" : "cuda")} ({cuda.DeviceName}" +
                  $"{(cuda.WorldSize > 1 ? $", tensor-parallel {cuda.WorldSize} ranks on devices 0–{cuda.WorldSize - 1}" : "")}, " +
                  $"{(cuda.GemmUnavailable is { } why ? $"GEMV kernels only: {why}" : $"cuBLAS GEMMs for chunks of {TokenMill.Backends.Cuda.CudaForward.GemmMinRows}+ rows")})"
                : $"device cpu ({(engine.Options.Threads == 0 ? Environment.ProcessorCount : engine.Options.Threads)} threads{tensorParallel})";
            stderr.WriteLine(string.Create(System.Globalization.CultureInfo.InvariantCulture,
                $"tokenmill: serving {engine.Model.Name} as '{options.ServedModelName ?? engine.Model.Name}': {c.Architecture}, {c.BlockCount} layers, " +
                $"weights {engine.Model.Weights.Layers[0].Wq.Type}, {device}, " +
                $"max model length {engine.MaxModelLen}, KV cache {engine.Stats.TotalKvBlocks} blocks × {engine.Options.BlockSize} tokens " +
                $"({kvBytes / (double)(1L << 20):F0} MiB, {engine.Options.KvCacheDtype.Name()}), chat template {(engine.Model.ChatTemplate is null ? "ChatML (the model has none)" : "the model's")}"));
            server.WaitForShutdownAsync().GetAwaiter().GetResult();
        }
        finally
        {
            server.DisposeAsync().AsTask().GetAwaiter().GetResult();
        }
        return Cli.ExitOk;
    }
}
