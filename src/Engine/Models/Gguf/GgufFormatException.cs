namespace TokenMill.Models.Gguf;

/// <summary>A GGUF file that cannot be read: names the file, the field and what is wrong with it.</summary>
public sealed class GgufFormatException : Exception
{
    public GgufFormatException(string path, string field, string problem, long offset = -1)
        : base(offset >= 0
            ? $"{path}: {field}: {problem} (at byte offset {offset})"
            : $"{path}: {field}: {problem}")
    {
        FilePath = path;
        Field = field;
        Offset = offset;
    }

    public string FilePath { get; }
    public string Field { get; }
    public long Offset { get; }
}
