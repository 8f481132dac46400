using TokenMill.Models.Gguf;
using TokenMill.Quantization;

namespace TokenMill.Models;

/// <summary>
/// A weight tensor kept in its file format (F32, F16, BF16, Q8_0, …): a matrix of
/// <see cref="Rows"/> rows of <see cref="Columns"/> elements, row-major, so y = W·x takes one dot
/// product per row. The bytes live in a memory-mapped GGUF file or a <see cref="Memory.NativeBuffer"/>
/// owned by the model; this is only a view and must not outlive them.
/// </summary>
public sealed unsafe class WeightTensor(string name, GgmlType type, long rows, long columns, byte* data)
{
    public string Name { get; } = name;
    public GgmlType Type { get; } = type;
    public long Rows { get; } = rows;
    public long Columns { get; } = columns;
    public byte* Data { get; } = data;

    public long RowBytes { get; } = GgmlTypeInfo.RowBytes(type, columns);

    /// <summary>A view of <paramref name="count"/> rows from <paramref name="first"/> (a fused matrix's parts).</summary>
    public WeightTensor RowRange(long first, long count)
    {
        if (first < 0 || count < 0 || first + count > Rows)
            throw new ArgumentOutOfRangeException(nameof(count), $"rows {first}..{first + count} are outside {this}");
        return new WeightTensor($"{Name}[{first}..{first + count}]", Type, count, Columns, Data + first * RowBytes);
    }

    public ReadOnlySpan<byte> Row(long row) => new(Data + row * RowBytes, checked((int)RowBytes));

    PackedQ4_0? _packedQ4;
    bool _packedQ4Made;
    object? _packLock;

    /// <summary>
    /// This Q4_0 matrix repacked for the CPU's eight-row integer kernel (<see cref="PackedQ4_0"/>): made once, on
    /// first use, and kept as long as this view lives, so every forward pass over the model shares it.
    /// </summary>
    internal PackedQ4_0 PackedQ4() => LazyInitializer.EnsureInitialized(ref _packedQ4, ref _packedQ4Made, ref _packLock,
        () => PackedQ4_0.Pack(new ReadOnlySpan<byte>(Data, checked((int)(Rows * RowBytes))), checked((int)Rows), checked((int)Columns)))!;

    public override string ToString() => $"{Name} {Type} [{Rows} × {Columns}]";
}
