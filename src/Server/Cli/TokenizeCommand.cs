using TokenMill.Models;
using TokenMill.Models.Dummy;
using TokenMill.Models.Gguf;
using TokenMill.Tokenization;

namespace TokenMill.Server.Cli;

/// <summary>
/// <c>tokenmill tokenize --model M "text"</c>: the ids of the bare text (no BOS/EOS, special-token
/// text not parsed), space-separated on one line — the convention of llama.cpp's tokenizer tests.
/// </summary>
public static class TokenizeCommand
{
    const string Help = """
        usage: tokenmill tokenize --model <file.gguf | dummy:preset | Org/Name:QUANT> [--revision R] [--add-special] [--parse-special] TEXT

          --add-special      add BOS/EOS as the model's metadata says
          --parse-special    turn the text of special tokens (e.g. <s>) into those tokens
        """;

    static readonly HashSet<string> ValueOptions = ["model", "revision"];
    static readonly HashSet<string> Flags = ["add-special", "parse-special", "help"];

    public static int Run(string[] args, TextWriter stdout, TextWriter stderr)
    {
        var a = new CliArguments("tokenize", args, ValueOptions, Flags);
        if (a.Flag("help"))
        {
            stdout.WriteLine(Help);
            return Cli.ExitOk;
        }
        if (a.String("model") is not { } modelName) throw new UsageException("--model is required");
        if (a.Positional.Count != 1) throw new UsageException($"expected exactly one TEXT argument, got {a.Positional.Count}");

        ITokenizer tokenizer;
        if (DummyModelFactory.IsDummy(modelName))
        {
            string preset = modelName[DummyModelFactory.Prefix.Length..];
            if (!DummyPresets.All.TryGetValue(preset, out var p))
                throw new UsageException($"unknown dummy preset '{preset}' (known: {string.Join(", ", DummyPresets.All.Keys)})");
            tokenizer = TokenizerLoader.Cl100kFitted(p.Config.VocabSize);
        }
        else
        {
            // Only the tokenizer is needed: no weights are touched, so a vocab-only GGUF works too.
            string path = ModelLoader.LocalPath(modelName, new ModelLoadOptions
            {
                Revision = a.String("revision"), Hub = TokenMill.Models.Hub.HubOptions.FromEnvironment() with { Progress = stderr },
            });
            using var file = GgufFile.Open(path);
            tokenizer = TokenizerLoader.FromGguf(file);
        }
        var ids = tokenizer.Encode(a.Positional[0], addSpecial: a.Flag("add-special"), parseSpecial: a.Flag("parse-special"));
        stdout.WriteLine(string.Join(' ', ids));
        return Cli.ExitOk;
    }
}
