using System.Buffers.Binary;
using TokenMill.Models;
using TokenMill.Models.Gguf;
using TokenMill.Models.Safetensors;

namespace TokenMill.Tests.Models;

/// <summary>
/// Safetensors files written by <see cref="SafetensorsTestWriter"/>: tensors read back in place, shards
/// found through the index, and each kind of damage rejected when the file is opened with a
/// <see cref="SafetensorsFormatException"/> naming the file and the tensor or field.
/// </summary>
public sealed class SafetensorsFileTests : IDisposable
{
    readonly DirectoryInfo _dir = Directory.CreateTempSubdirectory("tokenmill-st-");
    int _files;

    public void Dispose() => _dir.Delete(recursive: true);

    string Save(byte[] bytes, string? name = null)
    {
        string path = Path.Combine(_dir.FullName, name ?? $"t{_files++}.safetensors");
        File.WriteAllBytes(path, bytes);
        return path;
    }

    static readonly float[] Six = [1f, -2f, 3.5f, 0.25f, -0f, 1e-3f];

    [Fact]
    public unsafe void Tensors_and_metadata_round_trip_in_place()
    {
        var w = new SafetensorsTestWriter()
            .AddF32("a.weight", [2, 3], Six)
            .AddBF16("b.weight", [3, 2], Six)
            .Add("empty", "F16", [0, 4], []);
        string path = Save(w.Build());
        using var f = SafetensorsFile.Open(path);
        Assert.Equal("pt", f.Metadata["format"]);
        Assert.Equal(3, f.Tensors.Count);
        var a = f.GetTensor("a.weight");
        Assert.Equal([2L, 3L], a.Shape);
        Assert.Equal(Six, System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(f.GetTensorBytes(a)).ToArray());
        var b = f.GetTensor("b.weight");
        Assert.Equal("BF16", b.DType);
        Assert.Equal(12, b.ByteCount);
        Assert.Equal(f.DataOffset + 24, f.GetTensorPointer(b) - f.GetTensorPointer(a) + f.DataOffset);
    }

    [Fact]
    public void Checkpoint_views_matrices_in_their_dtype_and_converts_vectors()
    {
        Save(new SafetensorsTestWriter().AddBF16("m", [2, 3], Six).AddBF16("v", [6], Six).Build(), "model.safetensors");
        using var c = SafetensorsCheckpoint.Open(_dir.FullName);
        var m = c.Matrix("m", 2, 3);
        Assert.Equal(GgmlType.BF16, m.Type);
        Assert.Equal((2L, 3L), (m.Rows, m.Columns));
        var v = c.Vector("v", 6)!;
        for (int i = 0; i < 6; i++) Assert.Equal(SafetensorsTestWriter.FromBF16(SafetensorsTestWriter.ToBF16(Six[i])), v[i]);
        Assert.Null(c.Vector("absent", 6, optional: true));
    }

    [Fact]
    public void Sharded_checkpoint_finds_each_tensor_in_the_shard_the_index_names()
    {
        Save(new SafetensorsTestWriter().AddF32("x", [2], [1f, 2f]).Build(), "model-00001-of-00002.safetensors");
        Save(new SafetensorsTestWriter().AddF32("y", [3], [3f, 4f, 5f]).Build(), "model-00002-of-00002.safetensors");
        File.WriteAllText(Path.Combine(_dir.FullName, "model.safetensors.index.json"),
            """{"metadata":{"total_size":20},"weight_map":{"x":"model-00001-of-00002.safetensors","y":"model-00002-of-00002.safetensors"}}""");
        using var c = SafetensorsCheckpoint.Open(_dir.FullName);
        Assert.Equal(2, c.Files.Count);
        Assert.Equal([1f, 2f], c.Vector("x", 2)!);
        Assert.Equal([3f, 4f, 5f], c.Vector("y", 3)!);
        Assert.EndsWith("model-00002-of-00002.safetensors", c.Get("y").File.Path);
    }

