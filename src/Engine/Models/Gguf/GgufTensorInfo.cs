namespace TokenMill.Models.Gguf;

/// <summary>
/// One tensor's entry in the GGUF header. <see cref="Dimensions"/> are in ggml order: the first is
/// the innermost (contiguous) one, so a matrix [in, out] is stored as <c>out</c> rows of <c>in</c> elements.
/// </summary>
public sealed record GgufTensorInfo(string Name, long[] Dimensions, GgmlType Type, long RelativeOffset)
{
    public long ElementCount
    {
        get
        {
            long n = 1;
            foreach (var d in Dimensions) n = checked(n * d);
            return n;
        }
    }

    public long ByteCount => GgmlTypeInfo.RowBytes(Type, ElementCount);

    /// <summary>Elements in one row (the innermost dimension).</summary>
    public long RowLength => Dimensions.Length == 0 ? 1 : Dimensions[0];

    /// <summary>Number of rows (every dimension but the innermost, multiplied).</summary>
    public long RowCount => RowLength == 0 ? 0 : ElementCount / RowLength;

    public override string ToString() => $"{Name} {Type} [{string.Join(", ", Dimensions)}]";
}
