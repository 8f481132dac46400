using CsCheck;
using TokenMill.Backends.Cpu;
using TokenMill.Models;
using TokenMill.Models.Dummy;
using TokenMill.Models.Gguf;
using TokenMill.Tests.Backends;
using TokenMill.Tokenization;

namespace TokenMill.Tests.Models;

/// <summary>
/// <see cref="GgufWriter"/> and <see cref="DummyGguf"/>: a written file reads back with the values and bytes written,
/// a dummy model loaded from its file computes its logits bit for bit, and its vocabulary tokenizes as cl100k does.
/// </summary>
public sealed class DummyGgufTests : IDisposable
{
    readonly string _dir = Directory.CreateTempSubdirectory("tokenmill-gguf-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    static ModelConfig Small(string arch, int vocab, int d, int ff, int heads = 4, int kvHeads = 2, int? headDim = null) => new()
    {
        Architecture = arch,
        VocabSize = vocab,
        EmbeddingLength = d,
        BlockCount = 2,
        FeedForwardLength = ff,
        HeadCount = heads,
        HeadCountKv = kvHeads,
        HeadDim = headDim ?? d / heads,
        ValueHeadDim = headDim ?? d / heads,
        ContextLength = 256,
        RmsNormEps = arch == "llama" ? 1e-5f : 1e-6f,
        RopeType = arch == "llama" ? RopeType.Norm : RopeType.Neox,
        RopeDimensionCount = headDim ?? d / heads,
        RopeFreqBase = arch == "llama" ? 10000f : 1000000f,
    };

    string Export(Model model, GgufFile? vocabulary = null)
    {
        string path = Path.Combine(_dir, $"{Guid.NewGuid():N}.gguf");
        using (var file = File.Create(path)) DummyGguf.Write(model, file, vocabulary);
        return path;
    }

    [Fact]
    public unsafe void Writer_reads_back_every_value_type_and_the_tensor_bytes()
    {
        var metadata = new List<KeyValuePair<string, GgufValue>>
        {
            new("u8", new(GgufValueType.UInt8, (byte)200)),
            new("i8", new(GgufValueType.Int8, (sbyte)-5)),
            new("u16", new(GgufValueType.UInt16, (ushort)60000)),
            new("i16", new(GgufValueType.Int16, (short)-30000)),
            new("u32", new(GgufValueType.UInt32, 4_000_000_000u)),
            new("i32", new(GgufValueType.Int32, -2_000_000_000)),
            new("f32", new(GgufValueType.Float32, 1.5e-5f)),
            new("bool", new(GgufValueType.Bool, true)),
            new("str", new(GgufValueType.String, "héllo ▁ world")),
            new("u64", new(GgufValueType.UInt64, ulong.MaxValue)),
            new("i64", new(GgufValueType.Int64, long.MinValue)),
            new("f64", new(GgufValueType.Float64, Math.PI)),
            new("strings", new(GgufValueType.Array, new GgufArray(GgufValueType.String, new[] { "a", "", "Ġb c" }))),
            new("ints", new(GgufValueType.Array, new GgufArray(GgufValueType.Int32, new[] { 1, -2, 3 }))),
        };
        var vector = new float[] { 1, 2, 3 }; // 12 bytes: the next tensor starts at the next multiple of 32
        var q8 = new byte[2 * 34];            // two Q8_0 rows of 32
        for (int i = 0; i < q8.Length; i++) q8[i] = (byte)(i * 7 + 1);
        string path = Path.Combine(_dir, "values.gguf");
        fixed (float* v = vector)
        fixed (byte* q = q8)
        {
            using var file = File.Create(path);
            GgufWriter.Write(file, metadata, [new("v", GgmlType.F32, [3], (nint)v), new("q", GgmlType.Q8_0, [32, 2], (nint)q)]);
        }

        using var f = GgufFile.Open(path);
        Assert.Equal(3u, f.Version);
        Assert.Equal(metadata.Count, f.Metadata.Count);
        foreach (var (key, value) in metadata)
        {
            Assert.Equal(value.Type, f.Metadata[key].Type);
            if (value.Value is GgufArray a) Assert.Equal(a.Items.Cast<object>(), ((GgufArray)f.Metadata[key].Value).Items.Cast<object>());
            else Assert.Equal(value.Value, f.Metadata[key].Value);
        }
        Assert.Equal(vector, System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(f.GetTensorBytes(f.GetTensor("v"))).ToArray());
        Assert.Equal(q8, f.GetTensorBytes(f.GetTensor("q")).ToArray());
        Assert.Equal(32, f.GetTensor("q").RelativeOffset);
        Assert.Equal(0, f.DataOffset % 32);
        Assert.Equal([32L, 2L], f.GetTensor("q").Dimensions);
    }

    /// <summary>
    /// Property: any metadata (every scalar type, arrays of them, nested arrays) and any tensors (F32 vectors and
    /// matrices, Q8_0 and Q4_0 rows, every size) written read back as written, each tensor 32-byte aligned.
    /// </summary>
    [Fact]
    public unsafe void Any_file_the_writer_writes_reads_back_as_written()
    {
        Gen.Select(Gen.Int[0, 12], Gen.Int[0, 6], Gen.Int[0, int.MaxValue]).Sample((keys, tensorCount, seed) =>
        {
            var random = new Random(seed);
            GgufValue Scalar(GgufValueType t) => t switch
            {
                GgufValueType.UInt8 => new(t, (byte)random.Next(256)),
                GgufValueType.Int8 => new(t, (sbyte)random.Next(-128, 128)),
                GgufValueType.UInt16 => new(t, (ushort)random.Next(65536)),
                GgufValueType.Int16 => new(t, (short)random.Next(-32768, 32768)),
                GgufValueType.UInt32 => new(t, (uint)random.NextInt64(uint.MaxValue)),
                GgufValueType.Int32 => new(t, random.Next(int.MinValue, int.MaxValue)),
                GgufValueType.Float32 => new(t, (float)random.NextDouble() * 1e6f - 5e5f),
                GgufValueType.Bool => new(t, random.Next(2) == 1),
                GgufValueType.String => new(t, string.Concat(Enumerable.Range(0, random.Next(8)).Select(_ => Pieces[random.Next(Pieces.Length)]))),
                GgufValueType.UInt64 => new(t, (ulong)random.NextInt64() * 2),
                GgufValueType.Int64 => new(t, random.NextInt64(long.MinValue, long.MaxValue)),
                _ => new(t, random.NextDouble()),
            };
            var scalarTypes = Enum.GetValues<GgufValueType>().Where(t => t != GgufValueType.Array).ToArray();
            GgufArray ScalarArray()
            {
                var element = scalarTypes[random.Next(scalarTypes.Length)];
                var items = Enumerable.Range(0, random.Next(6)).Select(_ => Scalar(element).Value).ToArray();
                var typed = Array.CreateInstance(items.Length > 0 ? items[0].GetType() : typeof(object), items.Length);
                for (int i = 0; i < items.Length; i++) typed.SetValue(items[i], i);
                return new GgufArray(element, typed);
            }
            GgufValue Value() => random.Next(6) switch
            {
                0 => new(GgufValueType.Array, ScalarArray()),
                1 => new(GgufValueType.Array, new GgufArray(GgufValueType.Array, Enumerable.Range(0, random.Next(3)).Select(_ => ScalarArray()).ToArray())),
                _ => Scalar(scalarTypes[random.Next(scalarTypes.Length)]),
            };
            var metadata = Enumerable.Range(0, keys).Select(k => new KeyValuePair<string, GgufValue>($"key.{k}", Value())).ToList();

            var types = new[] { GgmlType.F32, GgmlType.Q8_0, GgmlType.Q4_0 };
            var tensors = new List<(string Name, GgmlType Type, long[] Dims, byte[] Bytes)>();
            for (int i = 0; i < tensorCount; i++)
            {
                var type = types[random.Next(types.Length)];
                long[] dims = type == GgmlType.F32 && random.Next(2) == 0 ? [random.Next(1, 50)] : [32L * random.Next(1, 4), random.Next(1, 5)];
                var bytes = new byte[new GgufTensorInfo("", dims, type, 0).ByteCount];
                random.NextBytes(bytes);
                tensors.Add(($"t{i}", type, dims, bytes));
            }
            var handles = tensors.Select(t => System.Runtime.InteropServices.GCHandle.Alloc(t.Bytes, System.Runtime.InteropServices.GCHandleType.Pinned)).ToList();
            string path = Path.Combine(_dir, $"{Guid.NewGuid():N}.gguf");
            try
            {
                using (var file = File.Create(path))
                    GgufWriter.Write(file, metadata, [.. tensors.Select((t, i) => new GgufTensorSource(t.Name, t.Type, t.Dims, handles[i].AddrOfPinnedObject()))]);
            }
            finally { foreach (var h in handles) h.Free(); }

            using var f = GgufFile.Open(path);
            Assert.Equal(metadata.Count, f.Metadata.Count);
            foreach (var (key, value) in metadata) Assert.Equal(Show(value), Show(f.Metadata[key]));
            Assert.Equal(tensors.Count, f.Tensors.Count);
            foreach (var t in tensors)
            {
                var info = f.GetTensor(t.Name);
                Assert.Equal(t.Type, info.Type);
                Assert.Equal(t.Dims, info.Dimensions);
                Assert.Equal(0, info.RelativeOffset % 32);
                Assert.Equal(t.Bytes, f.GetTensorBytes(info).ToArray());
            }
            File.Delete(path);
        }, iter: 60);
    }

    static readonly string[] Pieces = ["a", "é", "▁", "Ġ", "😀", " ", "\n", "\0", "東京"];

    /// <summary>A value as text with its types, nested arrays included (bit patterns for floats), to compare two.</summary>
    static string Show(GgufValue v) => v.Value switch
    {
        GgufArray a => $"{a.ElementType}[{string.Join(",", a.Items.Cast<object?>().Select(i => i is GgufArray inner ? Show(new(GgufValueType.Array, inner)) : Scalar(i)))}]",
        var o => $"{v.Type}:{Scalar(o)}",
    };

    static string Scalar(object? o) => o switch
    {
        float x => BitConverter.SingleToInt32Bits(x).ToString(System.Globalization.CultureInfo.InvariantCulture),
        double x => BitConverter.DoubleToInt64Bits(x).ToString(System.Globalization.CultureInfo.InvariantCulture),
        IFormattable x => x.ToString(null, System.Globalization.CultureInfo.InvariantCulture),
        _ => $"'{o}'",
    };

    [Fact]
    public void Writer_refuses_what_it_cannot_write()
    {
        var one = new KeyValuePair<string, GgufValue>("k", new(GgufValueType.UInt32, 1u));
        var e = Assert.Throws<ArgumentException>(() => GgufWriter.Write(Stream.Null, [one, one], []));
        Assert.Contains("metadata key 'k' appears twice", e.Message);
        e = Assert.Throws<ArgumentException>(() => GgufWriter.Write(Stream.Null, [new("k", new(GgufValueType.UInt32, "1"))], []));
        Assert.Contains("metadata 'k': a String is not a GGUF UInt32", e.Message);
        e = Assert.Throws<ArgumentException>(() => GgufWriter.Write(Stream.Null, [], [new("t", GgmlType.Q8_0, [16, 2], 0)]));
        Assert.Contains("Q8_0 rows of 16 elements are not whole blocks", e.Message);
        e = Assert.Throws<ArgumentException>(() => GgufWriter.Write(Stream.Null, [], [new("t", GgmlType.F32, [], 0)]));
        Assert.Contains("GGUF takes 1 to 4", e.Message);
    }

    public static TheoryData<string, GgmlType> Shapes() => new()
    {
        { "llama", GgmlType.F32 }, { "llama", GgmlType.F16 }, { "llama", GgmlType.BF16 }, { "llama", GgmlType.Q8_0 },
        { "llama", GgmlType.Q4_0 }, { "llama", GgmlType.Q4_K }, { "llama", GgmlType.Q6_K }, { "qwen2", GgmlType.Q8_0 }, { "qwen3", GgmlType.F16 },
    };

    [Theory]
    [MemberData(nameof(Shapes))]
    public void The_written_model_computes_the_dummys_logits_bit_for_bit(string arch, GgmlType type)
    {
        int d = type is GgmlType.Q4_K or GgmlType.Q6_K ? 256 : 64;
        var config = Small(arch, vocab: 1000, d, ff: 2 * d, headDim: arch == "qwen3" ? 32 : null);
        if (arch == "llama") config = config with { RopeFreqFactors = [.. Enumerable.Range(0, config.HeadDim / 2).Select(i => 1f + i % 3)] };
        // qwen2 has q/k/v biases, qwen3 q/k norms and a head wider than d / heads; both tie the classifier.
        using var model = DummyModelFactory.Create(new DummyPreset(config, TiedEmbeddings: arch != "llama"), $"test-{arch}", type, seed: 7);
        string path = Export(model);

        using var loaded = ModelLoader.Load(path);
        Assert.Equal(config, loaded.Config with { RopeFreqFactors = config.RopeFreqFactors });
        Assert.Equal(config.RopeFreqFactors, loaded.Config.RopeFreqFactors);
        Assert.Equal(arch == "llama", !ReferenceEquals(loaded.Weights.Output, loaded.Weights.TokenEmbedding));
        using var pool = new CpuWorkerPool(2);
        ForwardSteps.AssertSameBits(ForwardSteps.Logits(model, pool, _ => { }), ForwardSteps.Logits(loaded, pool, _ => { }), $"{arch} {type} from its GGUF");
    }

    static readonly string[] Corpus =
    [
        "Hello world", " Hello  world!\n\n\tIt's 2026; we'll see 12345 tokens.", "naïve café — 東京 😀 🇫🇷", "I'M SHOUTING, they'RE fine",
        "def f(x):\n    return x**2  # comment\r\n", "<|endoftext|> is text here", "   leading and trailing   ", "a\u00A0b\u2009c 3.14159 1,000,000",
    ];

    [Theory]
    [InlineData(32000)]  // TinyLlama's rows: the last id is <|endoftext|>
    [InlineData(100300)] // past cl100k: <|endoftext|> at 100257, the specials that fit, placeholders between
    public void The_written_vocabulary_tokenizes_as_the_dummy_does(int vocab)
    {
        using var model = DummyModelFactory.Create(new DummyPreset(Small("llama", vocab, 64, 128), TiedEmbeddings: true), "test-vocab", GgmlType.Q8_0);
        var (tokenizer, _) = ModelLoader.LoadTokenizer(Export(model));
        var expected = model.Tokenizer;
        Assert.Equal(expected.VocabSize, tokenizer.VocabSize);
        Assert.Equal(expected.EosId, tokenizer.EosId);
        Assert.Equal(expected.BosId, tokenizer.BosId);
        Assert.False(tokenizer.AddBos);
        foreach (string text in Corpus)
        {
            int[] ids = expected.Encode(text);
            Assert.Equal(ids, tokenizer.Encode(text));
            Assert.Equal(ids, tokenizer.Encode(text, addSpecial: true));
            Assert.Equal(expected.Encode(text, parseSpecial: true), tokenizer.Encode(text, parseSpecial: true));
            Assert.Equal(expected.Decode(ids), tokenizer.Decode(ids));
        }
        int eos = expected.EosId!.Value;
        Assert.Equal(expected.Decode([eos]), tokenizer.Decode([eos]));
        Assert.Equal("<|endoftext|>", tokenizer.Decode([eos], renderSpecial: true));
        if (vocab > 100257) Assert.Equal("", tokenizer.Decode([100262])); // an unused placeholder
    }

    [SkippableFact]
    public void Vocab_from_copies_another_files_tokenizer_when_the_sizes_match()
    {
        string spm = TestData.Require("arch/arch-llama-spm.gguf");
        using var vocabulary = GgufFile.Open(spm);
        using var model = DummyModelFactory.Create(new DummyPreset(Small("llama", 32000, 64, 128), TiedEmbeddings: true), "test-spm", GgmlType.Q8_0);
        using var written = GgufFile.Open(Export(model, vocabulary));
        foreach (var (key, value) in vocabulary.Metadata.Where(kv => kv.Key.StartsWith("tokenizer.", StringComparison.Ordinal)))
            Assert.Equal(value.ToString(), written.Metadata[key].ToString());
        Assert.Equal(ModelLoader.LoadTokenizer(spm).Tokenizer.Encode("Once upon a time"), ModelLoader.LoadTokenizer(written.Path).Tokenizer.Encode("Once upon a time"));

        using var wider = DummyModelFactory.Create(new DummyPreset(Small("llama", 32001, 64, 128), TiedEmbeddings: true), "test-wide", GgmlType.Q8_0);
        var e = Assert.Throws<ArgumentException>(() => Export(wider, vocabulary));
        Assert.Contains("has 32000 tokens but dummy:test-wide has 32001 vocabulary rows", e.Message);
    }

    [Fact]
    public void Export_command_writes_a_loadable_file_and_refuses_clearly()
    {
        string path = Path.Combine(_dir, "cli.gguf");
        var stdout = new StringWriter();
        Assert.Equal(0, TokenMill.Server.Cli.Cli.Run(["export", "--model", "dummy:tinyllama-1.1b", "--dummy-layers", "1", "--dtype", "q4_0", "--output", path], stdout, new StringWriter()));
        Assert.Contains("dummy:tinyllama-1.1b, Q4_0", stdout.ToString());
        using (var f = GgufFile.Open(path))
        {
            Assert.Equal("llama", f.GetString("general.architecture"));
            Assert.Equal(1, f.GetInt("llama.block_count"));
            Assert.Equal(GgmlType.Q4_0, f.GetTensor("blk.0.ffn_down.weight").Type);
            Assert.Equal([5632L, 2048L], f.GetTensor("blk.0.ffn_down.weight").Dimensions);
        }

        static (int Code, string Error) Run(params string[] args)
        {
            var stderr = new StringWriter();
            int code = TokenMill.Server.Cli.Cli.Run(["export", .. args], new StringWriter(), stderr);
            return (code, stderr.ToString());
        }
        var (code, error) = Run("--model", "dummy:tinyllama-1.1b");
        Assert.Equal(2, code);
        Assert.Contains("--output FILE.gguf is required", error);
        (code, error) = Run("--model", "model.gguf", "--output", path);
        Assert.Equal(2, code);
        Assert.Contains("--model must be a dummy:PRESET", error);
        string gemma = Path.Combine(_dir, "gemma.gguf");
        (code, error) = Run("--model", "dummy:gemma3-1b", "--dummy-layers", "1", "--dtype", "q8_0", "--output", gemma);
        Assert.Equal(1, code);
        Assert.Contains("writing gemma3 models as GGUF is not supported", error);
        Assert.False(File.Exists(gemma));
        Assert.Empty(Directory.GetFiles(_dir, "*.partial"));
    }
}
