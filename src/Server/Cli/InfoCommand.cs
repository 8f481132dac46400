using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using TokenMill.KvCache;
using TokenMill.Models;
using TokenMill.Models.Dummy;
using TokenMill.Models.Gguf;

namespace TokenMill.Server.Cli;

/// <summary>
/// <c>tokenmill info MODEL</c>: what a model is without loading its weights — architecture, parameters,
/// weight types, context, tokenizer, chat template — and what its KV cache costs: bytes per token and
/// the longest context a memory budget holds.
/// </summary>
public static class InfoCommand
{
    internal const string Help = """
        usage: tokenmill info <file.gguf | dummy:preset | Org/Name:QUANT> [--revision R] [--kv-cache-memory SIZE] [--kv-cache-dtype f32|f16|q8_0] [--json]

          --kv-cache-memory SIZE   the budget to size contexts against (default 2GiB)
          --kv-cache-dtype T       the cache's element type: f32 (default), f16 (half the bytes per token) or q8_0
                                   (34 bytes per 32 values)
          --json                   print the facts as one JSON object

        example: tokenmill info ../shared/testdata/arch/arch-qwen3.gguf --kv-cache-memory 512MiB
        """;

    internal static readonly HashSet<string> ValueOptions = ["kv-cache-memory", "kv-cache-dtype", "revision"];
    internal static readonly HashSet<string> Flags = ["json", "help"];

