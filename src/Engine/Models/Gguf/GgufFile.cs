using TokenMill.Memory;
using System.Text;

namespace TokenMill.Models.Gguf;

/// <summary>
/// A GGUF v2/v3 file: its metadata, its tensor infos, and its tensor data memory-mapped read-only.
/// Every read of the header is bounds-checked against the file's length, and every tensor's data
/// range is checked to lie inside the file, so a malformed file fails here with a
/// <see cref="GgufFormatException"/> that names the field, never later with an access violation.
/// </summary>
public sealed unsafe class GgufFile : IDisposable
{
    public const uint Magic = 0x46554747; // "GGUF" read as a little-endian uint32
    public const int DefaultAlignment = 32;

    // Guards against absurd counts in a corrupt header before we allocate for them.
    const long MaxStringBytes = 1L << 30;
    const int MaxDimensions = 8; // GGML_MAX_DIMS is 4; allow a little headroom, reject garbage
    /// <summary>How deep metadata arrays may nest (an array of arrays is 2).</summary>
    public const int MaxArrayNesting = 16;

    readonly MappedFile? _mapping; // null for an image parsed from memory
    readonly byte* _base;
    readonly Dictionary<string, GgufTensorInfo> _tensorsByName;

    GgufFile(string path, MappedFile? mapping, byte* basePtr, long length)
    {
        Path = path;
        _mapping = mapping;
        _base = basePtr;
        Length = length;

        var r = new Reader(path, basePtr, length);
        if (r.UInt32("magic") != Magic)
            throw new GgufFormatException(path, "magic", "not a GGUF file (the first 4 bytes are not \"GGUF\")", 0);
        Version = r.UInt32("version");
        if (Version is not (2 or 3))
            throw new GgufFormatException(path, "version", $"unsupported GGUF version {Version} (supported: 2, 3)", 4);

        long tensorCount = r.Count("tensor_count");
        long kvCount = r.Count("metadata_kv_count");

        var metadata = new Dictionary<string, GgufValue>((int)Math.Min(kvCount, 4096), StringComparer.Ordinal);
        for (long i = 0; i < kvCount; i++)
        {
            string key = r.String($"metadata[{i}].key");
            var type = (GgufValueType)r.UInt32($"metadata '{key}' type");
            metadata[key] = r.Value(type, $"metadata '{key}'");
        }
        Metadata = metadata;

        Alignment = DefaultAlignment;
        if (metadata.TryGetValue("general.alignment", out var alignValue))
        {
            long a = alignValue.IsInteger ? alignValue.AsInt64() : 0;
            if (a <= 0 || (a & (a - 1)) != 0 || a > 1 << 20)
                throw new GgufFormatException(path, "general.alignment", $"must be a power of two (at most {1 << 20}), got {alignValue}");
            Alignment = (int)a;
        }

        var tensors = new List<GgufTensorInfo>((int)Math.Min(tensorCount, 1 << 16));
        _tensorsByName = new Dictionary<string, GgufTensorInfo>(StringComparer.Ordinal);
        for (long i = 0; i < tensorCount; i++)
        {
            string name = r.String($"tensor[{i}].name");
            string field = $"tensor '{name}'";
            uint nDims = r.UInt32($"{field} n_dimensions");
            if (nDims > MaxDimensions)
                throw new GgufFormatException(path, $"{field} n_dimensions", $"{nDims} dimensions (at most {MaxDimensions})", r.Position - 4);
            var dims = new long[nDims];
            for (int d = 0; d < nDims; d++)
            {
                ulong dim = r.UInt64($"{field} dimension {d}");
                if (dim > long.MaxValue / 2)
                    throw new GgufFormatException(path, $"{field} dimension {d}", $"{dim} is too large", r.Position - 8);
                dims[d] = (long)dim;
            }
            long typePos = r.Position;
            var type = (GgmlType)r.UInt32($"{field} type");
            if (!GgmlTypeInfo.IsKnown(type))
                throw new GgufFormatException(path, $"{field} type", $"unknown or unsupported tensor type {(uint)type}", typePos);
            ulong offset = r.UInt64($"{field} offset");
            if (offset > (ulong)long.MaxValue)
                throw new GgufFormatException(path, $"{field} offset", $"{offset} lies past the end of the file", r.Position - 8);
            var info = new GgufTensorInfo(name, dims, type, (long)offset);
            // ggml decodes tensors row by row, so each row (the innermost dimension) must be whole blocks.
            int blockSize = GgmlTypeInfo.Of(type).BlockSize;
            if (nDims > 0 && dims[0] % blockSize != 0)
                throw new GgufFormatException(path, $"{field} dimensions",
                    $"row length {dims[0]} is not a whole number of {type} blocks ({blockSize} elements each)");
            try
            {
                _ = info.ByteCount;
            }
            catch (OverflowException)
            {
                throw new GgufFormatException(path, $"{field} dimensions",
                    $"[{string.Join(", ", dims)}] of {type} holds more bytes than a 64-bit size can count");
            }
            catch (ArgumentException e)
            {
                throw new GgufFormatException(path, $"{field} dimensions", e.Message);
            }
            if (!_tensorsByName.TryAdd(name, info))
                throw new GgufFormatException(path, field, "duplicate tensor name");
            tensors.Add(info);
        }
        Tensors = tensors;

        DataOffset = AlignUp(r.Position, Alignment);
        foreach (var t in tensors)
        {
            if (t.RelativeOffset % Alignment != 0)
                throw new GgufFormatException(path, $"tensor '{t.Name}' offset", $"{t.RelativeOffset} is not a multiple of the alignment {Alignment}");
            long start = DataOffset + t.RelativeOffset;
            long end = start + t.ByteCount;
            if (t.RelativeOffset > Length || end > Length || end < start)
                throw new GgufFormatException(path, $"tensor '{t.Name}' data",
                    $"bytes {start}..{end} lie past the end of the file ({Length} bytes); the file is truncated or corrupt");
        }
    }

