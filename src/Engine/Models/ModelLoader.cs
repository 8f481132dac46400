using TokenMill.Models.Dummy;
using TokenMill.Models.Gguf;
using TokenMill.Models.Hub;
using TokenMill.Tokenization;

namespace TokenMill.Models;

public sealed record ModelLoadOptions
{
    /// <summary>Weight type of a dummy model (GGUF weights run in their stored types).</summary>
    public GgmlType? DType { get; init; }

    /// <summary>Overrides the model's context length (e.g. a converter that wrote a too-small one).</summary>
    public int? MaxModelLen { get; init; }

    /// <summary>Seed of a dummy model's random weights.</summary>
    public ulong Seed { get; init; }

    /// <summary>Build only this many layers of a dummy model (<c>--dummy-layers</c>): the preset's widths at a fraction of the time and memory.</summary>
    public int? DummyLayers { get; init; }

    /// <summary>
    /// F32 weights of a dummy model holding another type's values (<c>--dummy-values</c>, e.g. BF16: an F32 GGUF
    /// converted from a bf16 checkpoint); null: full f32 values.
    /// </summary>
    public GgmlType? DummyValues { get; init; }

    /// <summary>
    /// Where a Hugging Face folder's tokenizer and chat template come from (<c>--tokenizer</c>): a GGUF file, or a folder
    /// with <c>tokenizer.json</c>; by default the model folder's own <c>tokenizer.json</c>.
    /// </summary>
    public string? TokenizerPath { get; init; }

    /// <summary>A tokenizer for a Hugging Face folder given in-process (tests, embedders); wins over <see cref="TokenizerPath"/>.</summary>
    public ITokenizer? Tokenizer { get; init; }

    /// <summary>Branch, tag or commit of a Hub model (<c>--revision</c>); default <c>main</c>.</summary>
    public string? Revision { get; init; }

    /// <summary>How Hub models are fetched; null reads the environment (<see cref="HubOptions.FromEnvironment"/>).</summary>
    public HubOptions? Hub { get; init; }
}

/// <summary>
/// Loads what the user named: a <c>.gguf</c> file, a Hugging Face folder, a <c>dummy:&lt;preset&gt;</c>, or a Hub model
/// <c>Org/Name[:QUANT]</c> (fetched into the Hugging Face cache first, <see cref="HubModelResolver"/>).
/// </summary>
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
            // --tokenizer gives a dummy model a real tokenizer (and chat template), e.g. the family's tokenizer.json.
            var (tokenizer, template) = options.Tokenizer is { } given ? (given, null)
                : options.TokenizerPath is { } path ? LoadTokenizer(path) : (null, null);
            loaded = DummyModelFactory.Create(model, options.DType ?? DefaultDummyDType, options.Seed, tokenizer, options.DummyLayers, options.DummyValues);
            if (template is not null)
                loaded = new Model(loaded.Name, loaded.Config, loaded.Weights, loaded.Tokenizer, [loaded], template);
        }
        else
        {
            if (options.DType is { } t)
                throw new ArgumentException($"--dtype {t} applies to dummy models only; a model file runs in the types it stores");
            if (options.DummyLayers is { } layers)
                throw new ArgumentException($"--dummy-layers {layers} applies to dummy models only");
            if (options.DummyValues is { } values)
                throw new ArgumentException($"--dummy-values {values} applies to dummy models only");
            string path = LocalPath(model, options);
            loaded = Directory.Exists(path) ? LoadFolder(path, options) : GgufModelLoader.Load(path);
        }
        if (options.MaxModelLen is { } len)
        {
            if (len < 1) throw new ArgumentOutOfRangeException(nameof(options), len, "max model length must be positive");
            var resized = new Model(loaded.Name, loaded.Config with { ContextLength = len }, loaded.Weights, loaded.Tokenizer, [loaded], loaded.ChatTemplate);
            return resized;
        }
        return loaded;
    }

    /// <summary>
    /// The file or folder <paramref name="model"/> names: itself, or for a Hub model (<c>Org/Name[:QUANT]</c> that is not a
    /// local path) the cached snapshot, downloaded first when missing.
    /// </summary>
    public static string LocalPath(string model, ModelLoadOptions? options = null)
    {
        options ??= new ModelLoadOptions();
        if (HubModelReference.TryParse(model, out var reference))
        {
            try
            {
                return HubModelResolver.Resolve(reference, options.Revision ?? "main", options.Hub ?? HubOptions.FromEnvironment());
            }
            catch (HubException e) when (e.Status is System.Net.HttpStatusCode.Unauthorized or System.Net.HttpStatusCode.NotFound)
            {
                // 'models/llama' may be a mistyped local path rather than a repository: say both.
                throw new HubException($"{e.Message} (and there is no local file or folder '{model}')", e.Status, e);
            }
        }
        if (options.Revision is not null)
            throw new ArgumentException($"--revision applies to Hub models (Org/Name) only, not to the local path '{model}'");
        return model;
    }

    static Model LoadFolder(string directory, ModelLoadOptions options)
    {
        if (!HuggingFace.HfModelLoader.IsModelFolder(directory))
            throw new FileNotFoundException($"{directory} is a directory without config.json; pass a .gguf file or a Hugging Face model folder",
                Path.Combine(directory, HuggingFace.HfModelLoader.ConfigFileName));
        if (options.Tokenizer is { } given)
            return HuggingFace.HfModelLoader.Load(directory, given);

        // The tokenizer: --tokenizer (a GGUF, or a folder with tokenizer.json), else the model folder's own tokenizer.json.
        var (tokenizer, template) = LoadTokenizer(options.TokenizerPath ?? directory);
        var model = HuggingFace.HfModelLoader.Load(directory, tokenizer);
        return template is null ? model : new Model(model.Name, model.Config, model.Weights, model.Tokenizer, [model], template);
    }

    /// <summary>The tokenizer and chat template of a folder with <c>tokenizer.json</c>, or of a GGUF file (its weights untouched).</summary>
    public static (ITokenizer Tokenizer, Chat.ChatTemplate? Template) LoadTokenizer(string source)
    {
        if (Directory.Exists(source))
        {
            if (!HfTokenizerLoader.HasTokenizer(source))
                throw new FileNotFoundException(
                    $"{source}: no {HfTokenizerLoader.TokenizerFileName}; pass --tokenizer FILE.gguf, a GGUF file of the same model whose tokenizer and chat template will be used",
                    Path.Combine(source, HfTokenizerLoader.TokenizerFileName));
            var tokenizer = HfTokenizerLoader.Load(source);
            return (tokenizer, Template(source, () => HfTokenizerLoader.ChatTemplate(source, tokenizer)));
        }
        using var gguf = GgufFile.Open(source);
        return (TokenizerLoader.FromGguf(gguf), Template(source, () => Chat.ChatTemplate.FromGguf(gguf)));
    }

    static Chat.ChatTemplate? Template(string source, Func<Chat.ChatTemplate?> read)
    {
        try
        {
            return read();
        }
        catch (Chat.ChatTemplateException e)
        {
            // A template we cannot render is an error at start-up, never a wrong prompt later.
            throw new InvalidDataException($"{source}: chat_template cannot be used: {e.Message}", e);
        }
    }
}
