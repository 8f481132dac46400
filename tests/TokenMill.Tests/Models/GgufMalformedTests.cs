using System.Buffers.Binary;
using TokenMill.Models.Gguf;

namespace TokenMill.Tests.Models;

/// <summary>
/// GGUF files written by <see cref="GgufTestWriter"/>: every metadata type round-trips, and each kind of
/// damage fails in <see cref="GgufFile.Open"/> with a <see cref="GgufFormatException"/> that names the
/// file and the field.
/// </summary>
public sealed class GgufMalformedTests : IDisposable
{
    readonly DirectoryInfo _dir = Directory.CreateTempSubdirectory("tokenmill-gguf-");
    int _files;

    public void Dispose() => _dir.Delete(recursive: true);

    static GgufArray Arr<T>(GgufValueType type, params T[] items) => new(type, items);

    /// <summary>Every scalar type, every array element type, nested and empty arrays.</summary>
    static readonly (string Key, GgufValueType Type, object Value)[] AllValues =
    [
        ("general.architecture", GgufValueType.String, "llama"),
        ("test.u8", GgufValueType.UInt8, (byte)200),
        ("test.i8", GgufValueType.Int8, (sbyte)-5),
        ("test.u16", GgufValueType.UInt16, (ushort)60000),
        ("test.i16", GgufValueType.Int16, (short)-30000),
        ("test.u32", GgufValueType.UInt32, 4_000_000_000u),
        ("test.i32", GgufValueType.Int32, -2_000_000_000),
        ("test.f32", GgufValueType.Float32, 1.5f),
        ("test.bool_true", GgufValueType.Bool, true),
        ("test.bool_false", GgufValueType.Bool, false),
        ("test.u64", GgufValueType.UInt64, ulong.MaxValue),
        ("test.i64", GgufValueType.Int64, long.MinValue),
        ("test.f64", GgufValueType.Float64, Math.PI),
        ("test.empty_string", GgufValueType.String, ""),
        ("test.unicode_ключ", GgufValueType.String, "béta ▁x 🙂"),
        ("test.strings", GgufValueType.Array, Arr(GgufValueType.String, "a", "béta", "")),
        ("test.u8s", GgufValueType.Array, Arr(GgufValueType.UInt8, (byte)0, (byte)255)),
        ("test.i8s", GgufValueType.Array, Arr(GgufValueType.Int8, (sbyte)-128, (sbyte)127)),
        ("test.u16s", GgufValueType.Array, Arr(GgufValueType.UInt16, (ushort)1, (ushort)65535)),
        ("test.i16s", GgufValueType.Array, Arr(GgufValueType.Int16, (short)-32768, (short)7)),
        ("test.u32s", GgufValueType.Array, Arr(GgufValueType.UInt32, 1u, uint.MaxValue)),
        ("test.i32s", GgufValueType.Array, Arr(GgufValueType.Int32, int.MinValue, 0, 42)),
        ("test.f32s", GgufValueType.Array, Arr(GgufValueType.Float32, -0.5f, float.PositiveInfinity, 1e-40f)),
        ("test.bools", GgufValueType.Array, Arr(GgufValueType.Bool, true, false, true)),
        ("test.u64s", GgufValueType.Array, Arr(GgufValueType.UInt64, 0ul, ulong.MaxValue)),
        ("test.i64s", GgufValueType.Array, Arr(GgufValueType.Int64, long.MinValue, long.MaxValue)),
        ("test.f64s", GgufValueType.Array, Arr(GgufValueType.Float64, Math.E, -0.0)),
        ("test.empty", GgufValueType.Array, Arr<int>(GgufValueType.Int32)),
        ("test.nested", GgufValueType.Array, Arr(GgufValueType.Array,
            Arr(GgufValueType.Int32, 1, 2), Arr(GgufValueType.String, "x"), Arr<float>(GgufValueType.Float32))),
        ("test.nested3", GgufValueType.Array, Arr(GgufValueType.Array,
            Arr(GgufValueType.Array, Arr(GgufValueType.UInt8, (byte)9)), Arr<GgufArray>(GgufValueType.Array))),
    ];

