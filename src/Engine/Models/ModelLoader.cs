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
}

/// <summary>Loads what the user named: a <c>.gguf</c> file or a <c>dummy:&lt;preset&gt;</c>.</summary>
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
                throw new ArgumentException($"--dtype {t} applies to dummy models only; a GGUF file runs in the types it stores");
            if (Directory.Exists(model))
                throw new NotSupportedException($"{model} is a directory; Hugging Face folders are not supported yet — pass a .gguf file");
            loaded = GgufModelLoader.Load(model);
        }
        if (options.MaxModelLen is { } len)
        {
            if (len < 1) throw new ArgumentOutOfRangeException(nameof(options), len, "max model length must be positive");
            var resized = new Model(loaded.Name, loaded.Config with { ContextLength = len }, loaded.Weights, loaded.Tokenizer, [loaded], loaded.ChatTemplate);
            return resized;
        }
        return loaded;
    }
}
