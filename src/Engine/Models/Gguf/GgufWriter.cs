using System.Text;

namespace TokenMill.Models.Gguf;

/// <summary>
/// One tensor to write: its name, type, dimensions in ggml order (innermost first, as <see cref="GgufTensorInfo"/>)
/// and the address of its bytes (<see cref="GgmlTypeInfo.RowBytes"/> of its elements, which must stay valid while
/// <see cref="GgufWriter.Write"/> runs).
/// </summary>
public sealed record GgufTensorSource(string Name, GgmlType Type, long[] Dimensions, nint Data)
{
    /// <summary>The tensor's bytes.</summary>
    public long ByteCount => new GgufTensorInfo(Name, Dimensions, Type, 0).ByteCount;
}

/// <summary>
/// Writes GGUF version 3 files (<see href="https://github.com/ggml-org/ggml/blob/master/docs/gguf.md"/>): the header,
/// the metadata in the order given, the tensor infos, then each tensor's bytes at an offset that is a multiple of
/// <see cref="GgufFile.DefaultAlignment"/> (no <c>general.alignment</c> key is written), as llama.cpp's writer lays
/// them out, so <see cref="GgufFile"/> and llama.cpp read the file back.
/// </summary>
public static class GgufWriter
{
    /// <summary>Writes <paramref name="metadata"/> and <paramref name="tensors"/> to <paramref name="output"/>.</summary>
    /// <exception cref="ArgumentException">A key or tensor name is repeated or empty, a value does not match its
    /// type, a tensor has no dimensions or a type without a block size.</exception>
    public static unsafe void Write(Stream output, IReadOnlyList<KeyValuePair<string, GgufValue>> metadata, IReadOnlyList<GgufTensorSource> tensors)
    {
        Check(metadata.Select(kv => kv.Key), "metadata key");
        Check(tensors.Select(t => t.Name), "tensor name");
        foreach (var t in tensors)
        {
            if (t.Dimensions.Length is 0 or > 4 || t.Dimensions.Any(d => d <= 0))
                throw new ArgumentException($"tensor '{t.Name}' has dimensions [{string.Join(", ", t.Dimensions)}]; GGUF takes 1 to 4, each positive", nameof(tensors));
            int blockSize = GgmlTypeInfo.Of(t.Type).BlockSize;
            if (blockSize == 0 || t.Dimensions[0] % blockSize != 0)
                throw new ArgumentException($"tensor '{t.Name}': {t.Type} rows of {t.Dimensions[0]} elements are not whole blocks", nameof(tensors));
        }

        using var w = new BinaryWriter(output, Encoding.UTF8, leaveOpen: true);
        w.Write(GgufFile.Magic);
        w.Write(3u);
        w.Write((ulong)tensors.Count);
        w.Write((ulong)metadata.Count);
        foreach (var (key, value) in metadata)
        {
            WriteString(w, key);
            w.Write((uint)value.Type);
            WriteValue(w, value.Type, value.Value, key);
        }

        var offsets = new long[tensors.Count];
        long offset = 0;
        for (int i = 0; i < tensors.Count; i++)
        {
            var t = tensors[i];
            WriteString(w, t.Name);
            w.Write((uint)t.Dimensions.Length);
            foreach (long d in t.Dimensions) w.Write((ulong)d);
            w.Write((uint)t.Type);
            w.Write((ulong)offset);
            offsets[i] = offset;
            offset = Align(offset + t.ByteCount);
        }
        w.Flush();

        long start = Align(output.Position);
        Pad(output, start - output.Position);
        var chunk = new byte[1 << 20];
        for (int i = 0; i < tensors.Count; i++)
        {
            Pad(output, start + offsets[i] - output.Position);
            byte* p = (byte*)tensors[i].Data;
            for (long done = 0, n = tensors[i].ByteCount; done < n; done += chunk.Length)
                output.Write(new ReadOnlySpan<byte>(p + done, (int)Math.Min(chunk.Length, n - done)));
        }
    }

    static long Align(long n) => (n + GgufFile.DefaultAlignment - 1) / GgufFile.DefaultAlignment * GgufFile.DefaultAlignment;

    static void Pad(Stream output, long bytes)
    {
        for (long i = 0; i < bytes; i++) output.WriteByte(0);
    }

    static void Check(IEnumerable<string> names, string what)
    {
        var seen = new HashSet<string>(StringComparer.Ordinal);
        foreach (var name in names)
        {
            if (string.IsNullOrEmpty(name)) throw new ArgumentException($"a {what} is empty");
            if (!seen.Add(name)) throw new ArgumentException($"{what} '{name}' appears twice");
        }
    }

    /// <summary>A GGUF string: its UTF-8 length as a uint64, then the bytes.</summary>
    internal static void WriteString(BinaryWriter w, string s)
    {
        var bytes = Encoding.UTF8.GetBytes(s);
        w.Write((ulong)bytes.Length);
        w.Write(bytes);
    }

    /// <summary>One metadata value of <paramref name="type"/> (arrays: element type, count, items); <paramref name="key"/> names it in errors.</summary>
    internal static void WriteValue(BinaryWriter w, GgufValueType type, object value, string key)
    {
        try
        {
            switch (type)
            {
                case GgufValueType.UInt8: w.Write((byte)value); break;
                case GgufValueType.Int8: w.Write((sbyte)value); break;
                case GgufValueType.UInt16: w.Write((ushort)value); break;
                case GgufValueType.Int16: w.Write((short)value); break;
                case GgufValueType.UInt32: w.Write((uint)value); break;
                case GgufValueType.Int32: w.Write((int)value); break;
                case GgufValueType.Float32: w.Write((float)value); break;
                case GgufValueType.Bool: w.Write((bool)value ? (byte)1 : (byte)0); break;
                case GgufValueType.String: WriteString(w, (string)value); break;
                case GgufValueType.UInt64: w.Write((ulong)value); break;
                case GgufValueType.Int64: w.Write((long)value); break;
                case GgufValueType.Float64: w.Write((double)value); break;
                case GgufValueType.Array:
                    var array = (GgufArray)value;
                    w.Write((uint)array.ElementType);
                    w.Write((ulong)array.Length);
                    foreach (var item in array.Items) WriteValue(w, array.ElementType, item!, key);
                    break;
                default: throw new ArgumentException($"metadata '{key}': unknown value type {(uint)type}");
            }
        }
        catch (InvalidCastException)
        {
            throw new ArgumentException($"metadata '{key}': a {value.GetType().Name} is not a GGUF {type}");
        }
    }
}