    static GgufTestWriter Sample(uint version = 3, uint? alignment = null)
    {
        var w = new GgufTestWriter { Version = version };
        foreach (var (key, type, value) in AllValues) w.Add(key, type, value);
        if (alignment is uint a) w.Add("general.alignment", a);
        w.AddTensor("a", GgmlType.F32, [4, 3], Enumerable.Range(0, 48).Select(i => (byte)i).ToArray());
        w.AddTensor("b", GgmlType.Q8_0, [64, 2], Enumerable.Range(0, 4 * 34).Select(i => (byte)(i * 7)).ToArray());
        w.AddTensor("c", GgmlType.Q4_K, [256], Enumerable.Range(0, 144).Select(i => (byte)(255 - i)).ToArray());
        w.AddTensor("d", GgmlType.F16, [2, 2, 2, 1], Enumerable.Range(0, 16).Select(i => (byte)(i + 100)).ToArray());
        return w;
    }

    string Save(byte[] bytes) => GgufTestWriter.Save(_dir.FullName, $"t{_files++}.gguf", bytes);

    static void AssertSameValue(object expected, object actual, string where)
    {
        if (expected is GgufArray ea)
        {
            var aa = Assert.IsType<GgufArray>(actual);
            Assert.Equal(ea.ElementType, aa.ElementType);
            Assert.True(ea.Items.Length == aa.Items.Length, $"{where}: length {aa.Items.Length}, expected {ea.Items.Length}");
            for (int i = 0; i < ea.Items.Length; i++) AssertSameValue(ea.Items.GetValue(i)!, aa.Items.GetValue(i)!, $"{where}[{i}]");
        }
        else
        {
            Assert.True(expected.GetType() == actual.GetType(), $"{where}: {actual.GetType()} instead of {expected.GetType()}");
            Assert.True(expected.Equals(actual), $"{where}: {actual} instead of {expected}");
        }
    }

    [Theory]
    [InlineData(2u, null)]
    [InlineData(3u, null)]
    [InlineData(3u, 64u)]
    [InlineData(2u, 8u)]
    [InlineData(3u, 1u)]
    public void Every_value_type_and_tensor_round_trips(uint version, uint? alignment)
    {
        var bytes = Sample(version, alignment).Build(out var layout);
        using var f = GgufFile.Open(Save(bytes));

        Assert.Equal(version, f.Version);
        Assert.Equal((int)(alignment ?? 32), f.Alignment);
        Assert.Equal(layout.DataStart, f.DataOffset);
        Assert.Equal(0, f.DataOffset % f.Alignment);

        Assert.Equal(AllValues.Length + (alignment is null ? 0 : 1), f.Metadata.Count);
        foreach (var (key, type, value) in AllValues)
        {
            Assert.True(f.Metadata.TryGetValue(key, out var v), $"missing {key}");
            Assert.Equal(type, v.Type);
            AssertSameValue(value, v.Value, key);
        }
        Assert.Equal("llama", f.GetString("general.architecture"));
        Assert.Equal(-2_000_000_000, f.GetInt("test.i32"));
        Assert.Equal(3, f.GetArray("test.nested")!.Length);

        var expected = new (string Name, GgmlType Type, long[] Dims)[]
        {
            ("a", GgmlType.F32, [4, 3]), ("b", GgmlType.Q8_0, [64, 2]), ("c", GgmlType.Q4_K, [256]), ("d", GgmlType.F16, [2, 2, 2, 1]),
        };
        Assert.Equal(expected.Length, f.Tensors.Count);
        for (int i = 0; i < expected.Length; i++)
        {
            var t = f.Tensors[i];
            Assert.Equal(expected[i].Name, t.Name);
            Assert.Equal(expected[i].Type, t.Type);
            Assert.Equal(expected[i].Dims, t.Dimensions);
            Assert.Equal(0, t.RelativeOffset % f.Alignment);
            Assert.Equal(layout.TensorData[i], f.DataOffset + t.RelativeOffset);
            Assert.True(bytes.AsSpan((int)layout.TensorData[i], (int)t.ByteCount).SequenceEqual(f.GetTensorBytes(t)), t.Name);
        }
    }

