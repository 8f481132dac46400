using System.Buffers.Binary;
using System.Text;
using System.Text.Json;

namespace TokenMill.Tests.Models;

/// <summary>
/// Writes small safetensors files for tests: tensors laid out back to back in the order added, the
/// header as the reference implementation writes it. <see cref="Raw"/> builds a file from any header
/// text, so a test can write exactly the malformation it wants.
/// </summary>
public sealed class SafetensorsTestWriter
{
    readonly List<(string Name, string DType, long[] Shape, byte[] Data)> _tensors = [];
    readonly Dictionary<string, string> _metadata = new() { ["format"] = "pt" };

    public SafetensorsTestWriter Add(string name, string dtype, long[] shape, byte[] data)
    {
        _tensors.Add((name, dtype, shape, data));
        return this;
    }

    public SafetensorsTestWriter AddF32(string name, long[] shape, float[] values) =>
        Add(name, "F32", shape, MemoryMarshalBytes(values));

    /// <summary>Adds <paramref name="values"/> rounded to BF16 (round to nearest even, as PyTorch's .to(bfloat16)).</summary>
    public SafetensorsTestWriter AddBF16(string name, long[] shape, float[] values) =>
        Add(name, "BF16", shape, ToBF16Bytes(values));

    public string HeaderJson()
    {
        var header = new Dictionary<string, object> { ["__metadata__"] = _metadata };
        long offset = 0;
        foreach (var t in _tensors)
        {
            header[t.Name] = new Dictionary<string, object> { ["dtype"] = t.DType, ["shape"] = t.Shape, ["data_offsets"] = new[] { offset, offset + t.Data.Length } };
            offset += t.Data.Length;
        }
        return JsonSerializer.Serialize(header);
    }

    public byte[] Build() => Raw(HeaderJson(), [.. _tensors.SelectMany(t => t.Data)]);

    /// <summary>A file of the 8-byte little-endian header length, <paramref name="header"/> as UTF-8, then <paramref name="data"/>.</summary>
    public static byte[] Raw(string header, byte[] data)
    {
        var h = Encoding.UTF8.GetBytes(header);
        var file = new byte[8 + h.Length + data.Length];
        BinaryPrimitives.WriteUInt64LittleEndian(file, (ulong)h.Length);
        h.CopyTo(file, 8);
        data.CopyTo(file, 8 + h.Length);
        return file;
    }

    public static byte[] MemoryMarshalBytes(float[] values) => [.. System.Runtime.InteropServices.MemoryMarshal.AsBytes(values.AsSpan())];

    public static ushort ToBF16(float f)
    {
        uint bits = BitConverter.SingleToUInt32Bits(f);
        return (ushort)((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16);
    }

    public static float FromBF16(ushort b) => BitConverter.UInt32BitsToSingle((uint)b << 16);

    public static byte[] ToBF16Bytes(float[] values)
    {
        var bytes = new byte[values.Length * 2];
        for (int i = 0; i < values.Length; i++) BinaryPrimitives.WriteUInt16LittleEndian(bytes.AsSpan(2 * i), ToBF16(values[i]));
        return bytes;
    }
}
