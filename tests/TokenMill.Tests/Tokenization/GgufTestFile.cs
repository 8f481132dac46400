using System.Text;

namespace TokenMill.Tests.Tokenization;

/// <summary>Writes a metadata-only GGUF v3 file (no tensors), for tokenizer tests that need a made-up vocabulary.</summary>
public sealed class GgufTestFile : IDisposable
{
    public GgufTestFile(IReadOnlyDictionary<string, object> metadata)
    {
        Path = System.IO.Path.Combine(System.IO.Path.GetTempPath(), $"tokenmill-test-{Guid.NewGuid():N}.gguf");
        using var w = new BinaryWriter(File.Create(Path), Encoding.UTF8);
        w.Write(0x46554747u); // "GGUF"
        w.Write(3u);
        w.Write(0ul); // tensors
        w.Write((ulong)metadata.Count);
        foreach (var (key, value) in metadata)
        {
            WriteString(w, key);
            WriteValue(w, value);
        }
    }

    public string Path { get; }

    public void Dispose() => File.Delete(Path);

    static void WriteString(BinaryWriter w, string s)
    {
        var bytes = Encoding.UTF8.GetBytes(s);
        w.Write((ulong)bytes.Length);
        w.Write(bytes);
    }

    static void WriteValue(BinaryWriter w, object value)
    {
        switch (value)
        {
            case string s: w.Write(8u); WriteString(w, s); break;
            case bool b: w.Write(7u); w.Write(b); break;
            case int i: w.Write(5u); w.Write(i); break;
            case uint u: w.Write(4u); w.Write(u); break;
            case string[] a:
                w.Write(9u); w.Write(8u); w.Write((ulong)a.Length);
                foreach (var s in a) WriteString(w, s);
                break;
            case int[] a:
                w.Write(9u); w.Write(5u); w.Write((ulong)a.Length);
                foreach (var i in a) w.Write(i);
                break;
            case float[] a:
                w.Write(9u); w.Write(6u); w.Write((ulong)a.Length);
                foreach (var f in a) w.Write(f);
                break;
            default: throw new ArgumentException($"unsupported metadata value type {value.GetType()}");
        }
    }
}