    GgufFormatException Fails(byte[] bytes)
    {
        var path = Save(bytes);
        var e = Assert.Throws<GgufFormatException>(() => GgufFile.Open(path).Dispose());
        Assert.Equal(path, e.FilePath);
        Assert.StartsWith(path + ": ", e.Message);
        return e;
    }

    static byte[] Patch32(byte[] bytes, long at, uint value)
    {
        var copy = (byte[])bytes.Clone();
        BinaryPrimitives.WriteUInt32LittleEndian(copy.AsSpan((int)at), value);
        return copy;
    }

    static byte[] Patch64(byte[] bytes, long at, ulong value)
    {
        var copy = (byte[])bytes.Clone();
        BinaryPrimitives.WriteUInt64LittleEndian(copy.AsSpan((int)at), value);
        return copy;
    }

    static int IndexOf(string key) => Array.FindIndex(AllValues, v => v.Key == key);

    [Fact]
    public void Every_truncation_fails_with_a_format_error()
    {
        // Whatever the cut, the file is short of something: the header, a value, or a tensor's data.
        var bytes = Sample().Build();
        for (int length = 0; length < bytes.Length; length++)
        {
            var e = Fails(bytes[..length]);
            Assert.False(string.IsNullOrEmpty(e.Field), $"cut at {length}: no field named");
        }
    }

    [Fact]
    public void Truncation_names_the_field_it_cut()
    {
        var bytes = Sample().Build(out var layout);
        var strings = layout.Metadata[IndexOf("test.strings")];
        var nested = layout.Metadata[IndexOf("test.nested")];
        var cuts = new (long Length, string Field, string Problem)[]
        {
            (4, "header", "truncated"),                             // inside the header: not even magic + version
            (6, "header", "truncated"),
            (12, "tensor_count", "truncated"),
            (20, "metadata_kv_count", "truncated"),
            (layout.Metadata[1].Key + 3, "metadata[1].key length", "truncated"),    // inside a key's length
            (layout.Metadata[1].Key + 8 + 3, "metadata[1].key", "truncated"),       // inside a key's text
            (layout.Metadata[1].Type + 2, "metadata 'test.u8' type", "truncated"),
            (strings.Value + 2, "metadata 'test.strings' element type", "truncated"),
            (strings.Value + 4 + 5, "metadata 'test.strings' length", "truncated"),
            (strings.Value + 4 + 8 + 5, "metadata 'test.strings'", "truncated"),    // inside the array's items
            // Inside the third inner array of test.nested ([1, 2] and ["x"] take 20 and 21 bytes).
            (nested.Value + 4 + 8 + 20 + 21 + 6, "metadata 'test.nested'[2] length", "truncated"),
            (layout.TensorInfos[0].Name + 8, "tensor[0].name", "truncated"),
            (layout.TensorInfos[1].Dimensions + 12, "tensor 'b' dimension 1", "truncated"),
            (layout.TensorInfos[2].Type + 1, "tensor 'c' type", "truncated"),
            (layout.TensorInfos[3].Offset + 7, "tensor 'd' offset", "truncated"),
            (layout.TensorData[2] + 10, "tensor 'c' data", "past the end of the file"),
            (bytes.Length - 1, "tensor 'd' data", "past the end of the file"),
        };
        foreach (var (length, field, problem) in cuts)
        {
            var e = Fails(bytes[..(int)length]);
            Assert.True(field == e.Field, $"cut at {length}: field '{e.Field}', expected '{field}' ({e.Message})");
            Assert.Contains(problem, e.Message);
        }
    }