    public static int Run(string[] args, TextWriter stdout, TextWriter stderr)
    {
        var a = new CliArguments("info", args, ValueOptions, Flags);
        if (a.Flag("help"))
        {
            stdout.WriteLine(Help);
            return Cli.ExitOk;
        }
        if (a.Positional.Count != 1) throw new UsageException("expected exactly one MODEL argument (a .gguf file or dummy:<preset>)");
        string model = a.Positional[0];
        long budget = a.String("kv-cache-memory") is { } m ? GenerateCommand.ParseSize("kv-cache-memory", m) : 2L << 30;
        var dtype = GenerateCommand.ParseKvCacheDtype(a.String("kv-cache-dtype") ?? "f32");

        var info = new JsonObject { ["model"] = model };
        ModelConfig config;
        if (DummyModelFactory.IsDummy(model))
        {
            string name = model[DummyModelFactory.Prefix.Length..];
            if (!DummyPresets.All.TryGetValue(name, out var preset))
                throw new UsageException($"unknown dummy preset '{name}' (known: {string.Join(", ", DummyPresets.All.Keys)})");
            config = preset.Config;
            info["format"] = "dummy (random weights; dtype chosen with --dtype)";
            info["parameters"] = DummyParameters(preset);
            info["tokenizer"] = "cl100k_base fitted to the vocabulary"
                + (preset.TokenizerFamily is { } family ? $"; with --tokenizer DIR, the real {family} tokenizer.json" : "");
            info["chat_template"] = false;
        }
        else
        {
            // A Hub model (Org/Name:QUANT) is looked at in the cache, downloaded first when missing.
            string path = ModelLoader.LocalPath(model, new ModelLoadOptions
            {
                Revision = a.String("revision"), Hub = TokenMill.Models.Hub.HubOptions.FromEnvironment() with { Progress = stderr },
            });
            using var f = GgufFile.Open(path);
            config = ModelConfig.FromGguf(f);
            info["format"] = $"GGUF v{f.Version}";
            info["name"] = f.GetString("general.name");
            info["parameters"] = f.Tensors.Sum(t => t.ElementCount);
            var types = new JsonObject();
            foreach (var g in f.Tensors.GroupBy(t => t.Type).OrderByDescending(g => g.Sum(t => t.ByteCount)))
                types[g.Key.ToString()] = $"{g.Count()} tensors, {FormatBytes(g.Sum(t => t.ByteCount))}";
            info["weight_types"] = types;
            info["weight_bytes"] = f.Tensors.Sum(t => t.ByteCount);
            info["tokenizer"] = f.GetString("tokenizer.ggml.model") is { } tm ? $"{tm}{(f.GetString("tokenizer.ggml.pre") is { } pre ? $" (pre: {pre})" : "")}" : "none";
            info["chat_template"] = f.Has("tokenizer.chat_template");
        }

        if (dtype.Unsupported(config.HeadDim) is { } why) throw new UsageException(why);
        long perToken = PagedKvStore.BytesPerBlock(config, 1, dtype);
        int blockSize = 16;
        long blocks = budget / PagedKvStore.BytesPerBlock(config, blockSize, dtype);
        info["architecture"] = config.Architecture;
        info["layers"] = config.BlockCount;
        info["embedding_length"] = config.EmbeddingLength;
        info["heads"] = $"{config.HeadCount} query, {config.HeadCountKv} key/value, head dim {config.HeadDim}";
        info["vocab_size"] = config.VocabSize;
        info["context_length"] = config.ContextLength;
        info["rope"] = $"{config.RopeType}, base {config.RopeFreqBase.ToString(CultureInfo.InvariantCulture)}"
                       + (config.RopeFreqFactors is null ? "" : ", Llama 3 frequency factors")
                       + (config.RopeLinearScale != 1 ? $", linear scale {config.RopeLinearScale.ToString(CultureInfo.InvariantCulture)}" : "")
                       + (config.SlidingWindow > 0 ? $", sliding window {config.SlidingWindow}" : "")
                       + (config.SlidingWindow > 0 && config.SlidingWindowPattern > 1
                           ? $" on {config.SlidingWindowPattern - 1} of every {config.SlidingWindowPattern} layers" : "")
                       + (config.RopeFreqBaseSwa is float swa ? $" (their rope base {swa.ToString(CultureInfo.InvariantCulture)})" : "");
        info["kv_cache_dtype"] = dtype.Name();
        info["kv_bytes_per_token"] = perToken;
        info["kv_budget_bytes"] = budget;
        info["kv_tokens_in_budget"] = blocks * blockSize;
        info["longest_context_in_budget"] = Math.Min(blocks * blockSize, config.ContextLength);

        if (a.Flag("json"))
        {
            stdout.WriteLine(info.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
            return Cli.ExitOk;
        }
        foreach (var (key, value) in info)
        {
            string text = value is JsonObject o ? string.Join("; ", o.Select(kv => $"{kv.Key}: {kv.Value}")) : value?.ToString() ?? "";
            if (key == "parameters") text = FormatCount((long)value!);
            if (key is "kv_bytes_per_token" or "kv_budget_bytes" or "weight_bytes") text = FormatBytes((long)value!);
            stdout.WriteLine($"{key.Replace('_', ' '),-26} {text}");
        }
        return Cli.ExitOk;
    }

    static long DummyParameters(DummyPreset preset)
    {
        var c = preset.Config;
        long d = c.EmbeddingLength, perLayer = d * c.QDim + 2 * d * c.KvDim + c.QDim * d + 3 * d * c.FeedForwardLength + 2 * d
            + (preset.HasQkvBias ? c.QDim + 2 * c.KvDim : 0) + (preset.HasQkNorm ? 2 * c.HeadDim : 0) + (preset.HasPostNorms ? 2 * d : 0);
        return c.BlockCount * perLayer + c.VocabSize * d * (preset.TiedEmbeddings ? 1 : 2) + d;
    }

    static string FormatCount(long n) => n >= 1_000_000_000 ? $"{n / 1e9:F2} B" : n >= 1_000_000 ? $"{n / 1e6:F2} M" : n.ToString(CultureInfo.InvariantCulture);

    static string FormatBytes(long b) => b >= 1L << 30 ? $"{b / (double)(1L << 30):F2} GiB" : b >= 1L << 20 ? $"{b / (double)(1L << 20):F2} MiB" : $"{b / 1024.0:F1} KiB";
}
