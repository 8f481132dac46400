using System.Buffers.Binary;
using System.Text;
using TokenMill.Models.Gguf;

namespace TokenMill.Tests.Models;

/// <summary>
/// Writes small GGUF v2/v3 files for tests: any metadata value (nested arrays included), tensor infos
/// and data placed at <c>general.alignment</c>. <see cref="Build"/> also returns where each field landed,
/// so a test can cut the file or overwrite one field to make exactly the malformation it wants.
/// </summary>
public sealed class GgufTestWriter
{
    readonly List<(string Key, GgufValueType Type, object Value)> _metadata = [];
    readonly List<Tensor> _tensors = [];

    public uint Magic { get; set; } = GgufFile.Magic;
    public uint Version { get; set; } = 3;

    /// <summary>Alignment of tensor data; 32 (GGUF's default) unless a <c>general.alignment</c> value is added.</summary>
    public int Alignment { get; private set; } = GgufFile.DefaultAlignment;

    sealed record Tensor(string Name, long[] Dimensions, GgmlType Type, byte[] Data);

    /// <summary>Where the fields of a built file lie (absolute byte offsets).</summary>
    public sealed class Layout
    {
        /// <summary>Per metadata entry: the key's length prefix, its value-type field, and its value.</summary>
        public List<(long Key, long Type, long Value)> Metadata { get; } = [];
        /// <summary>Per tensor info: its name's length prefix, its first dimension, its type field and its offset field.</summary>
        public List<(long Name, long Dimensions, long Type, long Offset)> TensorInfos { get; } = [];
        /// <summary>Where the tensor data section starts, and each tensor's first byte.</summary>
        public long DataStart { get; set; }
        public List<long> TensorData { get; } = [];
    }

    public GgufTestWriter Add(string key, GgufValueType type, object value)
    {
        if (key == "general.alignment") Alignment = (int)Convert.ToInt64(value, System.Globalization.CultureInfo.InvariantCulture);
        _metadata.Add((key, type, value));
        return this;
    }

    public GgufTestWriter Add(string key, string value) => Add(key, GgufValueType.String, value);
    public GgufTestWriter Add(string key, uint value) => Add(key, GgufValueType.UInt32, value);
    public GgufTestWriter Add(string key, GgufArray value) => Add(key, GgufValueType.Array, value);

    /// <summary>Adds a tensor; its data is placed at the next aligned offset.</summary>
    public GgufTestWriter AddTensor(string name, GgmlType type, long[] dimensions, byte[] data)
    {
        _tensors.Add(new Tensor(name, dimensions, type, data));
        return this;
    }

    public byte[] Build() => Build(out _);

    public byte[] Build(out Layout layout)
    {
        layout = new Layout();
        using var ms = new MemoryStream();
        using var w = new BinaryWriter(ms, Encoding.UTF8); // BinaryWriter is little-endian on every platform
        w.Write(Magic);
        w.Write(Version);
        w.Write((ulong)_tensors.Count);
        w.Write((ulong)_metadata.Count);

        foreach (var (key, type, value) in _metadata)
        {
            long keyAt = ms.Position;
            WriteString(w, key);
            long typeAt = ms.Position;
            w.Write((uint)type);
            long valueAt = ms.Position;
            WriteValue(w, type, value);
            layout.Metadata.Add((keyAt, typeAt, valueAt));
        }

        long offset = 0;
        var offsets = new List<long>();
        foreach (var t in _tensors)
        {
            long nameAt = ms.Position;
            WriteString(w, t.Name);
            w.Write((uint)t.Dimensions.Length);
            long dimsAt = ms.Position;
            foreach (long d in t.Dimensions) w.Write((ulong)d);
            long typeAt = ms.Position;
            w.Write((uint)t.Type);
            long offsetAt = ms.Position;
            w.Write((ulong)offset);
            layout.TensorInfos.Add((nameAt, dimsAt, typeAt, offsetAt));
            offsets.Add(offset);
            offset = AlignUp(offset + t.Data.Length, Alignment);
        }

        Pad(w, AlignUp(ms.Position, Alignment));
        layout.DataStart = ms.Position;
        for (int i = 0; i < _tensors.Count; i++)
        {
            Pad(w, layout.DataStart + offsets[i]);
            layout.TensorData.Add(ms.Position);
            w.Write(_tensors[i].Data);
        }
        w.Flush();
        return ms.ToArray();
    }

    static long AlignUp(long x, long a) => (x + a - 1) / a * a;

    static void Pad(BinaryWriter w, long to)
    {
        while (w.BaseStream.Position < to) w.Write((byte)0);
    }

    static void WriteString(BinaryWriter w, string s) => GgufWriter.WriteString(w, s);

    static void WriteValue(BinaryWriter w, GgufValueType type, object value)
    {
        if (Enum.IsDefined(type)) GgufWriter.WriteValue(w, type, value, "test");
        else w.Write((byte[])value); // lets a test write a value type the reader does not know: the value is then raw bytes
    }

    /// <summary>Writes the bytes to a new file in <paramref name="directory"/> and returns its path.</summary>
    public static string Save(string directory, string name, byte[] bytes)
    {
        var path = Path.Combine(directory, name);
        File.WriteAllBytes(path, bytes);
        return path;
    }
}
