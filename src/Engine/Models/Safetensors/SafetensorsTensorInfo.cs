namespace TokenMill.Models.Safetensors;

/// <summary>
/// One tensor of a safetensors header: its dtype as written (<c>F32</c>, <c>BF16</c>, …), its shape
/// (outermost first, as PyTorch writes it) and its byte range relative to the start of the data section.
/// </summary>
public sealed record SafetensorsTensorInfo(string Name, string DType, long[] Shape, long Begin, long End)
{
    public long ByteCount => End - Begin;

    public long ElementCount
    {
        get
        {
            long n = 1;
            foreach (long d in Shape) n = checked(n * d);
            return n;
        }
    }

    public string ShapeText => $"[{string.Join(", ", Shape)}]";
}
