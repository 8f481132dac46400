using System.Globalization;
using System.Text.Json;

namespace TokenMill.Server.Http;

/// <summary>
/// Typed, checked access to a JSON request body. Every getter names the field in its error, so a
/// wrong type or range comes back as a 400 with <c>param</c> set — never as a 500. Unknown fields
/// are ignored, as OpenAI does.
/// </summary>
public sealed class JsonRequest(JsonElement root)
{
    public JsonElement Root { get; } = root.ValueKind == JsonValueKind.Object
        ? root
        : throw ApiErrorException.BadRequest($"the request body must be a JSON object, not {Describe(root.ValueKind)}");

    /// <summary>
    /// Rejects, with a 400 naming the place, any string that cannot become a .NET string (an escaped lone
    /// surrogate such as "\ud800"): System.Text.Json only notices when the string is read.
    /// </summary>
    public static void CheckStrings(JsonElement e, string path = "body")
    {
        switch (e.ValueKind)
        {
            case JsonValueKind.String:
                try
                {
                    _ = e.GetString();
                }
                catch (InvalidOperationException)
                {
                    throw ApiErrorException.BadRequest($"{path} is not a valid string (it holds an unpaired surrogate escape)");
                }
                break;
            case JsonValueKind.Object:
                foreach (var p in e.EnumerateObject())
                {
                    try
                    {
                        _ = p.Name;
                    }
                    catch (InvalidOperationException)
                    {
                        throw ApiErrorException.BadRequest($"a property name in {path} is not a valid string");
                    }
                    CheckStrings(p.Value, $"{path}.{p.Name}");
                }
                break;
            case JsonValueKind.Array:
                int i = 0;
                foreach (var item in e.EnumerateArray()) CheckStrings(item, $"{path}[{i++}]");
                break;
        }
    }

    public bool Has(string name) => Root.TryGetProperty(name, out var v) && v.ValueKind != JsonValueKind.Null;

    public JsonElement? Get(string name) => Root.TryGetProperty(name, out var v) && v.ValueKind != JsonValueKind.Null ? v : null;

    public string? String(string name) => Get(name) is { } v
        ? v.ValueKind == JsonValueKind.String ? v.GetString() : throw TypeError(name, "a string", v)
        : null;

    public bool? Bool(string name) => Get(name) is { } v
        ? v.ValueKind is JsonValueKind.True or JsonValueKind.False ? v.GetBoolean() : throw TypeError(name, "a boolean", v)
        : null;

    public double? Number(string name, double min = double.MinValue, double max = double.MaxValue)
    {
        if (Get(name) is not { } v) return null;
        if (v.ValueKind != JsonValueKind.Number) throw TypeError(name, "a number", v);
        double d = v.GetDouble();
        if (!double.IsFinite(d) || d < min || d > max)
            throw ApiErrorException.BadRequest($"'{name}' must be between {Fmt(min)} and {Fmt(max)}, got {Fmt(d)}", name);
        return d;
    }

    public int? Int(string name, long min = int.MinValue, long max = int.MaxValue)
    {
        if (Get(name) is not { } v) return null;
        if (v.ValueKind != JsonValueKind.Number || !v.TryGetInt64(out long i)) throw TypeError(name, "an integer", v);
        if (i < min || i > max) throw ApiErrorException.BadRequest($"'{name}' must be between {min} and {max}, got {i}", name);
        return (int)i;
    }

    public long? Long(string name)
    {
        if (Get(name) is not { } v) return null;
        if (v.ValueKind != JsonValueKind.Number || !v.TryGetInt64(out long i)) throw TypeError(name, "an integer", v);
        return i;
    }

    /// <summary>A string or a list of strings (OpenAI's <c>stop</c>).</summary>
    public IReadOnlyList<string> StringOrList(string name, int maxItems)
    {
        if (Get(name) is not { } v) return [];
        if (v.ValueKind == JsonValueKind.String) return [v.GetString()!];
        if (v.ValueKind != JsonValueKind.Array) throw TypeError(name, "a string or a list of strings", v);
        var list = new List<string>();
        foreach (var item in v.EnumerateArray())
        {
            if (item.ValueKind != JsonValueKind.String) throw TypeError(name, "a list of strings", item);
            list.Add(item.GetString()!);
        }
        if (list.Count > maxItems) throw ApiErrorException.BadRequest($"'{name}' may hold at most {maxItems} items, got {list.Count}", name);
        return list;
    }

    public IReadOnlyList<int> IntList(string name)
    {
        if (Get(name) is not { } v) return [];
        if (v.ValueKind != JsonValueKind.Array) throw TypeError(name, "a list of integers", v);
        var list = new List<int>();
        foreach (var item in v.EnumerateArray())
        {
            if (item.ValueKind != JsonValueKind.Number || !item.TryGetInt32(out int i)) throw TypeError(name, "a list of integers", item);
            list.Add(i);
        }
        return list;
    }

    /// <summary>OpenAI's <c>logit_bias</c>: an object mapping token ids (as strings) to numbers in [-100, 100].</summary>
    public Dictionary<int, float>? LogitBias(string name)
    {
        if (Get(name) is not { } v) return null;
        if (v.ValueKind != JsonValueKind.Object) throw TypeError(name, "an object of token id → bias", v);
        var bias = new Dictionary<int, float>();
        foreach (var p in v.EnumerateObject())
        {
            if (!int.TryParse(p.Name, NumberStyles.Integer, CultureInfo.InvariantCulture, out int id))
                throw ApiErrorException.BadRequest($"'{name}' keys must be token ids, got \"{p.Name}\"", name);
            if (p.Value.ValueKind != JsonValueKind.Number) throw TypeError($"{name}.{p.Name}", "a number", p.Value);
            double b = p.Value.GetDouble();
            if (b < -100 || b > 100) throw ApiErrorException.BadRequest($"'{name}' values must be between -100 and 100, got {Fmt(b)}", name);
            bias[id] = (float)b;
        }
        return bias;
    }

    public static ApiErrorException TypeError(string name, string expected, JsonElement got) =>
        ApiErrorException.BadRequest($"'{name}' must be {expected}, got {Describe(got.ValueKind)}", name);

    static string Describe(JsonValueKind k) => k switch
    {
        JsonValueKind.Object => "an object",
        JsonValueKind.Array => "an array",
        JsonValueKind.String => "a string",
        JsonValueKind.Number => "a number",
        JsonValueKind.True or JsonValueKind.False => "a boolean",
        JsonValueKind.Null => "null",
        _ => k.ToString(),
    };

    static string Fmt(double d) => d.ToString("G", CultureInfo.InvariantCulture);
}
