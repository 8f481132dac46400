using TokenMill.Memory;
using System.Text.Json;
using TokenMill.Models.Gguf;

namespace TokenMill.Models.Safetensors;

/// <summary>
/// One <c>.safetensors</c> file: an 8-byte little-endian header length, a JSON header
/// (<c>{"name": {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {…}}</c>), then the
/// tensor data, memory-mapped read-only. The header is validated in full when the file is opened —
/// every tensor's byte range lies inside the data section, no two ranges overlap, and each range is
/// exactly product(shape) × the dtype's size — so a malformed file fails here with a
/// <see cref="SafetensorsFormatException"/> naming the file and tensor, never later with a wild read.
/// </summary>
public sealed unsafe class SafetensorsFile : IDisposable
{
    /// <summary>The format's own limit on the JSON header (the reference implementation refuses larger ones).</summary>
    public const long MaxHeaderBytes = 100L * 1024 * 1024;

    const int MaxDimensions = 8;

    readonly MappedFile? _mapping; // null for an image parsed from memory
    readonly byte* _base;
    readonly Dictionary<string, SafetensorsTensorInfo> _tensors;
    bool _disposed;

    SafetensorsFile(string path, MappedFile? mapping, byte* basePtr, long length)
    {
        Path = path;
        _mapping = mapping;
        _base = basePtr;
        Length = length;

        if (length < 8)
            throw new SafetensorsFormatException(path, "header length", $"file is truncated ({length} bytes; the header length alone takes 8)");
        ulong headerLength = *(ulong*)basePtr; // little-endian on every platform .NET runs on here (x64, arm64)
        if (headerLength > MaxHeaderBytes)
            throw new SafetensorsFormatException(path, "header length", $"{headerLength} bytes is larger than the format's limit of {MaxHeaderBytes}");
        if ((long)headerLength > length - 8)
            throw new SafetensorsFormatException(path, "header length",
                $"{headerLength} bytes but only {length - 8} follow; the file is truncated or not a safetensors file");
        DataOffset = 8 + (long)headerLength;
        long dataLength = length - DataOffset;

        var headerBytes = new ReadOnlySpan<byte>(basePtr + 8, (int)headerLength);
        // The JSON reader accepts bad UTF-8 inside strings and fails only when a name is read, with an exception of its own.
        if (!System.Text.Unicode.Utf8.IsValid(headerBytes))
            throw new SafetensorsFormatException(path, "header", "is not valid UTF-8");
        JsonDocument doc;
        try
        {
            doc = JsonDocument.Parse(new ReadOnlyMemory<byte>(headerBytes.ToArray()));
        }
        catch (JsonException e)
        {
            throw new SafetensorsFormatException(path, "header", $"not valid JSON: {e.Message}");
        }
        using (doc)
        {
            if (doc.RootElement.ValueKind != JsonValueKind.Object)
                throw new SafetensorsFormatException(path, "header", $"must be a JSON object, found {doc.RootElement.ValueKind}");

            var metadata = new Dictionary<string, string>(StringComparer.Ordinal);
            _tensors = new Dictionary<string, SafetensorsTensorInfo>(StringComparer.Ordinal);
            foreach (var entry in doc.RootElement.EnumerateObject())
            {
                if (entry.Name == "__metadata__")
                {
                    if (entry.Value.ValueKind != JsonValueKind.Object)
                        throw new SafetensorsFormatException(path, "__metadata__", $"must be an object of strings, found {entry.Value.ValueKind}");
                    foreach (var m in entry.Value.EnumerateObject())
                    {
                        if (m.Value.ValueKind != JsonValueKind.String)
                            throw new SafetensorsFormatException(path, $"__metadata__.{m.Name}", $"must be a string, found {m.Value.ValueKind}");
                        metadata[m.Name] = m.Value.GetString()!;
                    }
                    continue;
                }
                var info = ParseTensor(path, entry, dataLength);
                if (!_tensors.TryAdd(info.Name, info))
                    throw new SafetensorsFormatException(path, $"tensor '{info.Name}'", "appears twice in the header");
            }
            Metadata = metadata;
        }

        // Sorted by start, each range must begin at or after the previous one's end.
        SafetensorsTensorInfo? previous = null;
        foreach (var t in _tensors.Values.Where(t => t.ByteCount > 0).OrderBy(t => t.Begin).ThenBy(t => t.End))
        {
            if (previous is not null && t.Begin < previous.End)
                throw new SafetensorsFormatException(path, $"tensor '{t.Name}'",
                    $"bytes {t.Begin}..{t.End} overlap tensor '{previous.Name}' (bytes {previous.Begin}..{previous.End})");
            previous = t;
        }
    }