    public string Path { get; }
    public long Length { get; }
    public uint Version { get; }
    public int Alignment { get; }

    /// <summary>Absolute file offset where tensor data begins.</summary>
    public long DataOffset { get; }

    public IReadOnlyDictionary<string, GgufValue> Metadata { get; }
    public IReadOnlyList<GgufTensorInfo> Tensors { get; }

    /// <summary>Opens and validates a GGUF file; the tensor data stays mapped until <see cref="Dispose"/>.</summary>
    /// <summary>
    /// Parses a GGUF image already in memory (the caller keeps it alive and pinned while the result is used):
    /// the same checks as <see cref="Open"/>, for fuzzing and for files that are not on disk.
    /// </summary>
    public static GgufFile Parse(string name, byte* data, long length)
    {
        if (length < 8)
            throw new GgufFormatException(name, "header", $"file is truncated ({length} bytes; a GGUF header needs at least 24)");
        return new GgufFile(name, null, data, length);
    }

    public static GgufFile Open(string path)
    {
        var info = MappedFile.Stat(path);
        if (!info.Exists) throw new FileNotFoundException($"{path}: no such file", path);
        if (info.Length < 8)
            throw new GgufFormatException(path, "header", $"file is truncated ({info.Length} bytes; a GGUF header needs at least 24)");

        var mapping = MappedFile.Open(path, info.Length);
        try
        {
            return new GgufFile(path, mapping, mapping.Pointer, mapping.Length);
        }
        catch
        {
            mapping.Dispose();
            throw;
        }
    }

    public bool TryGetTensor(string name, out GgufTensorInfo info) => _tensorsByName.TryGetValue(name, out info!);

    public GgufTensorInfo GetTensor(string name) =>
        _tensorsByName.TryGetValue(name, out var t) ? t : throw new GgufFormatException(Path, $"tensor '{name}'", "missing");

    /// <summary>The raw bytes of a tensor, straight from the mapping (valid until the file is disposed).</summary>
    public ReadOnlySpan<byte> GetTensorBytes(GgufTensorInfo tensor)
    {
        long n = tensor.ByteCount;
        if (n > int.MaxValue) throw new NotSupportedException($"tensor '{tensor.Name}' is larger than 2 GiB; use {nameof(GetTensorPointer)}");
        return new ReadOnlySpan<byte>(GetTensorPointer(tensor), (int)n);
    }

