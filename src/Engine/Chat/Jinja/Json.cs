using System.Globalization;
using System.Text;

namespace TokenMill.Chat.Jinja;

/// <summary>
/// <c>tojson</c> as transformers defines it: Python's <c>json.dumps(x, ensure_ascii=False, indent=…,
/// separators=…, sort_keys=…)</c> — separators <c>", "</c> and <c>": "</c> on one line, <c>","</c> at line
/// ends when indented, no HTML escaping (Jinja's own <c>tojson</c> would escape <c>&lt;</c>).
/// </summary>
static class Json
{
    public static string Dumps(object? v, object? indent, bool ensureAscii, object? separators, bool sortKeys)
    {
        string? pad = indent switch
        {
            null or Undefined => null,
            string s => s,
            _ => Spaces(Math.Max(0, Py.ToLong(indent))),
        };
        string item = pad is null ? ", " : ",", key = ": ";
        if (separators is PyTuple or List<object?>)
        {
            var parts = Py.Iterate(separators);
            if (parts.Count != 2) throw new JinjaRuntimeException("tojson separators must be a pair");
            item = Py.Str(parts[0]);
            key = Py.Str(parts[1]);
        }
        var sb = new StringBuilder();
        Write(sb, v, pad, item, key, ensureAscii, sortKeys, 0);
        return sb.ToString();
    }

    static void Write(StringBuilder sb, object? v, string? pad, string item, string key, bool ascii, bool sort, int depth)
    {
        JinjaRuntimeException.EnsureStackToWalkValue("tojson");
        switch (v)
        {
            case null: sb.Append("null"); return;
            case bool b: sb.Append(b ? "true" : "false"); return;
            case long n: sb.Append(n.ToString(CultureInfo.InvariantCulture)); return;
            case double d:
                sb.Append(double.IsNaN(d) ? "NaN" : double.IsInfinity(d) ? (d > 0 ? "Infinity" : "-Infinity") : Py.FloatRepr(d));
                return;
            case string s: WriteString(sb, s, ascii); return;
            case List<object?> or PyTuple:
            {
                var items = Py.Iterate(v);
                if (items.Count == 0) { sb.Append("[]"); return; }
                sb.Append('[');
                for (int i = 0; i < items.Count; i++)
                {
                    if (i > 0) sb.Append(item);
                    NewLine(sb, pad, depth + 1);
                    Write(sb, items[i], pad, item, key, ascii, sort, depth + 1);
                }
                NewLine(sb, pad, depth);
                sb.Append(']');
                return;
            }
            case Dictionary<string, object?> dict:
            {
                if (dict.Count == 0) { sb.Append("{}"); return; }
                IEnumerable<KeyValuePair<string, object?>> pairs = sort ? dict.OrderBy(p => p.Key, StringComparer.Ordinal) : dict;
                sb.Append('{');
                bool first = true;
                foreach (var (k, val) in pairs)
                {
                    if (!first) sb.Append(item);
                    first = false;
                    NewLine(sb, pad, depth + 1);
                    WriteString(sb, k, ascii);
                    sb.Append(key);
                    Write(sb, val, pad, item, key, ascii, sort, depth + 1);
                }
                NewLine(sb, pad, depth);
                sb.Append('}');
                return;
            }
            default:
                throw new JinjaRuntimeException($"Object of type {Py.TypeName(v)} is not JSON serializable");
        }
    }

    static string Spaces(long n)
    {
        Builtins.CheckSize(n, "the JSON indent");
        return new string(' ', (int)n);
    }

    static void NewLine(StringBuilder sb, string? pad, int depth)
    {
        if (pad is null) return;
        // Indentation multiplies the output by the depth: check before each line grows it.
        Builtins.CheckSize(sb.Length + 1 + (long)pad.Length * depth, "the JSON text");
        sb.Append('\n');
        for (int i = 0; i < depth; i++) sb.Append(pad);
    }

    static void WriteString(StringBuilder sb, string s, bool ascii)
    {
        sb.Append('"');
        foreach (char c in s)
        {
            switch (c)
            {
                case '"': sb.Append("\\\""); break;
                case '\\': sb.Append("\\\\"); break;
                case '\n': sb.Append("\\n"); break;
                case '\r': sb.Append("\\r"); break;
                case '\t': sb.Append("\\t"); break;
                case '\b': sb.Append("\\b"); break;
                case '\f': sb.Append("\\f"); break;
                default:
                    if (c < 0x20 || (ascii && c > 0x7f))
                        sb.Append("\\u").Append(((int)c).ToString("x4", CultureInfo.InvariantCulture));
                    else sb.Append(c);
                    break;
            }
        }
        sb.Append('"');
    }
}

/// <summary>The C library's <c>strftime</c> for the conversions chat templates use (English names, as in the C locale).</summary>
static class Strftime
{
    public static string Format(DateTimeOffset t, string format)
    {
        var inv = CultureInfo.InvariantCulture;
        var sb = new StringBuilder();
        for (int i = 0; i < format.Length; i++)
        {
            char c = format[i];
            if (c != '%' || i + 1 >= format.Length) { sb.Append(c); continue; }
            char f = format[++i];
            bool noPad = false;
            if (f == '-' && i + 1 < format.Length) { noPad = true; f = format[++i]; }
            string Num(int value, int width) => noPad ? value.ToString(inv) : value.ToString(new string('0', width), inv);
            sb.Append(f switch
            {
                'a' => t.ToString("ddd", inv),
                'A' => t.ToString("dddd", inv),
                'b' or 'h' => t.ToString("MMM", inv),
                'B' => t.ToString("MMMM", inv),
                'd' => Num(t.Day, 2),
                'e' => noPad ? t.Day.ToString(inv) : t.Day.ToString(inv).PadLeft(2),
                'm' => Num(t.Month, 2),
                'y' => Num(t.Year % 100, 2),
                'Y' => t.Year.ToString(inv),
                'H' => Num(t.Hour, 2),
                'I' => Num(t.Hour % 12 == 0 ? 12 : t.Hour % 12, 2),
                'M' => Num(t.Minute, 2),
                'S' => Num(t.Second, 2),
                'p' => t.Hour < 12 ? "AM" : "PM",
                'j' => Num(t.DayOfYear, 3),
                'F' => t.ToString("yyyy-MM-dd", inv),
                'T' => t.ToString("HH:mm:ss", inv),
                '%' => "%",
                _ => "%" + f,
            });
        }
        return sb.ToString();
    }
}
