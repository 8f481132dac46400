using System.Diagnostics;
using System.Globalization;
using TokenMill.Backends.Cpu;
using TokenMill.Generation;
using TokenMill.Models;
using TokenMill.Sampling;

namespace TokenMill.Server.Cli;

/// <summary><c>tokenmill generate</c>: the completion on stdout, statistics on stderr.</summary>
public static class GenerateCommand
{
    const string Help = """
        usage: tokenmill generate [--model <file.gguf | dummy:preset>] [--prompt TEXT] [options]

          --model M          a GGUF file, or dummy:<preset> (random weights in a real shape; its text is noise)
                             presets: tinyllama-1.1b, llama-3.2-1b, llama-2-7b, llama-3.1-8b, qwen2.5-0.5b, qwen2.5-1.5b
                             default: dummy:tinyllama-1.1b
          --dtype T          weight type of a dummy model: F32, F16, BF16, Q8_0, Q4_0 (default Q8_0)
          --prompt TEXT      the prompt (default "Once upon a time"); BOS is added as the model's metadata says
          --max-tokens N     tokens to generate at most (default 64)
          --temperature T    0 is greedy (default 0.8)
          --top-k K          0 disables (default 40)
          --top-p P          1 disables (default 0.95)
          --min-p P          0 disables (default 0.05)
          --seed S           seed of the sampler (default: random)
          --ignore-eos       keep generating after an end-of-generation token
          --max-model-len N  override the model's context length
          --threads N        CPU threads (default: all processors)
        """;

    static readonly HashSet<string> ValueOptions =
        ["model", "dtype", "prompt", "max-tokens", "temperature", "top-k", "top-p", "min-p", "seed", "max-model-len", "threads"];
    static readonly HashSet<string> Flags = ["ignore-eos", "help"];

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

        string modelName = a.String("model") ?? ModelLoader.DefaultModel;
        var loadOptions = new ModelLoadOptions
        {
            DType = a.String("dtype") is { } dt ? Cli.ParseDType(dt) : null,
            MaxModelLen = a.String("max-model-len") is null ? null : a.Int("max-model-len", 0, min: 1),
        };
        var options = new GenerationOptions
        {
            MaxTokens = a.Int("max-tokens", 64, min: 0),
            IgnoreEos = a.Flag("ignore-eos"),
            Sampling = new SamplingParams
            {
                Temperature = a.Float("temperature", 0.8f, min: 0),
                TopK = a.Int("top-k", 40, min: 0),
                TopP = a.Float("top-p", 0.95f, min: float.Epsilon, max: 1),
                MinP = a.Float("min-p", 0.05f, min: 0, max: 1),
                Seed = a.ULong("seed"),
            },
        };
        int threads = a.Int("threads", Environment.ProcessorCount, min: 1, max: 1024);
        string prompt = a.String("prompt") ?? "Once upon a time";

        var clock = Stopwatch.StartNew();
        using var model = ModelLoader.Load(modelName, loadOptions);
        var loadTime = clock.Elapsed;
        using var pool = new CpuWorkerPool(threads);
        using var forward = new CpuForward(model, pool: pool);
        var generator = new TextGenerator(model, forward);

        var result = generator.Generate(prompt, options, piece =>
        {
            stdout.Write(piece);
            stdout.Flush();
        });
        stdout.WriteLine();

        var ci = CultureInfo.InvariantCulture;
        stderr.WriteLine(string.Format(ci,
            "model {0}: load {1:F2} s | prompt {2} tokens, {3:F1} tokens/s | generation {4} tokens, {5:F1} tokens/s | finish: {6}",
            model.Name, loadTime.TotalSeconds, result.PromptTokens.Length, result.PromptTokensPerSecond,
            result.CompletionTokens.Length, result.GenerationTokensPerSecond, result.FinishReason));
        return Cli.ExitOk;
    }
}