    [Fact]
    public void Index_naming_a_missing_shard_or_a_tensor_the_shard_lacks_is_refused()
    {
        Save(new SafetensorsTestWriter().AddF32("x", [2], [1f, 2f]).Build(), "a.safetensors");
        string index = Path.Combine(_dir.FullName, "model.safetensors.index.json");

        File.WriteAllText(index, """{"weight_map":{"x":"a.safetensors","y":"b.safetensors"}}""");
        var missing = Assert.Throws<FileNotFoundException>(() => SafetensorsCheckpoint.Open(_dir.FullName));
        Assert.Contains("b.safetensors", missing.Message);

        File.WriteAllText(index, """{"weight_map":{"x":"a.safetensors","y":"a.safetensors"}}""");
        var lacks = Assert.Throws<SafetensorsFormatException>(() => SafetensorsCheckpoint.Open(_dir.FullName));
        Assert.Contains("weight_map['y']", lacks.Message);
        Assert.Contains(index, lacks.Message);

        File.WriteAllText(index, """{"weight_map":{"x":"../a.safetensors"}}""");
        var escape = Assert.Throws<SafetensorsFormatException>(() => SafetensorsCheckpoint.Open(_dir.FullName));
        Assert.Contains("same folder", escape.Message);

        File.WriteAllText(index, """{"weight_map": 3}""");
        Assert.Contains("weight_map", Assert.Throws<SafetensorsFormatException>(() => SafetensorsCheckpoint.Open(_dir.FullName)).Message);
    }

    [Fact]
    public void Folder_without_weights_says_what_it_looked_for()
    {
        var e = Assert.Throws<FileNotFoundException>(() => SafetensorsCheckpoint.Open(_dir.FullName));
        Assert.Contains("model.safetensors", e.Message);
    }

    /// <summary>Each malformed header, and the words its message must contain besides the file's path.</summary>
    public static TheoryData<string, string, string[]> MalformedHeaders => new()
    {
        { "not JSON", "{\"a\": ", ["header", "not valid JSON"] },
        { "array root", "[1, 2]", ["header", "must be a JSON object"] },
        { "tensor not an object", """{"w": 3}""", ["tensor 'w'", "must be an object"] },
        { "missing dtype", """{"w": {"shape": [1], "data_offsets": [0, 4]}}""", ["tensor 'w' dtype", "missing"] },
        { "missing shape", """{"w": {"dtype": "F32", "data_offsets": [0, 4]}}""", ["tensor 'w' shape", "missing"] },
        { "negative dimension", """{"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}""", ["tensor 'w' shape[0]", "non-negative integer"] },
        { "fractional dimension", """{"w": {"dtype": "F32", "shape": [1.5], "data_offsets": [0, 4]}}""", ["tensor 'w' shape[0]", "1.5"] },
        { "too many dimensions", """{"w": {"dtype": "F32", "shape": [1,1,1,1,1,1,1,1,1], "data_offsets": [0, 4]}}""", ["tensor 'w' shape", "9 dimensions"] },
        { "one offset", """{"w": {"dtype": "F32", "shape": [1], "data_offsets": [0]}}""", ["tensor 'w' data_offsets", "two offsets"] },
        { "negative offset", """{"w": {"dtype": "F32", "shape": [1], "data_offsets": [-4, 0]}}""", ["tensor 'w' data_offsets", "begin"] },
        { "end before begin", """{"w": {"dtype": "F32", "shape": [0], "data_offsets": [4, 0]}}""", ["tensor 'w' data_offsets", "end 0 is before begin 4"] },
        { "past the end", """{"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}""", ["tensor 'w' data_offsets", "past the end of the data section (8 bytes)"] },
        { "size mismatch", """{"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}""", ["tensor 'w' data_offsets", "8 bytes, but shape [3] of F32 needs 12"] },
        { "overflowing shape", """{"w": {"dtype": "F32", "shape": [4611686018427387904, 4], "data_offsets": [0, 8]}}""", ["tensor 'w' shape", "more elements"] },
        { "overlap", """{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}""", ["tensor 'b'", "overlap tensor 'a'"] },
        { "duplicate", """{"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, "w": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}""", ["tensor 'w'", "twice"] },
        { "unknown field", """{"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4], "stride": 1}}""", ["tensor 'w'", "unknown field 'stride'"] },
        { "metadata not strings", """{"__metadata__": {"format": 1}}""", ["__metadata__.format", "must be a string"] },
    };