    /// <summary>Pointer to a tensor's first byte inside the mapping (valid until the file is disposed).</summary>
    public byte* GetTensorPointer(GgufTensorInfo tensor)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        return _base + DataOffset + tensor.RelativeOffset;
    }

    // ---- typed metadata access -------------------------------------------------------------

    public bool Has(string key) => Metadata.ContainsKey(key);

    public string? GetString(string key) =>
        Metadata.TryGetValue(key, out var v) ? v.Value as string ?? throw TypeError(key, v, "a string") : null;

    public long? GetInt(string key) =>
        Metadata.TryGetValue(key, out var v) ? (v.IsInteger || v.Type == GgufValueType.Bool ? v.AsInt64() : throw TypeError(key, v, "an integer")) : null;

    public double? GetFloat(string key) =>
        Metadata.TryGetValue(key, out var v) ? (v.Type is GgufValueType.Float32 or GgufValueType.Float64 || v.IsInteger ? v.AsDouble() : throw TypeError(key, v, "a number")) : null;

    public bool? GetBool(string key) =>
        Metadata.TryGetValue(key, out var v) ? (v.Type == GgufValueType.Bool ? (bool)v.Value : v.IsInteger ? v.AsInt64() != 0 : throw TypeError(key, v, "a bool")) : null;

    public GgufArray? GetArray(string key) =>
        Metadata.TryGetValue(key, out var v) ? v.Value as GgufArray ?? throw TypeError(key, v, "an array") : null;

    public long RequireInt(string key) => GetInt(key) ?? throw Missing(key);
    public double RequireFloat(string key) => GetFloat(key) ?? throw Missing(key);
    public string RequireString(string key) => GetString(key) ?? throw Missing(key);

    GgufFormatException Missing(string key) => new(Path, key, "required metadata key is missing");

    GgufFormatException TypeError(string key, GgufValue v, string expected) =>
        new(Path, key, $"expected {expected}, found {v.Type}{(v.Value is GgufArray a ? $" of {a.ElementType}" : "")}");

    static long AlignUp(long x, long a) => (x + a - 1) / a * a;

    bool _disposed;

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        _mapping?.Dispose();
    }

    /// <summary>A bounds-checked little-endian cursor over the mapped header.</summary>
    ref struct Reader(string path, byte* basePtr, long length)
    {
        public long Position;

        void Need(long n, string field)
        {
            if (n < 0 || Position + n > length || Position + n < Position)
                throw new GgufFormatException(path, field,
                    $"file is truncated: needs {n} more bytes but only {Math.Max(0, length - Position)} remain", Position);
        }

        T Read<T>(string field) where T : unmanaged
        {
            Need(sizeof(T), field);
            T v = *(T*)(basePtr + Position); // unaligned reads are fine on x64/arm64
            Position += sizeof(T);
            return v;
        }

        public uint UInt32(string field) => Read<uint>(field);
        public ulong UInt64(string field) => Read<ulong>(field);

        /// <summary>A count (v3: uint64, v2: uint64 too; v1 used uint32 and is not supported).</summary>
        public long Count(string field)
        {
            long at = Position;
            ulong n = Read<ulong>(field);
            // Each entry takes at least 8 bytes, so a count larger than the file cannot be real.
            if (n > (ulong)length)
                throw new GgufFormatException(path, field, $"count {n} is larger than the file could hold", at);
            return (long)n;
        }

        public string String(string field)
        {
            long at = Position;
            ulong n = Read<ulong>(field + " length");
            if (n > MaxStringBytes)
                throw new GgufFormatException(path, field, $"string length {n} is implausible", at);
            Need((long)n, field);
            string s = Encoding.UTF8.GetString(basePtr + Position, (int)n);
            Position += (long)n;
            return s;
        }

        public GgufValue Value(GgufValueType type, string field) => type switch
        {
            GgufValueType.UInt8 => new(type, Read<byte>(field)),
            GgufValueType.Int8 => new(type, Read<sbyte>(field)),
            GgufValueType.UInt16 => new(type, Read<ushort>(field)),
            GgufValueType.Int16 => new(type, Read<short>(field)),
            GgufValueType.UInt32 => new(type, Read<uint>(field)),
            GgufValueType.Int32 => new(type, Read<int>(field)),
            GgufValueType.Float32 => new(type, Read<float>(field)),
            GgufValueType.Bool => new(type, Bool(field)),
            GgufValueType.String => new(type, String(field)),
            GgufValueType.UInt64 => new(type, Read<ulong>(field)),
            GgufValueType.Int64 => new(type, Read<long>(field)),
            GgufValueType.Float64 => new(type, Read<double>(field)),
            GgufValueType.Array => new(type, Array(field, 1)),
            _ => throw new GgufFormatException(path, field, $"unknown metadata value type {(uint)type}", Position - 4),
        };

        bool Bool(string field)
        {
            long at = Position;
            byte b = Read<byte>(field);
            return b switch
            {
                0 => false,
                1 => true,
                _ => throw new GgufFormatException(path, field, $"bool must be 0 or 1, got {b}", at),
            };
        }

        GgufArray Array(string field, int depth)
        {
            long at = Position;
            // Nested arrays are read recursively: a file that nests them a million deep (12 bytes a level) would
            // overflow the stack, which ends the process. No writer nests more than a few (llama.cpp reads none).
            if (depth > MaxArrayNesting)
                throw new GgufFormatException(path, field, $"arrays nested more than {MaxArrayNesting} deep", at);
            var elementType = (GgufValueType)Read<uint>(field + " element type");
            long n = Count(field + " length");
            int count = n <= int.MaxValue ? (int)n : throw new GgufFormatException(path, field, $"array length {n} is too large", at);
            return elementType switch
            {
                GgufValueType.UInt8 => new(elementType, Scalars<byte>(count, field)),
                GgufValueType.Int8 => new(elementType, Scalars<sbyte>(count, field)),
                GgufValueType.UInt16 => new(elementType, Scalars<ushort>(count, field)),
                GgufValueType.Int16 => new(elementType, Scalars<short>(count, field)),
                GgufValueType.UInt32 => new(elementType, Scalars<uint>(count, field)),
                GgufValueType.Int32 => new(elementType, Scalars<int>(count, field)),
                GgufValueType.Float32 => new(elementType, Scalars<float>(count, field)),
                GgufValueType.UInt64 => new(elementType, Scalars<ulong>(count, field)),
                GgufValueType.Int64 => new(elementType, Scalars<long>(count, field)),
                GgufValueType.Float64 => new(elementType, Scalars<double>(count, field)),
                GgufValueType.Bool => new(elementType, Bools(count, field)),
                GgufValueType.String => new(elementType, Strings(count, field)),
                GgufValueType.Array => new(elementType, Nested(count, field, depth)),
                _ => throw new GgufFormatException(path, field, $"unknown array element type {(uint)elementType}", at),
            };
        }

        T[] Scalars<T>(int count, string field) where T : unmanaged
        {
            Need((long)count * sizeof(T), field);
            var items = new T[count];
            new ReadOnlySpan<T>(basePtr + Position, count).CopyTo(items);
            Position += (long)count * sizeof(T);
            return items;
        }

        bool[] Bools(int count, string field)
        {
            Need(count, field); // before allocating: a corrupt count must not cost gigabytes
            var items = new bool[count];
            for (int i = 0; i < count; i++) items[i] = Bool($"{field}[{i}]");
            return items;
        }

        string[] Strings(int count, string field)
        {
            // Each string carries an 8-byte length: reject a count the remaining bytes cannot hold.
            Need((long)count * 8, field);
            var items = new string[count];
            for (int i = 0; i < count; i++) items[i] = String($"{field}[{i}]");
            return items;
        }

        GgufArray[] Nested(int count, string field, int depth)
        {
            Need((long)count * 12, field);
            var items = new GgufArray[count];
            for (int i = 0; i < count; i++) items[i] = Array($"{field}[{i}]", depth + 1);
            return items;
        }
    }
}