    [Theory]
    [InlineData("GGUG")]
    [InlineData("FUGG")]
    [InlineData("\0\0\0\0")]
    public void Bad_magic_is_not_a_GGUF_file(string magic)
    {
        var bytes = Sample().Build();
        System.Text.Encoding.ASCII.GetBytes(magic).CopyTo(bytes, 0);
        var e = Fails(bytes);
        Assert.Equal("magic", e.Field);
        Assert.Contains("not a GGUF file", e.Message);
    }

    [Theory]
    [InlineData(1u)]
    [InlineData(4u)]
    [InlineData(0x03000000u)] // a big-endian v3 file read as little-endian
    public void Unknown_versions_are_refused(uint version)
    {
        var e = Fails(Patch32(Sample().Build(), 4, version));
        Assert.Equal("version", e.Field);
        Assert.Contains($"unsupported GGUF version {version}", e.Message);
    }

    [Theory]
    [InlineData(13u)]
    [InlineData(99u)]
    [InlineData(uint.MaxValue)]
    public void Unknown_metadata_value_type_is_refused(uint type)
    {
        var bytes = Sample().Build(out var layout);
        var e = Fails(Patch32(bytes, layout.Metadata[IndexOf("test.i16")].Type, type));
        Assert.Equal("metadata 'test.i16'", e.Field);
        Assert.Contains($"unknown metadata value type {type}", e.Message);
    }

    [Fact]
    public void Unknown_array_element_type_is_refused()
    {
        var bytes = Sample().Build(out var layout);
        var e = Fails(Patch32(bytes, layout.Metadata[IndexOf("test.u16s")].Value, 77));
        Assert.Equal("metadata 'test.u16s'", e.Field);
        Assert.Contains("unknown array element type 77", e.Message);
    }

    [Fact]
    public void A_bool_other_than_0_or_1_is_refused()
    {
        var bytes = Sample().Build(out var layout);
        bytes[layout.Metadata[IndexOf("test.bool_true")].Value] = 2;
        var e = Fails(bytes);
        Assert.Equal("metadata 'test.bool_true'", e.Field);
        Assert.Contains("bool must be 0 or 1, got 2", e.Message);
    }

    [Theory]
    [InlineData(4u)]   // GGML_TYPE_Q4_2, removed long ago
    [InlineData(31u)]
    [InlineData(1000u)]
    public void Unknown_tensor_type_is_refused(uint type)
    {
        var bytes = Sample().Build(out var layout);
        var e = Fails(Patch32(bytes, layout.TensorInfos[1].Type, type));
        Assert.Equal("tensor 'b' type", e.Field);
        Assert.Contains($"unknown or unsupported tensor type {type}", e.Message);
    }

    [Fact]
    public void Tensor_data_past_the_end_of_the_file_is_refused()
    {
        var bytes = Sample().Build(out var layout);
        // An offset far past the end…
        var e = Fails(Patch64(bytes, layout.TensorInfos[3].Offset, 1 << 20));
        Assert.Equal("tensor 'd' data", e.Field);
        Assert.Contains("past the end of the file", e.Message);
        // …one so large that offset + size would overflow…
        e = Fails(Patch64(bytes, layout.TensorInfos[3].Offset, ulong.MaxValue - 31));
        Assert.Equal("tensor 'd' offset", e.Field);
        Assert.Contains($"{ulong.MaxValue - 31} lies past the end of the file", e.Message);
        // …and dimensions whose data runs past the end.
        e = Fails(Patch64(bytes, layout.TensorInfos[0].Dimensions, 4000));
        Assert.Equal("tensor 'a' data", e.Field);
        Assert.Contains($"the file is truncated or corrupt", e.Message);
    }

