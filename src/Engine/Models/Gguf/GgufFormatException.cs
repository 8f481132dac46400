using System.Text;

namespace TokenMill.Models.Gguf;

/// <summary>A GGUF file that cannot be read: names the file, the field and what is wrong with it.</summary>
public sealed class GgufFormatException : Exception
{
    public GgufFormatException(string path, string field, string problem, long offset = -1)
        : base(offset >= 0
            ? $"{path}: {Printable(field)}: {problem} (at byte offset {offset})"
            : $"{path}: {Printable(field)}: {problem}")
    {
        FilePath = path;
        Field = field;
        Offset = offset;
    }

    public string FilePath { get; }

    /// <summary>The field as the file names it (a key or tensor name may hold any bytes; the message escapes them).</summary>
    public string Field { get; }

    public long Offset { get; }

    // A corrupt file can put NULs, escape sequences or line breaks into a key or tensor name; the message
    // goes to logs and terminals, so control characters are written as \xNN.
    static string Printable(string s)
    {
        if (!s.Any(char.IsControl)) return s;
        var sb = new StringBuilder(s.Length + 16);
        foreach (char c in s)
            if (char.IsControl(c)) sb.Append($"\\x{(int)c:X2}");
            else sb.Append(c);
        return sb.ToString();
    }
}