    [Theory]
    [MemberData(nameof(MalformedHeaders))]
    public void Malformed_header_names_the_file_and_the_tensor(string what, string header, string[] words)
    {
        string path = Save(SafetensorsTestWriter.Raw(header, new byte[8]));
        var e = Assert.Throws<SafetensorsFormatException>(() => SafetensorsFile.Open(path));
        Assert.StartsWith(path + ": ", e.Message);
        foreach (var word in words) Assert.True(e.Message.Contains(word, StringComparison.Ordinal), $"{what}: '{e.Message}' lacks '{word}'");
    }

    [Fact]
    public void Truncated_or_oversized_header_length_is_refused()
    {
        string tiny = Save([1, 2, 3]);
        Assert.Contains("truncated (3 bytes", Assert.Throws<SafetensorsFormatException>(() => SafetensorsFile.Open(tiny)).Message);

        var bytes = SafetensorsTestWriter.Raw("{}", []);
        BinaryPrimitives.WriteUInt64LittleEndian(bytes, 1000);
        string longer = Save(bytes);
        var e = Assert.Throws<SafetensorsFormatException>(() => SafetensorsFile.Open(longer));
        Assert.Contains("header length: 1000 bytes but only 2 follow", e.Message);

        BinaryPrimitives.WriteUInt64LittleEndian(bytes, ulong.MaxValue);
        string huge = Save(bytes);
        Assert.Contains("limit", Assert.Throws<SafetensorsFormatException>(() => SafetensorsFile.Open(huge)).Message);
    }

    [Fact]
    public void Header_that_is_not_UTF8_is_refused()
    {
        var bytes = SafetensorsTestWriter.Raw("""{"w#": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}""", new byte[4]);
        bytes[8 + 3] = 0xB0; // a lone continuation byte in the tensor's name
        string path = Save(bytes);
        Assert.Equal($"{path}: header: is not valid UTF-8", Assert.Throws<SafetensorsFormatException>(() => SafetensorsFile.Open(path)).Message);
    }

    [Fact]
    public void Unknown_dtype_is_not_supported_naming_file_and_tensor()
    {
        string path = Save(SafetensorsTestWriter.Raw("""{"w": {"dtype": "F4_E2M1", "shape": [2], "data_offsets": [0, 1]}}""", new byte[1]));
        var e = Assert.Throws<NotSupportedException>(() => SafetensorsFile.Open(path));
        Assert.Contains(path, e.Message);
        Assert.Contains("tensor 'w'", e.Message);
        Assert.Contains("F4_E2M1", e.Message);
    }

    [Fact]
    public void Weight_of_another_dtype_or_shape_than_the_model_needs_is_refused_naming_file_and_tensor()
    {
        string path = Save(new SafetensorsTestWriter()
            .Add("ids", "I64", [2], new byte[16])
            .AddF32("m", [2, 3], Six)
            .AddF32("v", [6], Six).Build(), "model.safetensors");
        using var c = SafetensorsCheckpoint.Open(_dir.FullName);

        var dtype = Assert.Throws<NotSupportedException>(() => c.Vector("ids", 2));
        Assert.Equal($"{path}: tensor 'ids': dtype I64 is not supported (supported: F32, F16, BF16)", dtype.Message);

        var shape = Assert.Throws<SafetensorsFormatException>(() => c.Matrix("m", 3, 2));
        Assert.Equal($"{path}: tensor 'm' shape: expected [3, 2] for this model's config, found [2, 3]", shape.Message);
        Assert.Contains("expected [5]", Assert.Throws<SafetensorsFormatException>(() => c.Vector("v", 5)).Message);
        Assert.Contains("tensor 'nope': missing", Assert.Throws<SafetensorsFormatException>(() => c.Matrix("nope", 1, 1)).Message);
    }
}
