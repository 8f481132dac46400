using System.Reflection;
using TokenMill.Models.Gguf;

namespace TokenMill.Server.Cli;

/// <summary>The <c>tokenmill</c> command line: one executable, one subcommand per job.</summary>
public static class Cli
{
    public const int ExitOk = 0;
    public const int ExitFailure = 1;
    public const int ExitUsage = 2;

    /// <summary>
    /// Every subcommand, in the order <c>tokenmill help</c> lists them. Options come from each command's own parser tables,
    /// so the usage text and the shell completion scripts (<see cref="CompletionCommand"/>) cannot drift from what is parsed.
    /// </summary>
    public static IReadOnlyList<CliCommand> Commands { get; } =
    [
        new("serve", "the OpenAI-compatible HTTP server, with a browser playground at / (default model: dummy:tinyllama-1.1b)",
            ServeCommand.Run, ServeCommand.ValueOptions, ServeCommand.Flags, ServeCommand.Help),
        new("generate", "complete a prompt and print the completion (default model: dummy:tinyllama-1.1b)",
            GenerateCommand.Run, GenerateCommand.ValueOptions, GenerateCommand.Flags, GenerateCommand.Help),
        new("tokenize", "print the token ids of a text", TokenizeCommand.Run, TokenizeCommand.ValueOptions, TokenizeCommand.Flags, TokenizeCommand.Help),
        new("info", "what a model is (architecture, parameters, weight types, context) and what its KV cache costs",
            InfoCommand.Run, InfoCommand.ValueOptions, InfoCommand.Flags, InfoCommand.Help, FileArguments: true),
        new("bench", "latency (prefill and decode tokens/s) and throughput (many requests at once)", BenchCommand.Run,
            BenchCommand.ValueOptions.Union(BenchCommand.ServeValueOptions).ToHashSet(), BenchCommand.Flags.Union(BenchCommand.ServeFlags).ToHashSet(),
            BenchCommand.Help + BenchServe.Help, Subcommands: ["latency", "throughput", "serve"]),
        new("export", "write a dummy model as a GGUF file, for llama.cpp to run the same weights", ExportCommand.Run,
            ExportCommand.ValueOptions, ExportCommand.Flags, ExportCommand.Help),
        new("simulate", "replay a request trace through the scheduler and KV cache (eviction-policy research)",
            SimulateCommand.Run, SimulateCommand.ValueOptions, SimulateCommand.Flags, SimulateCommand.Help, Subcommands: ["generate-trace"]),
        new("kernels", "compile, check and test the CUDA kernels ('kernels check', 'kernels test --emulate': no GPU needed)",
            KernelsCommand.Run, KernelsCommand.ValueOptions, KernelsCommand.Flags, KernelsCommand.Help, Subcommands: ["check", "sass", "test", "selftest", "nccl", "forward", "bench"]),
        new("completion", "print a shell completion script: bash, zsh, fish or pwsh", CompletionCommand.Run,
            new HashSet<string>(), CompletionCommand.Flags, CompletionCommand.Help, Subcommands: CompletionCommand.Shells),
    ];

    static string Usage => $"""
        usage: tokenmill <command> [options]

        commands:
        {string.Join("\n", Commands.Select(c => $"  {c.Name,-11}{c.Summary}"))}
          help       show this text; 'tokenmill <command> --help' shows a command's options and an example

        every command also reads --config FILE (YAML or JSON with the option names) and TOKENMILL_<OPTION> variables.
        example: tokenmill serve --model qwen2.5-0.5b-instruct-q8_0.gguf --port 8000
        """;

