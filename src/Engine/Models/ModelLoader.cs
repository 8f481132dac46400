using TokenMill.Models.Dummy;
using TokenMill.Models.Gguf;

namespace TokenMill.Models;

public sealed record ModelLoadOptions
{
    /// <summary>Weight type of a dummy model (GGUF weights run in their stored types).</summary>
    public GgmlType? DType { get; init; }

    /// <summary>Overrides the model's context length (e.g. a converter that wrote a too-small one).</summary>
    public int? MaxModelLen { get; init; }

    /// <summary>Seed of a dummy model's random weights.</summary>
    public ulong Seed { get; init; }

    /// <summary>
    /// A GGUF file whose tokenizer (and chat template) a Hugging Face folder uses (<c>--tokenizer</c>):
    /// reading <c>tokenizer.json</c> is not implemented yet.
    /// </summary>
    public string? TokenizerPath { get; init; }

    /// <summary>A tokenizer for a Hugging Face folder given in-process (tests, embedders); wins over <see cref="TokenizerPath"/>.</summary>
    public TokenMill.Tokenization.ITokenizer? Tokenizer { get; init; }
}

/// <summary>Loads what the user named: a <c>.gguf</c> file, a Hugging Face folder or a <c>dummy:&lt;preset&gt;</c>.</summary>
public static class ModelLoader
{
    public const string DefaultModel = "dummy:tinyllama-1.1b";
    public const GgmlType DefaultDummyDType = GgmlType.Q8_0;

    public static Model Load(string model, ModelLoadOptions? options = null)
    {
        options ??= new ModelLoadOptions();
        Model loaded;
        if (DummyModelFactory.IsDummy(model))
        {
            loaded = DummyModelFactory.Create(model, options.DType ?? DefaultDummyDType, options.Seed);
        }
        else
        {
            if (options.DType is { } t)
                throw new ArgumentException($"--dtype {t} applies to dummy models only; a model file runs in the types it stores");
            loaded = Directory.Exists(model) ? LoadFolder(model, options) : GgufModelLoader.Load(model);
        }
        if (options.MaxModelLen is { } len)
        {
            if (len < 1) throw new ArgumentOutOfRangeException(nameof(options), len, "max model length must be positive");
            var resized = new Model(loaded.Name, loaded.Config with { ContextLength = len }, loaded.Weights, loaded.Tokenizer, [loaded], loaded.ChatTemplate);
            return resized;
        }
        return loaded;
    }

    static Model LoadFolder(string directory, ModelLoadOptions options)
    {
        if (!HuggingFace.HfModelLoader.IsModelFolder(directory))
            throw new FileNotFoundException($"{directory} is a directory without config.json; pass a .gguf file or a Hugging Face model folder",
                Path.Combine(directory, HuggingFace.HfModelLoader.ConfigFileName));
        if (options.Tokenizer is { } given)
            return HuggingFace.HfModelLoader.Load(directory, given);
        if (options.TokenizerPath is not { } tokenizerPath)
            throw new NotSupportedException(
                $"{directory}: reading a Hugging Face tokenizer (tokenizer.json) is not supported yet; " +
                "pass --tokenizer FILE.gguf, a GGUF file of the same model whose tokenizer and chat template will be used");
        if (Directory.Exists(tokenizerPath))
            throw new NotSupportedException($"--tokenizer {tokenizerPath}: a tokenizer folder (tokenizer.json) is not supported yet; pass a .gguf file");

        using var gguf = GgufFile.Open(tokenizerPath);
        var tokenizer = TokenMill.Tokenization.TokenizerLoader.FromGguf(gguf);
        Chat.ChatTemplate? template;
        try
        {
            template = Chat.ChatTemplate.FromGguf(gguf);
        }
        catch (Chat.ChatTemplateException e)
        {
            throw new InvalidDataException($"{tokenizerPath}: tokenizer.chat_template cannot be used: {e.Message}", e);
        }
        var model = HuggingFace.HfModelLoader.Load(directory, tokenizer);
        return template is null ? model : new Model(model.Name, model.Config, model.Weights, model.Tokenizer, [model], template);
    }
}
