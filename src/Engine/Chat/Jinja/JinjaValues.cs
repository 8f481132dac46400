using System.Collections;
using System.Globalization;
using System.Text;

namespace TokenMill.Chat.Jinja;

/// <summary>Jinja's default <c>Undefined</c>: prints as nothing, is falsy, iterates as empty; most operations on it fail.</summary>
sealed class Undefined(string name)
{
    public string Name { get; } = name;
    public override string ToString() => "";
}

/// <summary>The object <c>namespace(...)</c> makes: attributes assignable from inside loops.</summary>
sealed class Namespace
{
    public Dictionary<string, object?> Attributes { get; } = new(StringComparer.Ordinal);
}

/// <summary>A built-in function, a bound method or a macro.</summary>
sealed class Callable(string name, Func<List<object?>, Dictionary<string, object?>, object?> invoke)
{
    public string Name { get; } = name;
    public object? Invoke(List<object?> args, Dictionary<string, object?> kwargs) => invoke(args, kwargs);
}

/// <summary>A tuple: a list that prints with parentheses.</summary>
sealed class PyTuple(List<object?> items) : IEnumerable<object?>
{
    public List<object?> Items { get; } = items;
    public IEnumerator<object?> GetEnumerator() => Items.GetEnumerator();
    IEnumerator IEnumerable.GetEnumerator() => GetEnumerator();
}

/// <summary>
/// Python semantics for the value model: none (null), bool, long, double, string,
/// <c>List&lt;object?&gt;</c>, <see cref="PyTuple"/>, <c>Dictionary&lt;string, object?&gt;</c> (insertion-ordered),
/// <see cref="Namespace"/>, <see cref="Callable"/>, <see cref="Undefined"/>.
/// </summary>
static class Py
{
    public static bool Truthy(object? v) => v switch
    {
        null or Undefined => false,
        bool b => b,
        long n => n != 0,
        double d => d != 0,
        string s => s.Length > 0,
        List<object?> l => l.Count > 0,
        PyTuple t => t.Items.Count > 0,
        Dictionary<string, object?> d => d.Count > 0,
        _ => true,
    };

    public static string TypeName(object? v) => v switch
    {
        null => "NoneType",
        Undefined => "Undefined",
        bool => "bool",
        long => "int",
        double => "float",
        string => "str",
        List<object?> => "list",
        PyTuple => "tuple",
        Dictionary<string, object?> => "dict",
        Namespace => "Namespace",
        Callable => "function",
        _ => v.GetType().Name,
    };

    /// <summary>Python's <c>str()</c>, as <c>{{ }}</c> prints a value.</summary>
    public static string Str(object? v) => v switch
    {
        string s => s,
        Undefined => "",
        _ => Repr(v),
    };

    public static string Repr(object? v)
    {
        var sb = new StringBuilder();
        Repr(sb, v);
        return sb.ToString();
    }

    static void Repr(StringBuilder sb, object? v)
    {
        JinjaRuntimeException.EnsureStackToWalkValue("printing");
        switch (v)
        {
            case null: sb.Append("None"); break;
            case Undefined: break;
            case bool b: sb.Append(b ? "True" : "False"); break;
            case long n: sb.Append(n.ToString(CultureInfo.InvariantCulture)); break;
            case double d: sb.Append(FloatRepr(d)); break;
            case string s: StringRepr(sb, s); break;
            case List<object?> l:
                sb.Append('[');
                for (int i = 0; i < l.Count; i++) { if (i > 0) sb.Append(", "); Repr(sb, l[i]); }
                sb.Append(']');
                break;
            case PyTuple t:
                sb.Append('(');
                for (int i = 0; i < t.Items.Count; i++) { if (i > 0) sb.Append(", "); Repr(sb, t.Items[i]); }
                if (t.Items.Count == 1) sb.Append(',');
                sb.Append(')');
                break;
            case Dictionary<string, object?> d:
                sb.Append('{');
                bool first = true;
                foreach (var (k, val) in d)
                {
                    if (!first) sb.Append(", ");
                    first = false;
                    StringRepr(sb, k);
                    sb.Append(": ");
                    Repr(sb, val);
                }
                sb.Append('}');
                break;
            case Namespace: sb.Append("<Namespace>"); break;
            case Callable c: sb.Append("<function ").Append(c.Name).Append('>'); break;
            default: sb.Append(v); break;
        }
    }

    static void StringRepr(StringBuilder sb, string s)
    {
        char q = s.Contains('\'', StringComparison.Ordinal) && !s.Contains('"', StringComparison.Ordinal) ? '"' : '\'';
        sb.Append(q);
        foreach (char c in s)
        {
            switch (c)
            {
                case '\\': sb.Append("\\\\"); break;
                case '\n': sb.Append("\\n"); break;
                case '\r': sb.Append("\\r"); break;
                case '\t': sb.Append("\\t"); break;
                default:
                    if (c == q) sb.Append('\\').Append(c);
                    else if (c < 0x20 || c == 0x7f) sb.Append("\\x").Append(((int)c).ToString("x2", CultureInfo.InvariantCulture));
                    else sb.Append(c);
                    break;
            }
        }
        sb.Append(q);
    }