    [Fact]
    public void Misaligned_tensor_offset_is_refused()
    {
        var bytes = Sample(alignment: 64).Build(out var layout);
        ulong offset = BinaryPrimitives.ReadUInt64LittleEndian(bytes.AsSpan((int)layout.TensorInfos[1].Offset));
        var e = Fails(Patch64(bytes, layout.TensorInfos[1].Offset, offset + 32)); // aligned to 32, not to 64
        Assert.Equal("tensor 'b' offset", e.Field);
        Assert.Contains($"{offset + 32} is not a multiple of the alignment 64", e.Message);
    }

    [Theory]
    [InlineData(0u)]
    [InlineData(48u)]
    [InlineData(33u)]
    [InlineData(0x80000000u)]
    public void Non_power_of_two_alignment_is_refused(uint alignment)
    {
        var bytes = Sample(alignment: 32).Build(out var layout);
        var e = Fails(Patch32(bytes, layout.Metadata[^1].Value, alignment));
        Assert.Equal("general.alignment", e.Field);
        Assert.Contains($"must be a power of two (at most 1048576), got {alignment}", e.Message);
    }

    [Fact]
    public void Alignment_of_the_wrong_type_is_refused()
    {
        var w = new GgufTestWriter().Add("general.alignment", GgufValueType.String, "32");
        var e = Fails(w.Build());
        Assert.Equal("general.alignment", e.Field);
    }

    [Fact]
    public void Huge_string_lengths_are_refused_before_allocating()
    {
        var bytes = Sample().Build(out var layout);
        // Key length: absurd, and merely longer than the file.
        var e = Fails(Patch64(bytes, layout.Metadata[0].Key, ulong.MaxValue));
        Assert.Equal("metadata[0].key", e.Field);
        Assert.Contains($"string length {ulong.MaxValue} is implausible", e.Message);
        e = Fails(Patch64(bytes, layout.Metadata[0].Key, 1 << 20));
        Assert.Equal("metadata[0].key", e.Field);
        Assert.Contains("truncated", e.Message);
        // A string value and a tensor name.
        e = Fails(Patch64(bytes, layout.Metadata[0].Value, 1UL << 40));
        Assert.Equal("metadata 'general.architecture'", e.Field);
        e = Fails(Patch64(bytes, layout.TensorInfos[2].Name, 1UL << 62));
        Assert.Equal("tensor[2].name", e.Field);
        // A string inside an array.
        var strings = layout.Metadata[IndexOf("test.strings")];
        e = Fails(Patch64(bytes, strings.Value + 4 + 8, 1UL << 50));
        Assert.Equal("metadata 'test.strings'[0]", e.Field);
    }

    [Theory]
    [InlineData("test.strings")]
    [InlineData("test.u64s")]
    [InlineData("test.bools")]
    [InlineData("test.nested")]
    public void Huge_array_counts_are_refused_before_allocating(string key)
    {
        var bytes = Sample().Build(out var layout);
        long countAt = layout.Metadata[IndexOf(key)].Value + 4;
        var e = Fails(Patch64(bytes, countAt, 1UL << 60));
        Assert.Equal($"metadata '{key}' length", e.Field);
        Assert.Contains("larger than the file could hold", e.Message);
        // A count the file length allows but its remaining bytes cannot hold.
        e = Fails(Patch64(bytes, countAt, (ulong)bytes.Length - 1));
        Assert.StartsWith($"metadata '{key}'", e.Field);
        Assert.Contains("truncated", e.Message);
    }

    [Fact]
    public void Huge_header_counts_are_refused()
    {
        var bytes = Sample().Build();
        var e = Fails(Patch64(bytes, 8, 1UL << 40));
        Assert.Equal("tensor_count", e.Field);
        e = Fails(Patch64(bytes, 16, ulong.MaxValue));
        Assert.Equal("metadata_kv_count", e.Field);
    }