    public static int Run(string[] args, TextWriter stdout, TextWriter stderr)
    {
        if (args.Length == 0 || args[0] is "help" or "--help" or "-h")
        {
            stdout.WriteLine(Usage);
            return args.Length == 0 ? ExitUsage : ExitOk;
        }
        if (args[0] is "--version")
        {
            stdout.WriteLine($"tokenmill {Assembly.GetExecutingAssembly().GetName().Version}");
            return ExitOk;
        }

        string command = args[0];
        var rest = args.Skip(1).ToArray();
        try
        {
            var entry = Commands.FirstOrDefault(c => c.Name == command)
                ?? throw new UsageException($"unknown command '{command}' (commands: {string.Join(", ", Commands.Select(c => c.Name))}, help)");
            return entry.Run(rest, stdout, stderr);
        }
        catch (UsageException e)
        {
            stderr.WriteLine($"tokenmill {command}: error: {e.Message}");
            stderr.WriteLine($"run 'tokenmill {command} --help' for the options");
            return ExitUsage;
        }
        catch (Exception e) when (e is GgufFormatException or FileNotFoundException or DirectoryNotFoundException
                                      or NotSupportedException or ArgumentException or InvalidDataException
                                      or InvalidOperationException or IOException or UnauthorizedAccessException
                                      or TokenMill.Core.InvalidRequestException or TokenMill.Core.EngineOverloadedException
                                      or TokenMill.Core.EngineFailedException)
        {
            stderr.WriteLine($"tokenmill {command}: error: {e.Message}");
            return ExitFailure;
        }
    }

    /// <summary>
    /// The model options every model-running command shares: <c>--model</c> (default: the dummy preset; a .gguf file or a
    /// Hugging Face folder), <c>--tokenizer</c> (a GGUF or tokenizer.json folder for a Hugging Face folder), <c>--dtype</c>,
    /// and <c>--max-model-len</c>, which may exceed the context length the file states (as llama.cpp's -c may:
    /// some converters write too small a value, e.g. stories260K's 128 for a model trained at 512).
    /// </summary>
    /// <remarks>
    /// <c>--model Org/Name[:QUANT]</c> fetches from the Hugging Face Hub (with <c>--revision</c>), drawing progress on
    /// <paramref name="progress"/>.
    /// </remarks>
    public static (string Model, TokenMill.Models.ModelLoadOptions Load) ParseModel(CliArguments a, TextWriter? progress = null) =>
        (a.String("model") ?? TokenMill.Models.ModelLoader.DefaultModel,
         new TokenMill.Models.ModelLoadOptions
         {
             DType = a.String("dtype") is { } dt ? ParseDType(dt) : null,
             DummyLayers = a.String("dummy-layers") is null ? null : a.Int("dummy-layers", 0, min: 1),
             DummyValues = a.String("dummy-values") is { } dv ? ParseDType(dv, "dummy-values") : null,
             MaxModelLen = a.String("max-model-len") is null ? null : a.Int("max-model-len", 0, min: 1),
             TokenizerPath = a.String("tokenizer"),
             Revision = a.String("revision"),
             Hub = TokenMill.Models.Hub.HubOptions.FromEnvironment() with { Progress = progress },
         });

    /// <summary>The weight types a dummy model can be made in, as <c>--dtype</c> takes them.</summary>
    public static readonly string[] DTypeNames = ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_K", "Q6_K"];

    /// <summary>Parses a dtype name as users write it (f16, Q8_0, bf16 …).</summary>
    public static GgmlType ParseDType(string s, string option = "dtype") =>
        Enum.TryParse<GgmlType>(s.Replace('-', '_'), ignoreCase: true, out var t) && Enum.IsDefined(t)
            ? t
            : throw new UsageException($"--{option} must be one of {string.Join(", ", DTypeNames)}; got '{s}'");
}

/// <summary>
/// One subcommand: its name, a one-line summary, how to run it, the option names its parser accepts (value options and
/// flags, without the <c>--</c>), its help text (where completion scripts find each option's description), the words it
/// takes first (<c>bench latency</c>, <c>kernels check</c>), and whether its positional arguments are files.
/// </summary>
public sealed record CliCommand(
    string Name, string Summary, Func<string[], TextWriter, TextWriter, int> Run, IReadOnlySet<string> ValueOptions, IReadOnlySet<string> Flags,
    string Help, IReadOnlyList<string>? Subcommands = null, bool FileArguments = false);
