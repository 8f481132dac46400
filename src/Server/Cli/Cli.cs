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
          generate   complete a prompt and print the completion (default model: dummy:tinyllama-1.1b)
          tokenize   print the token ids of a text
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
                "tokenize" => TokenizeCommand.Run(rest, stdout, stderr),
                "kernels" => KernelsCommand.Run(rest, stdout, stderr),
                _ => throw new UsageException($"unknown command '{command}' (commands: generate, tokenize, kernels, help)"),
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

    /// <summary>Parses a dtype name as users write it (f16, Q8_0, bf16 …).</summary>
    public static GgmlType ParseDType(string s) =>
        Enum.TryParse<GgmlType>(s.Replace('-', '_'), ignoreCase: true, out var t) && Enum.IsDefined(t)
            ? t
            : throw new UsageException($"--dtype must be one of F32, F16, BF16, Q8_0, Q4_0; got '{s}'");
}