    [Fact]
    public void Bad_tensor_shapes_are_refused()
    {
        var bytes = Sample().Build(out var layout);
        var e = Fails(Patch32(bytes, layout.TensorInfos[0].Dimensions - 4, 9)); // n_dimensions
        Assert.Equal("tensor 'a' n_dimensions", e.Field);
        // Rows of 48 Q8_0 elements: 96 elements in all would be 3 whole blocks, but a row must be whole blocks.
        e = Fails(Patch64(bytes, layout.TensorInfos[1].Dimensions, 48));
        Assert.Equal("tensor 'b' dimensions", e.Field);
        Assert.Contains("row length 48 is not a whole number of Q8_0 blocks (32 elements each)", e.Message);
        e = Fails(Patch64(bytes, layout.TensorInfos[1].Dimensions, ulong.MaxValue));
        Assert.Equal("tensor 'b' dimension 0", e.Field);
        e = Fails(Patch64(Patch64(bytes, layout.TensorInfos[3].Dimensions, 1L << 40), layout.TensorInfos[3].Dimensions + 8, 1L << 40));
        Assert.Equal("tensor 'd' dimensions", e.Field); // the element count overflows
        Assert.Contains("more bytes than a 64-bit size can count", e.Message);
    }

    static GgufArray NestedArray(int depth) =>
        depth == 1 ? Arr(GgufValueType.UInt8, (byte)7) : Arr(GgufValueType.Array, NestedArray(depth - 1));

    [Fact]
    public void Arrays_nested_past_MaxArrayNesting_are_refused_before_the_stack_overflows()
    {
        var w = new GgufTestWriter().Add("test.deep", NestedArray(GgufFile.MaxArrayNesting));
        using (var f = GgufFile.Open(Save(w.Build())))
        {
            var a = f.GetArray("test.deep")!;
            for (int d = 1; d < GgufFile.MaxArrayNesting; d++) a = (GgufArray)a.Items.GetValue(0)!;
            Assert.Equal([(byte)7], (byte[])a.Items);
        }
        var e = Fails(new GgufTestWriter().Add("test.deep", NestedArray(GgufFile.MaxArrayNesting + 1)).Build());
        Assert.Equal("metadata 'test.deep'" + string.Concat(Enumerable.Repeat("[0]", GgufFile.MaxArrayNesting)), e.Field);
        Assert.Contains($"arrays nested more than {GgufFile.MaxArrayNesting} deep", e.Message);

        // A million levels, 12 bytes each, written by hand: read recursively without the limit, this ends the process.
        var bytes = new List<byte>();
        void U32(uint v) => bytes.AddRange(BitConverter.GetBytes(v));
        void U64(ulong v) => bytes.AddRange(BitConverter.GetBytes(v));
        U32(GgufFile.Magic); U32(3); U64(0); U64(1);
        U64(4); bytes.AddRange("deep"u8.ToArray());
        U32((uint)GgufValueType.Array);
        for (int i = 0; i < 1_000_000; i++) { U32((uint)GgufValueType.Array); U64(1); }
        Assert.Contains("arrays nested more than", Fails(bytes.ToArray()).Message);
    }

    [Fact]
    public void Duplicate_tensor_names_are_refused()
    {
        var w = new GgufTestWriter();
        w.AddTensor("x", GgmlType.F32, [2], new byte[8]).AddTensor("x", GgmlType.F32, [2], new byte[8]);
        var e = Fails(w.Build());
        Assert.Equal("tensor 'x'", e.Field);
        Assert.Contains("duplicate tensor name", e.Message);
    }

    [Fact]
    public void Control_characters_in_a_name_are_escaped_in_the_message()
    {
        // A crafted name must not put a line break or a terminal escape sequence into a log line.
        const string name = "x\n\u001b[31mred\0";
        var w = new GgufTestWriter();
        w.AddTensor(name, GgmlType.F32, [2], new byte[8]).AddTensor(name, GgmlType.F32, [2], new byte[8]);
        var e = Fails(w.Build());
        Assert.Equal($"tensor '{name}'", e.Field);
        Assert.Contains("tensor 'x\\x0A\\x1B[31mred\\x00': duplicate tensor name", e.Message);
        Assert.DoesNotContain(e.Message, c => char.IsControl(c));
    }
}
