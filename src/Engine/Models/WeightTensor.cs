using TokenMill.Models.Gguf;

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

    object? _packed;
    bool _packedMade;
    object? _packLock;

    /// <summary>
    /// This matrix repacked by <paramref name="pack"/> for a backend's kernel (e.g. <see cref="Quantization.PackedQ4_0"/>): made
    /// once, on first use, and kept as long as this view lives, so every forward pass over the model shares it.
    /// A tensor has one packed form; asking for another type is a bug.
    /// </summary>
    internal T Packed<T>(Func<WeightTensor, T> pack) where T : class =>
        // Every matrix product asks: the hot path is one read, and the factory's closure lives in another method
        // (a lambda here would allocate its captures on every call, even when it never runs).
        Volatile.Read(ref _packed) as T ?? MakePacked(pack);

    T MakePacked<T>(Func<WeightTensor, T> pack) where T : class =>
        (T)LazyInitializer.EnsureInitialized(ref _packed, ref _packedMade, ref _packLock, () => pack(this))!;

    /// <summary>The bytes of the whole matrix.</summary>
    internal ReadOnlySpan<byte> AllBytes() => new(Data, checked((int)(Rows * RowBytes)));

    public override string ToString() => $"{Name} {Type} [{Rows} × {Columns}]";
}