    /// <summary>Python's <c>repr(float)</c>: shortest round-trip digits, exponent form below 1e-4 and from 1e16.</summary>
    public static string FloatRepr(double d)
    {
        if (double.IsNaN(d)) return "nan";
        if (double.IsInfinity(d)) return d > 0 ? "inf" : "-inf";
        if (d == 0) return double.IsNegative(d) ? "-0.0" : "0.0";
        string r = d.ToString("R", CultureInfo.InvariantCulture); // shortest round-trip, e.g. "1.5E-05" or "123.25"
        string sign = "";
        if (r[0] == '-') { sign = "-"; r = r[1..]; }
        int exp10 = 0;
        int ei = r.IndexOf('E', StringComparison.Ordinal);
        if (ei >= 0) { exp10 = int.Parse(r[(ei + 1)..], NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture); r = r[..ei]; }
        int dot = r.IndexOf('.', StringComparison.Ordinal);
        string digits = dot < 0 ? r : r[..dot] + r[(dot + 1)..];
        int point = dot < 0 ? r.Length : dot;
        int lead = 0;
        while (lead < digits.Length - 1 && digits[lead] == '0') lead++;
        digits = digits[lead..].TrimEnd('0');
        point -= lead;
        if (digits.Length == 0) digits = "0";
        int sci = point + exp10 - 1; // value = d.ddd × 10^sci
        if (sci < -4 || sci >= 16)
            return sign + digits[0] + (digits.Length > 1 ? "." + digits[1..] : "") + "e" + (sci < 0 ? "-" : "+")
                + Math.Abs(sci).ToString("00", CultureInfo.InvariantCulture);
        if (sci < 0) return sign + "0." + new string('0', -sci - 1) + digits;
        string whole = digits.Length > sci + 1 ? digits[..(sci + 1)] : digits.PadRight(sci + 1, '0');
        string frac = digits.Length > sci + 1 ? digits[(sci + 1)..] : "0";
        return sign + whole + "." + frac;
    }

    public static new bool Equals(object? a, object? b)
    {
        JinjaRuntimeException.EnsureStackToWalkValue("==");
        if (a is Undefined || b is Undefined) return a is Undefined && b is Undefined;
        if (a is null || b is null) return a is null && b is null;
        if (IsNumber(a) && IsNumber(b))
            return a is double || b is double ? ToDouble(a) == ToDouble(b) : ToLong(a) == ToLong(b);
        switch (a)
        {
            case string s: return b is string t && s == t;
            case List<object?> l when b is List<object?> m: return SequenceEquals(l, m);
            case PyTuple l when b is PyTuple m: return SequenceEquals(l.Items, m.Items);
            case Dictionary<string, object?> d when b is Dictionary<string, object?> e:
                if (d.Count != e.Count) return false;
                foreach (var (k, v) in d)
                    if (!e.TryGetValue(k, out var w) || !Equals(v, w)) return false;
                return true;
            default: return ReferenceEquals(a, b);
        }
    }

    static bool SequenceEquals(List<object?> a, List<object?> b)
    {
        if (a.Count != b.Count) return false;
        for (int i = 0; i < a.Count; i++)
            if (!Equals(a[i], b[i])) return false;
        return true;
    }

    // bool is an int in Python.
    public static bool IsNumber(object? v) => v is long or double or bool;
    public static bool IsInteger(object? v) => v is long or bool;

    public static long ToLong(object? v) => v switch
    {
        long n => n,
        bool b => b ? 1 : 0,
        double d => (long)d,
        _ => throw new InvalidOperationException($"{TypeName(v)} is not a number"),
    };

    public static double ToDouble(object? v) => v switch
    {
        long n => n,
        bool b => b ? 1 : 0,
        double d => d,
        _ => throw new InvalidOperationException($"{TypeName(v)} is not a number"),
    };

    public static int Compare(object? a, object? b)
    {
        JinjaRuntimeException.EnsureStackToWalkValue("ordering");
        if (IsNumber(a) && IsNumber(b))
            return a is double || b is double ? ToDouble(a).CompareTo(ToDouble(b)) : ToLong(a).CompareTo(ToLong(b));
        if (a is string s && b is string t) return string.CompareOrdinal(s, t);
        if (a is List<object?> l && b is List<object?> m)
        {
            for (int i = 0; i < Math.Min(l.Count, m.Count); i++)
            {
                int c = Compare(l[i], m[i]);
                if (c != 0) return c;
            }
            return l.Count.CompareTo(m.Count);
        }
        throw new InvalidOperationException($"'<' is not supported between {TypeName(a)} and {TypeName(b)}");
    }

    /// <summary>The items a <c>for</c> loop or a filter sees: list items, dict keys, string characters.</summary>
    public static List<object?> Iterate(object? v) => v switch
    {
        List<object?> l => l,
        PyTuple t => t.Items,
        Dictionary<string, object?> d => d.Keys.Select(k => (object?)k).ToList(),
        string s => StringElements(s).Select(c => (object?)c).ToList(),
        Undefined => [],
        _ => throw new InvalidOperationException($"'{TypeName(v)}' object is not iterable"),
    };

    /// <summary>The characters of a string as Python counts them (code points, not UTF-16 units).</summary>
    public static List<string> StringElements(string s)
    {
        var list = new List<string>(s.Length);
        for (int i = 0; i < s.Length; i++)
        {
            if (char.IsHighSurrogate(s[i]) && i + 1 < s.Length && char.IsLowSurrogate(s[i + 1]))
            {
                list.Add(s.Substring(i, 2));
                i++;
            }
            else list.Add(s[i].ToString());
        }
        return list;
    }

    public static int Length(object? v) => v switch
    {
        string s => StringElements(s).Count,
        List<object?> l => l.Count,
        PyTuple t => t.Items.Count,
        Dictionary<string, object?> d => d.Count,
        Undefined => 0,
        _ => throw new InvalidOperationException($"object of type '{TypeName(v)}' has no len()"),
    };
}
