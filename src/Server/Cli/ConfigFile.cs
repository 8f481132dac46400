using System.Globalization;
using System.Text.Json;

namespace TokenMill.Server.Cli;

/// <summary>
/// <c>--config FILE</c>: the command's options in a file, named as on the command line (without the
/// dashes), as vLLM's <c>--config</c> takes them. JSON (<c>{"max-num-seqs": 64}</c>) or flat YAML
/// (<c>max-num-seqs: 64</c>, <c>#</c> comments); nested YAML is not supported and says so.
/// </summary>
public static class ConfigFile
{
    public static IEnumerable<(string Name, string Value)> Read(string path)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"{path}: no such config file", path);
        string text = File.ReadAllText(path);
        return text.TrimStart().StartsWith('{') ? Json(path, text) : Yaml(path, text);
    }

    static List<(string, string)> Json(string path, string text)
    {
        JsonDocument doc;
        try
        {
            doc = JsonDocument.Parse(text);
        }
        catch (JsonException e)
        {
            throw new UsageException($"{path}: not valid JSON: {e.Message}");
        }
        using (doc)
        {
            var list = new List<(string, string)>();
            foreach (var p in doc.RootElement.EnumerateObject())
            {
                string value = p.Value.ValueKind switch
                {
                    JsonValueKind.String => p.Value.GetString()!,
                    JsonValueKind.Number => p.Value.GetRawText(),
                    JsonValueKind.True => "true",
                    JsonValueKind.False => "false",
                    _ => throw new UsageException($"{path}: '{p.Name}' must be a string, number or boolean"),
                };
                list.Add((Normalize(p.Name), value));
            }
            return list;
        }
    }

    static List<(string, string)> Yaml(string path, string text)
    {
        var list = new List<(string, string)>();
        int n = 0;
        foreach (var raw in text.Split('\n'))
        {
            n++;
            string line = raw.TrimEnd('\r');
            int hash = line.IndexOf(" #", StringComparison.Ordinal);
            if (line.TrimStart().StartsWith('#')) continue;
            if (hash >= 0) line = line[..hash];
            if (line.Trim().Length == 0) continue;
            if (char.IsWhiteSpace(line[0])) throw new UsageException($"{path}:{n}: nested YAML is not supported; write 'name: value' lines");
            int colon = line.IndexOf(':', StringComparison.Ordinal);
            if (colon <= 0) throw new UsageException($"{path}:{n}: expected 'name: value'");
            string value = line[(colon + 1)..].Trim();
            if (value.Length >= 2 && (value[0] is '"' or '\'') && value[^1] == value[0]) value = value[1..^1];
            list.Add((Normalize(line[..colon].Trim()), value));
        }
        return list;
    }

    /// <summary>Accepts vLLM-style underscores too: max_num_seqs → max-num-seqs.</summary>
    static string Normalize(string name) => name.Replace('_', '-').ToLower(CultureInfo.InvariantCulture);
}
