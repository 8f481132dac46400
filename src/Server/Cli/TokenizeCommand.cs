using TokenMill.Models;
using TokenMill.Models.Dummy;
using TokenMill.Tokenization;

namespace TokenMill.Server.Cli;

/// <summary>
/// <c>tokenmill tokenize --model M "text"</c>: the ids of the bare text (no BOS/EOS, special-token
/// text not parsed unless <c>--parse-special</c>), space-separated on one line — the convention of llama.cpp's
/// tokenizer tests. M may be a GGUF (a vocab-only one is enough), a folder holding <c>tokenizer.json</c> (no weights
/// or <c>config.json</c> needed) or a dummy preset.
/// </summary>
public static class TokenizeCommand
{
    internal const string Help = """
        usage: tokenmill tokenize --model <file.gguf | DIR | dummy:preset | Org/Name:QUANT> [--revision R] [--add-special] [--parse-special] TEXT

          DIR                a folder with tokenizer.json (and tokenizer_config.json); weights are not needed
          --add-special      add BOS/EOS as the model's metadata says (tokenizer.json: its post-processor template)
          --parse-special    turn the text of special tokens (e.g. <s>, <|im_start|>) into those tokens

        example: tokenmill tokenize --model stories260K.gguf --add-special "Once upon a time"
        """;

    internal static readonly HashSet<string> ValueOptions = ["model", "revision"];
    internal static readonly HashSet<string> Flags = ["add-special", "parse-special", "help"];

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
            // Only the tokenizer is needed: no weights are touched, so a vocab-only GGUF or a folder of tokenizer files works.
            string path = ModelLoader.LocalPath(modelName, new ModelLoadOptions
            {
                Revision = a.String("revision"), Hub = TokenMill.Models.Hub.HubOptions.FromEnvironment() with { Progress = stderr },
            });
            tokenizer = ModelLoader.LoadTokenizer(path).Tokenizer;
        }
        var ids = tokenizer.Encode(a.Positional[0], addSpecial: a.Flag("add-special"), parseSpecial: a.Flag("parse-special"));
        stdout.WriteLine(string.Join(' ', ids));
        return Cli.ExitOk;
    }
}