    static SafetensorsTensorInfo ParseTensor(string path, JsonProperty entry, long dataLength)
    {
        string field = $"tensor '{entry.Name}'";
        var v = entry.Value;
        if (v.ValueKind != JsonValueKind.Object)
            throw new SafetensorsFormatException(path, field, $"must be an object with dtype, shape and data_offsets, found {v.ValueKind}");

        if (!v.TryGetProperty("dtype", out var dtypeElement) || dtypeElement.ValueKind != JsonValueKind.String)
            throw new SafetensorsFormatException(path, field + " dtype", "missing or not a string");
        string dtype = dtypeElement.GetString()!;
        int elementSize = ElementSize(dtype)
            ?? throw new NotSupportedException($"{path}: {field}: dtype '{dtype}' is not a safetensors dtype this reader knows");

        if (!v.TryGetProperty("shape", out var shapeElement) || shapeElement.ValueKind != JsonValueKind.Array)
            throw new SafetensorsFormatException(path, field + " shape", "missing or not an array");
        if (shapeElement.GetArrayLength() > MaxDimensions)
            throw new SafetensorsFormatException(path, field + " shape", $"{shapeElement.GetArrayLength()} dimensions (at most {MaxDimensions})");
        var shape = new long[shapeElement.GetArrayLength()];
        int d = 0;
        foreach (var dim in shapeElement.EnumerateArray())
        {
            if (dim.ValueKind != JsonValueKind.Number || !dim.TryGetInt64(out long n) || n < 0)
                throw new SafetensorsFormatException(path, $"{field} shape[{d}]", $"must be a non-negative integer, found {dim.GetRawText()}");
            shape[d++] = n;
        }

        if (!v.TryGetProperty("data_offsets", out var offsets) || offsets.ValueKind != JsonValueKind.Array || offsets.GetArrayLength() != 2)
            throw new SafetensorsFormatException(path, field + " data_offsets", "missing or not an array of two offsets");
        long begin = Offset(path, field, offsets[0], "begin"), end = Offset(path, field, offsets[1], "end");
        if (end < begin)
            throw new SafetensorsFormatException(path, field + " data_offsets", $"end {end} is before begin {begin}");
        if (end > dataLength)
            throw new SafetensorsFormatException(path, field + " data_offsets",
                $"bytes {begin}..{end} lie past the end of the data section ({dataLength} bytes); the file is truncated or corrupt");

        foreach (var p in v.EnumerateObject())
            if (p.Name is not ("dtype" or "shape" or "data_offsets"))
                throw new SafetensorsFormatException(path, field, $"unknown field '{p.Name}'");

        var info = new SafetensorsTensorInfo(entry.Name, dtype, shape, begin, end);
        long expected;
        try
        {
            expected = checked(info.ElementCount * elementSize);
        }
        catch (OverflowException)
        {
            throw new SafetensorsFormatException(path, field + " shape", $"{info.ShapeText} holds more elements than a file can");
        }
        if (expected != info.ByteCount)
            throw new SafetensorsFormatException(path, field + " data_offsets",
                $"{info.ByteCount} bytes, but shape {info.ShapeText} of {dtype} needs {expected}");
        return info;
    }

    static long Offset(string path, string field, JsonElement e, string which) =>
        e.ValueKind == JsonValueKind.Number && e.TryGetInt64(out long n) && n >= 0
            ? n
            : throw new SafetensorsFormatException(path, $"{field} data_offsets", $"{which} must be a non-negative integer, found {e.GetRawText()}");

    /// <summary>Bytes per element of every dtype of the safetensors specification; null for a name it does not define.</summary>
    public static int? ElementSize(string dtype) => dtype switch
    {
        "BOOL" or "U8" or "I8" or "F8_E5M2" or "F8_E4M3" => 1,
        "I16" or "U16" or "F16" or "BF16" => 2,
        "I32" or "U32" or "F32" => 4,
        "I64" or "U64" or "F64" => 8,
        _ => null,
    };

    /// <summary>The engine's type for a dtype its kernels run (F32, F16, BF16), or null.</summary>
    public static GgmlType? GgmlTypeOf(string dtype) => dtype switch
    {
        "F32" => GgmlType.F32,
        "F16" => GgmlType.F16,
        "BF16" => GgmlType.BF16,
        _ => null,
    };

    public string Path { get; }
    public long Length { get; }

    /// <summary>Absolute offset of the data section (8 + the header's length).</summary>
    public long DataOffset { get; }

    public IReadOnlyDictionary<string, string> Metadata { get; private set; } = null!;
    public IReadOnlyCollection<SafetensorsTensorInfo> Tensors => _tensors.Values;

    public bool TryGetTensor(string name, out SafetensorsTensorInfo info) => _tensors.TryGetValue(name, out info!);

    public SafetensorsTensorInfo GetTensor(string name) =>
        _tensors.TryGetValue(name, out var t) ? t : throw new SafetensorsFormatException(Path, $"tensor '{name}'", "missing");

    /// <summary>Pointer to a tensor's first byte inside the mapping (valid until the file is disposed).</summary>
    public byte* GetTensorPointer(SafetensorsTensorInfo tensor)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        return _base + DataOffset + tensor.Begin;
    }

    public ReadOnlySpan<byte> GetTensorBytes(SafetensorsTensorInfo tensor)
    {
        if (tensor.ByteCount > int.MaxValue)
            throw new NotSupportedException($"{Path}: tensor '{tensor.Name}' is larger than 2 GiB; use {nameof(GetTensorPointer)}");
        return new ReadOnlySpan<byte>(GetTensorPointer(tensor), (int)tensor.ByteCount);
    }

    /// <summary>
    /// Parses a safetensors image already in memory (the caller keeps it alive and pinned while the result is used):
    /// the same checks as <see cref="Open"/>, for fuzzing.
    /// </summary>
    public static SafetensorsFile Parse(string name, byte* data, long length) => new(name, null, data, length);

    /// <summary>Opens and validates a file; the tensor data stays mapped until <see cref="Dispose"/>.</summary>
    public static SafetensorsFile Open(string path)
    {
        var info = MappedFile.Stat(path);
        if (!info.Exists) throw new FileNotFoundException($"{path}: no such file", path);
        if (info.Length < 8)
            throw new SafetensorsFormatException(path, "header length", $"file is truncated ({info.Length} bytes; the header length alone takes 8)");

        var mapping = MappedFile.Open(path, info.Length);
        try
        {
            return new SafetensorsFile(path, mapping, mapping.Pointer, mapping.Length);
        }
        catch
        {
            mapping.Dispose();
            throw;
        }
    }

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        _mapping?.Dispose();
    }
}
