using TokenMill.Models;
using TokenMill.Models.Dummy;
using TokenMill.Models.Gguf;

namespace TokenMill.Server.Cli;

/// <summary>
/// <c>tokenmill export --model dummy:PRESET --dtype T --output FILE.gguf</c>: a dummy model's weights as a GGUF file, so
/// llama.cpp (<c>llama-bench</c>, <c>llama-batched-bench</c>, <c>llama-server</c>) runs the very weights TokenMill
/// benchmarks. The file is written beside the target and renamed into place when complete.
/// </summary>
public static class ExportCommand
{
    internal const string Help = """
        usage: tokenmill export --output FILE.gguf [--model dummy:PRESET] [--dtype T] [--dummy-layers N] [--dummy-values T] [--vocab-from FILE.gguf]

          --output FILE.gguf       where to write (replaced only when the whole file is written)
          --model dummy:PRESET     a llama, qwen2 or qwen3 preset (default: dummy:tinyllama-1.1b)
          --dtype T                the matrices' type: F32, F16, BF16, Q8_0, Q4_0, Q4_K or Q6_K (default Q8_0)
          --dummy-layers N         keep only the first N layers
          --dummy-values T         F32 weights holding T's values (as bench takes it)
          --vocab-from FILE.gguf   copy the tokenizer keys of this GGUF (it must have as many tokens as the model has
                                   vocabulary rows) instead of writing the dummy's cl100k vocabulary

        example: tokenmill export --dtype Q4_0 --output tinyllama-q4_0.gguf && llama-bench -m tinyllama-q4_0.gguf -t 2
        """;

    internal static readonly HashSet<string> ValueOptions = ["output", "model", "dtype", "dummy-layers", "dummy-values", "vocab-from"];
    internal static readonly HashSet<string> Flags = ["help"];

    public static int Run(string[] args, TextWriter stdout, TextWriter stderr)
    {
        var a = new CliArguments("export", args, ValueOptions, Flags);
        if (a.Flag("help"))
        {
            stdout.WriteLine(Help);
            return Cli.ExitOk;
        }
        if (a.Positional.Count != 0) throw new UsageException($"unexpected argument '{a.Positional[0]}'");
        if (a.String("output") is not { } path) throw new UsageException("--output FILE.gguf is required");
        var (modelName, load) = Cli.ParseModel(a);
        if (!DummyModelFactory.IsDummy(modelName))
            throw new UsageException($"--model must be a dummy:PRESET (a GGUF file is already one; got '{modelName}')");
        load = load with { DType = load.DType ?? GgmlType.Q8_0 };
        if (DummyPresets.All.TryGetValue(modelName[DummyModelFactory.Prefix.Length..], out var preset))
            DummyGguf.EnsureWritable(preset.Config, modelName); // before making the weights

        using var vocabulary = a.String("vocab-from") is { } v ? GgufFile.Open(v) : null;
        using var model = ModelLoader.Load(modelName, load);
        string full = Path.GetFullPath(path);
        string partial = full + ".partial";
        try
        {
            using (var file = new FileStream(partial, FileMode.Create, FileAccess.Write, FileShare.None, 1 << 20))
                DummyGguf.Write(model, file, vocabulary);
            File.Move(partial, full, overwrite: true);
        }
        finally
        {
            if (File.Exists(partial)) File.Delete(partial);
        }
        stdout.WriteLine($"wrote {full}: {model.Name}, {load.DType}, {new FileInfo(full).Length:N0} bytes");
        return Cli.ExitOk;
    }
}
