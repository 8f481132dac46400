using System.Reflection;
using TokenMill.Models.Gguf;

namespace TokenMill.Server.Cli;

/// <summary>The <c>tokenmill</c> command line: one executable, one subcommand per job.</summary>
public static class Cli
{
    public const int ExitOk = 0;
    public const int ExitFailure = 1;
    public const int ExitUsage = 2;

    const string Usage = """
        usage: tokenmill <command> [options]

        commands:
          serve      the OpenAI-compatible HTTP server (default model: dummy:tinyllama-1.1b)
          generate   complete a prompt and print the completion (default model: dummy:tinyllama-1.1b)
          tokenize   print the token ids of a text
          info       what a model is (architecture, parameters, weight types, context) and what its KV cache costs
          bench      latency (prefill and decode tokens/s) and throughput (many requests at once)
          simulate   replay a request trace through the scheduler and KV cache (eviction-policy research)
          kernels    compile and check the CUDA kernels ('kernels check'; needs NVRTC, not a GPU)
          help       show this text; 'tokenmill <command> --help' shows a command's options
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
            return command switch
            {
                "generate" => GenerateCommand.Run(rest, stdout, stderr),
                "serve" => ServeCommand.Run(rest, stdout, stderr),
                "bench" => BenchCommand.Run(rest, stdout, stderr),
                "tokenize" => TokenizeCommand.Run(rest, stdout, stderr),
                "info" => InfoCommand.Run(rest, stdout, stderr),
                "simulate" => SimulateCommand.Run(rest, stdout, stderr),
                "kernels" => KernelsCommand.Run(rest, stdout, stderr),
                _ => throw new UsageException($"unknown command '{command}' (commands: serve, generate, tokenize, info, bench, simulate, kernels, help)"),
            };
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
                                      or TokenMill.Core.InvalidRequestException or TokenMill.Core.EngineOverloadedException)
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
             MaxModelLen = a.String("max-model-len") is null ? null : a.Int("max-model-len", 0, min: 1),
             TokenizerPath = a.String("tokenizer"),
             Revision = a.String("revision"),
             Hub = TokenMill.Models.Hub.HubOptions.FromEnvironment() with { Progress = progress },
         });

    /// <summary>Parses a dtype name as users write it (f16, Q8_0, bf16 …).</summary>
    public static GgmlType ParseDType(string s) =>
        Enum.TryParse<GgmlType>(s.Replace('-', '_'), ignoreCase: true, out var t) && Enum.IsDefined(t)
            ? t
            : throw new UsageException($"--dtype must be one of F32, F16, BF16, Q8_0, Q4_0; got '{s}'");
}
