using System.Globalization;
using System.Text;

namespace TokenMill.Chat.Jinja;

/// <summary>
/// Operators, attribute access, filters, tests and Python string/dict methods. Mutating methods
/// (<c>list.append</c>, <c>dict.update</c>) are absent on purpose: transformers renders in Jinja's
/// immutable sandbox, where they fail too.
/// </summary>
static class Builtins
{
    static JinjaRuntimeException Err(string message) => new(message);

    // The size limit of the rendering running on this thread (a rendering is synchronous, start to end).
    [ThreadStatic] static int t_maxChars;

    /// <summary>Sets the largest string or list a built-in may build on this thread until the scope is disposed.</summary>
    public static SizeLimitScope LimitSizes(int maxChars)
    {
        int previous = t_maxChars;
        t_maxChars = maxChars;
        return new SizeLimitScope(previous);
    }

    public readonly struct SizeLimitScope(int previous) : IDisposable
    {
        public void Dispose() => t_maxChars = previous;
    }

    static int MaxChars => t_maxChars > 0 ? t_maxChars : ChatTemplateLimits.Default.MaxOutputChars;

    /// <summary>
    /// Checks, before it is allocated, that a string or list of <paramref name="size"/> characters or items
    /// stays within the limit: a template must not get a gigabyte out of <c>"x" * 10**9</c> or a doubling loop.
    /// </summary>
    public static void CheckSize(long size, string what)
    {
        if (size > MaxChars)
            throw JinjaRuntimeException.OverLimit(nameof(ChatTemplateLimits.MaxOutputChars), $"{what} would hold {size} characters or items, more than {MaxChars}");
    }

    static long Product(long a, long b) => a > 0 && b > long.MaxValue / a ? long.MaxValue : a * b;

    /// <summary>Filter names <see cref="Filter"/> knows; the parser refuses others, as Jinja does when it compiles.</summary>
    public static readonly HashSet<string> FilterNames = new(StringComparer.Ordinal)
    {
        "default", "d", "safe", "string", "pprint", "tojson", "length", "count", "list", "first", "last", "reverse",
        "items", "join", "int", "float", "abs", "round", "upper", "lower", "capitalize", "title", "trim", "replace",
        "split", "indent", "wordcount", "center", "escape", "e", "forceescape", "attr", "selectattr", "rejectattr",
        "select", "reject", "map", "unique", "sort", "dictsort", "sum", "min", "max", "batch", "format",
    };

    /// <summary>Test names <see cref="Test"/> knows.</summary>
    public static readonly HashSet<string> TestNames = new(StringComparer.Ordinal)
    {
        "defined", "undefined", "none", "string", "number", "integer", "float", "boolean", "true", "false", "mapping",
        "iterable", "sequence", "callable", "even", "odd", "divisibleby", "eq", "equalto", "==", "ne", "!=", "lt",
        "lessthan", "<", "le", "<=", "gt", "greaterthan", ">", "ge", ">=", "in", "sameas", "lower", "upper", "escaped",
    };

    static Callable Method(string name, Func<List<object?>, Dictionary<string, object?>, object?> f) => new(name, f);

    static object? Arg(List<object?> a, Dictionary<string, object?> kw, int i, string name, object? fallback = null) =>
        i < a.Count ? a[i] : kw.TryGetValue(name, out var v) ? v : fallback;

    // ---- access -------------------------------------------------------------------------------

    public static object? GetAttribute(object? obj, string name, string describe)
    {
        switch (obj)
        {
            case Undefined u:
                throw Err($"'{u.Name}' is undefined (reading '{name}' of it)");
            case Dictionary<string, object?> d:
                var m = DictMethod(d, name);
                if (m is not null) return m;
                return d.TryGetValue(name, out var v) ? v : new Undefined($"{describe}.{name}");
            case Namespace ns:
                return ns.Attributes.TryGetValue(name, out var nv) ? nv : new Undefined($"{describe}.{name}");
            case string s:
                return (object?)StringMethod(s, name) ?? new Undefined($"{describe}.{name}");
            case List<object?> l:
                return (object?)ListMethod(l, name) ?? new Undefined($"{describe}.{name}");
            case PyTuple t:
                return (object?)ListMethod(t.Items, name) ?? new Undefined($"{describe}.{name}");
            default:
                return new Undefined($"{describe}.{name}");
        }
    }

    public static object? GetItem(object? obj, object? key, string describe)
    {
        switch (obj)
        {
            case Undefined u:
                throw Err($"'{u.Name}' is undefined (indexing it)");
            case Dictionary<string, object?> d:
                if (key is string k && d.TryGetValue(k, out var v)) return v;
                return key is string ks ? GetAttribute(obj, ks, describe) : new Undefined($"{describe}[{Py.Repr(key)}]");
            case Namespace when key is string ks2:
                return GetAttribute(obj, ks2, describe);
            case List<object?> or PyTuple or string when Py.IsInteger(key):
            {
                var items = obj is string s ? Py.StringElements(s).Select(c => (object?)c).ToList() : Py.Iterate(obj);
                long i = Py.ToLong(key);
                if (i < 0) i += items.Count;
                return i >= 0 && i < items.Count ? items[(int)i] : new Undefined($"{describe}[{key}]");
            }
            case string or List<object?> or PyTuple when key is string name:
                return GetAttribute(obj, name, describe);
            default:
                return new Undefined($"{describe}[{Py.Repr(key)}]");
        }
    }

    public static object? Slice(object? obj, object? start, object? stop, object? step)
    {
        long st = step is null ? 1 : Py.ToLong(step);
        if (st == 0) throw Err("slice step cannot be zero");
        List<object?> items = obj switch
        {
            string s => Py.StringElements(s).Select(c => (object?)c).ToList(),
            List<object?> l => l,
            PyTuple t => t.Items,
            Undefined u => throw Err($"'{u.Name}' is undefined (slicing it)"),
            _ => throw Err($"'{Py.TypeName(obj)}' object is not subscriptable"),
        };
        int n = items.Count;
        long Norm(object? v, long dflt, long lo, long hi)
        {
            if (v is null) return dflt;
            long x = Py.ToLong(v);
            if (x < 0) x += n;
            return Math.Clamp(x, lo, hi);
        }
        var result = new List<object?>();
        if (st > 0)
        {
            long a = Norm(start, 0, 0, n), b = Norm(stop, n, 0, n);
            for (long i = a; i < b; i += st) result.Add(items[(int)i]);
        }
        else
        {
            long a = Norm(start, n - 1, -1, n - 1), b = Norm(stop, -1, -1, n - 1);
            if (stop is not null && Py.ToLong(stop) < -n) b = -1;
            for (long i = a; i > b; i += st) result.Add(items[(int)i]);
        }
        return obj switch
        {
            string => string.Concat(result.Cast<string>()),
            PyTuple => new PyTuple(result),
            _ => result,
        };
    }

    public static List<object?> Range(List<object?> a)
    {
        long start = 0, stop, step = 1;
        if (a.Count == 1) stop = Py.ToLong(a[0]);
        else if (a.Count is 2 or 3)
        {
            start = Py.ToLong(a[0]);
            stop = Py.ToLong(a[1]);
            if (a.Count == 3) step = Py.ToLong(a[2]);
        }
        else throw Err("range() takes 1 to 3 arguments");
        if (step == 0) throw Err("range() step must not be zero");
        var list = new List<object?>();
        for (long i = start; step > 0 ? i < stop : i > stop; i += step)
        {
            list.Add(i);
            if (list.Count > 100_000) throw Err("range() is too long for a chat template");
        }
        return list;
    }

    // ---- operators ----------------------------------------------------------------------------

    public static object? Binary(string op, object? l, object? r)
    {
        switch (op)
        {
            case "==": return Py.Equals(l, r);
            case "!=": return !Py.Equals(l, r);
            case "<": return Py.Compare(Defined(l), Defined(r)) < 0;
            case ">": return Py.Compare(Defined(l), Defined(r)) > 0;
            case "<=": return Py.Compare(Defined(l), Defined(r)) <= 0;
            case ">=": return Py.Compare(Defined(l), Defined(r)) >= 0;
            case "in": return Contains(r, l);
            case "~": return Py.Str(l) + Py.Str(r);
        }
        l = Defined(l);
        r = Defined(r);
        if (Py.IsNumber(l) && Py.IsNumber(r))
        {
            bool ints = Py.IsInteger(l) && Py.IsInteger(r);
            switch (op)
            {
                case "+": return ints ? (object)checked(Py.ToLong(l) + Py.ToLong(r)) : Py.ToDouble(l) + Py.ToDouble(r);
                case "-": return ints ? (object)checked(Py.ToLong(l) - Py.ToLong(r)) : Py.ToDouble(l) - Py.ToDouble(r);
                case "*": return ints ? (object)checked(Py.ToLong(l) * Py.ToLong(r)) : Py.ToDouble(l) * Py.ToDouble(r);
                case "/":
                    if (Py.ToDouble(r) == 0) throw new DivideByZeroException("division by zero");
                    return Py.ToDouble(l) / Py.ToDouble(r);
                case "//":
                    if (Py.ToDouble(r) == 0) throw new DivideByZeroException("integer division by zero");
                    if (ints)
                    {
                        long a = Py.ToLong(l), b = Py.ToLong(r);
                        long q = a / b;
                        return (a % b != 0 && (a < 0) != (b < 0)) ? q - 1 : q;
                    }
                    return Math.Floor(Py.ToDouble(l) / Py.ToDouble(r));
                case "%":
                    if (Py.ToDouble(r) == 0) throw new DivideByZeroException("modulo by zero");
                    if (ints)
                    {
                        long a = Py.ToLong(l), b = Py.ToLong(r);
                        long m = a % b;
                        return m != 0 && (m < 0) != (b < 0) ? m + b : m;
                    }
                    double x = Py.ToDouble(l), y = Py.ToDouble(r);
                    return x - y * Math.Floor(x / y);
                case "**":
                    if (ints && Py.ToLong(r) >= 0) return checked((long)Math.Pow(Py.ToLong(l), Py.ToLong(r)));
                    return Math.Pow(Py.ToDouble(l), Py.ToDouble(r));
            }
        }
        switch (op)
        {
            case "+" when l is string a && r is string b:
                CheckSize((long)a.Length + b.Length, "the concatenated string");
                return a + b;
            case "+" when l is List<object?> a && r is List<object?> b:
                CheckSize((long)a.Count + b.Count, "the concatenated list");
                return a.Concat(b).ToList();
            case "+" when l is PyTuple a && r is PyTuple b: return new PyTuple(a.Items.Concat(b.Items).ToList());
            case "*" when l is string s && Py.IsInteger(r): return Repeat(s, Py.ToLong(r));
            case "*" when r is string s && Py.IsInteger(l): return Repeat(s, Py.ToLong(l));
            case "*" when l is List<object?> a && Py.IsInteger(r):
            {
                long times = Math.Max(0, Py.ToLong(r));
                CheckSize(Product(a.Count, times), "the repeated list");
                return Enumerable.Repeat(a, (int)times).SelectMany(x => x).ToList();
            }
            case "%" when l is string fmt:
                return PercentFormat(fmt, r);
            case "+" when l is string:
                throw Err($"can only concatenate str (not \"{Py.TypeName(r)}\") to str");
        }
        throw Err($"unsupported operand type(s) for {op}: '{Py.TypeName(l)}' and '{Py.TypeName(r)}'");
    }

    static string Repeat(string s, long n)
    {
        if (n <= 0) return "";
        CheckSize(Product(s.Length, n), "the repeated string");
        return new StringBuilder(s.Length * (int)n).Insert(0, s, (int)n).ToString();
    }

    static object? Defined(object? v) => v is Undefined u ? throw Err($"'{u.Name}' is undefined") : v;

    static bool Contains(object? container, object? item) => container switch
    {
        string s => item is string t ? s.Contains(t, StringComparison.Ordinal)
            : throw Err($"'in <string>' requires string as left operand, not {Py.TypeName(item)}"),
        Dictionary<string, object?> d => item is string k && d.ContainsKey(k),
        List<object?> l => l.Any(x => Py.Equals(x, item)),
        PyTuple t => t.Items.Any(x => Py.Equals(x, item)),
        Undefined => false,
        _ => throw Err($"argument of type '{Py.TypeName(container)}' is not iterable"),
    };

    // ---- tests --------------------------------------------------------------------------------

    public static bool Test(string name, object? v, List<object?> a, int line, int column)
    {
        object? A0() => a.Count > 0 ? a[0] : throw new ChatTemplateException($"test '{name}' needs an argument", line, column);
        return name switch
        {
            "defined" => v is not Undefined,
            "undefined" => v is Undefined,
            "none" => v is null,
            "string" => v is string,
            "number" => v is long or double or bool,
            "integer" => v is long,
            "float" => v is double,
            "boolean" => v is bool,
            "true" => v is true,
            "false" => v is false,
            "mapping" => v is Dictionary<string, object?>,
            "iterable" => v is string or List<object?> or PyTuple or Dictionary<string, object?> or Undefined,
            "sequence" => v is string or List<object?> or PyTuple or Dictionary<string, object?>,
            "callable" => v is Callable,
            "even" => Py.ToLong(Defined(v)) % 2 == 0,
            "odd" => Py.ToLong(Defined(v)) % 2 != 0,
            "divisibleby" => Py.ToLong(Defined(v)) % Py.ToLong(A0()) == 0,
            "eq" or "equalto" or "==" => Py.Equals(v, A0()),
            "ne" or "!=" => !Py.Equals(v, A0()),
            "lt" or "lessthan" or "<" => Py.Compare(v, A0()) < 0,
            "le" or "<=" => Py.Compare(v, A0()) <= 0,
            "gt" or "greaterthan" or ">" => Py.Compare(v, A0()) > 0,
            "ge" or ">=" => Py.Compare(v, A0()) >= 0,
            "in" => Contains(A0(), v),
            "sameas" => SameAs(v, A0()),
            "lower" => v is string s && !s.Any(char.IsUpper),
            "upper" => v is string s2 && !s2.Any(char.IsLower),
            "escaped" => false,
            _ => throw new ChatTemplateException($"unknown test '{name}'", line, column),
        };
    }

    static bool SameAs(object? a, object? b) => a switch
    {
        null => b is null,
        bool x => b is bool y && x == y,
        long x => b is long y && x == y,
        string x => b is string y && x == y,
        _ => ReferenceEquals(a, b),
    };

    // ---- filters ------------------------------------------------------------------------------

    public static object? Filter(string name, object? v, List<object?> a, Dictionary<string, object?> kw, int line, int column)
    {
        switch (name)
        {
            case "default" or "d":
            {
                var fallback = Arg(a, kw, 0, "default_value", "");
                bool boolean = Py.Truthy(Arg(a, kw, 1, "boolean", false));
                return v is Undefined || (boolean && !Py.Truthy(v)) ? fallback : v;
            }
            case "safe": return v;
            case "string": return Py.Str(v);
            case "pprint": return Py.Repr(v);
            case "tojson":
                return Json.Dumps(v, Arg(a, kw, 0, "indent"), Py.Truthy(kw.GetValueOrDefault("ensure_ascii", false)),
                    kw.GetValueOrDefault("separators"), Py.Truthy(kw.GetValueOrDefault("sort_keys", false)));
            case "length" or "count": return (long)Py.Length(v);
            case "list": return v is string s0 ? Py.StringElements(s0).Select(c => (object?)c).ToList() : Py.Iterate(v).ToList();
            case "first": { var l = Seq(v); return l.Count > 0 ? l[0] : new Undefined("first of an empty sequence"); }
            case "last": { var l = Seq(v); return l.Count > 0 ? l[^1] : new Undefined("last of an empty sequence"); }
            case "reverse":
                if (v is string rs) return string.Concat(Py.StringElements(rs).AsEnumerable().Reverse());
                return Seq(v).AsEnumerable().Reverse().ToList();
            case "items":
                if (v is Undefined) return new List<object?>();
                if (v is not Dictionary<string, object?> dict) throw Err($"can only get items of a mapping, not {Py.TypeName(v)}");
                return dict.Select(p => (object?)new PyTuple([p.Key, p.Value])).ToList();
            case "join":
            {
                string sep = Py.Str(Arg(a, kw, 0, "d", ""));
                var attr = Arg(a, kw, 1, "attribute");
                var items = Seq(v).Select(x => Py.Str(attr is null ? x : Lookup(x, attr))).ToList();
                CheckSize(items.Sum(x => (long)x.Length) + Product(sep.Length, Math.Max(0, items.Count - 1)), "the joined string");
                return string.Join(sep, items);
            }
            case "int":
                return ToInt(v, Arg(a, kw, 0, "default", 0L), Py.ToLong(Arg(a, kw, 1, "base", 10L)));
            case "float":
                return ToFloat(v, Arg(a, kw, 0, "default", 0.0));
            case "abs": return v is double dd ? Math.Abs(dd) : (object)Math.Abs(Py.ToLong(Defined(v)));
            case "round":
            {
                int precision = (int)Py.ToLong(Arg(a, kw, 0, "precision", 0L));
                string method = Py.Str(Arg(a, kw, 1, "method", "common"));
                double x = Py.ToDouble(Defined(v)), p = Math.Pow(10, precision);
                return method switch
                {
                    "ceil" => Math.Ceiling(x * p) / p,
                    "floor" => Math.Floor(x * p) / p,
                    _ => Math.Round(x * p, MidpointRounding.ToEven) / p, // Python round(): half to even
                };
            }
            case "upper": return Str(v, name).ToUpperInvariant();
            case "lower": return Str(v, name).ToLowerInvariant();
            case "capitalize": return Capitalize(Str(v, name));
            case "title": return TitleFilter(Str(v, name));
            case "trim": return StripChars(Str(v, name), Arg(a, kw, 0, "chars"), true, true);
            case "replace":
            {
                string s = Str(v, name);
                return Replace(s, Py.Str(Arg(a, kw, 0, "old")), Py.Str(Arg(a, kw, 1, "new")), Arg(a, kw, 2, "count"));
            }
            case "split": return Split(Str(v, name), Arg(a, kw, 0, "sep"), Arg(a, kw, 1, "maxsplit"));
            case "indent": return Indent(Str(v, name), Arg(a, kw, 0, "width", 4L), Py.Truthy(Arg(a, kw, 1, "first", false)), Py.Truthy(Arg(a, kw, 2, "blank", false)));
            case "wordcount": return (long)Str(v, name).Split((char[]?)null, StringSplitOptions.RemoveEmptyEntries).Length;
            case "center":
            {
                string s = Str(v, name);
                long wide = Py.ToLong(Arg(a, kw, 0, "width", 80L));
                if (s.Length >= wide) return s;
                CheckSize(wide, "the centred string");
                int width = (int)wide;
                int left = (width - s.Length) / 2 + ((width - s.Length) % 2 & width % 2);
                return new string(' ', left) + s + new string(' ', width - s.Length - left);
            }
            case "escape" or "e" or "forceescape":
                return Str(v, name).Replace("&", "&amp;", StringComparison.Ordinal).Replace("<", "&lt;", StringComparison.Ordinal)
                    .Replace(">", "&gt;", StringComparison.Ordinal).Replace("\"", "&#34;", StringComparison.Ordinal).Replace("'", "&#39;", StringComparison.Ordinal);
            case "attr": return GetAttribute(v, Py.Str(Arg(a, kw, 0, "name")), "value");
            case "selectattr" or "rejectattr":
            {
                var attr = Arg(a, kw, 0, "attribute") ?? throw Err($"{name} needs an attribute name");
                bool keep = name == "selectattr";
                return Seq(v).Where(x => TestOrTruthy(Lookup(x, attr), a, 1, line, column) == keep).ToList();
            }
            case "select" or "reject":
            {
                bool keep = name == "select";
                return Seq(v).Where(x => TestOrTruthy(x, a, 0, line, column) == keep).ToList();
            }
            case "map":
            {
                if (kw.TryGetValue("attribute", out var attr))
                {
                    bool hasDefault = kw.TryGetValue("default", out var dflt);
                    return Seq(v).Select(x =>
                    {
                        var r = Lookup(x, attr);
                        return r is Undefined && hasDefault ? dflt : r;
                    }).ToList();
                }
                if (a.Count == 0 || a[0] is not string filter) throw Err("map needs a filter name or attribute=...");
                var rest = a.Skip(1).ToList();
                return Seq(v).Select(x => Filter(filter, x, rest, kw, line, column)).ToList();
            }
            case "unique":
            {
                bool caseSensitive = Py.Truthy(Arg(a, kw, 0, "case_sensitive", false));
                var attr = Arg(a, kw, 1, "attribute");
                var seen = new List<object?>();
                var result = new List<object?>();
                foreach (var x in Seq(v))
                {
                    var key = attr is null ? x : Lookup(x, attr);
                    if (!caseSensitive && key is string ks) key = ks.ToLowerInvariant();
                    if (seen.Any(s => Py.Equals(s, key))) continue;
                    seen.Add(key);
                    result.Add(x);
                }
                return result;
            }
            case "sort":
            {
                bool reverse = Py.Truthy(Arg(a, kw, 0, "reverse", false));
                bool caseSensitive = Py.Truthy(Arg(a, kw, 1, "case_sensitive", false));
                var attr = Arg(a, kw, 2, "attribute");
                object? Key(object? x)
                {
                    var k = attr is null ? x : Lookup(x, attr);
                    return !caseSensitive && k is string s ? s.ToLowerInvariant() : k;
                }
                var list = Seq(v).ToList();
                var sorted = list.Select((x, i) => (x, i)).OrderBy(p => p, Comparer<(object? x, int i)>.Create((p, q) =>
                {
                    int c = Py.Compare(Key(p.x), Key(q.x));
                    return c != 0 ? (reverse ? -c : c) : p.i.CompareTo(q.i);
                })).Select(p => p.x).ToList();
                return sorted;
            }
            case "dictsort":
            {
                if (v is not Dictionary<string, object?> map) throw Err("dictsort needs a mapping");
                bool caseSensitive = Py.Truthy(Arg(a, kw, 0, "case_sensitive", false));
                string by = Py.Str(Arg(a, kw, 1, "by", "key"));
                bool reverse = Py.Truthy(Arg(a, kw, 2, "reverse", false));
                object? Key(KeyValuePair<string, object?> p)
                {
                    var k = by == "value" ? p.Value : p.Key;
                    return !caseSensitive && k is string s ? s.ToLowerInvariant() : k;
                }
                var pairs = map.ToList();
                pairs.Sort((p, q) => (reverse ? -1 : 1) * Py.Compare(Key(p), Key(q)));
                return pairs.Select(p => (object?)new PyTuple([p.Key, p.Value])).ToList();
            }
            case "sum":
            {
                var attr = Arg(a, kw, 0, "attribute");
                object? total = Arg(a, kw, 1, "start", 0L);
                foreach (var x in Seq(v)) total = Binary("+", total, attr is null ? x : Lookup(x, attr));
                return total;
            }
            case "min" or "max":
            {
                var list = Seq(v);
                if (list.Count == 0) return new Undefined($"{name} of an empty sequence");
                var best = list[0];
                foreach (var x in list.Skip(1))
                    if ((Py.Compare(x, best) < 0) == (name == "min") && !Py.Equals(x, best)) best = x;
                return best;
            }
            case "format":
                return PercentFormat(Str(v, name), a.Count == 1 ? a[0] : new PyTuple(a));
            case "batch":
            {
                int size = (int)Py.ToLong(Arg(a, kw, 0, "linecount"));
                if (size <= 0) throw Err("batch size must be positive");
                return Seq(v).Chunk(size).Select(c => (object?)c.ToList()).ToList();
            }
            default:
                throw new ChatTemplateException($"unknown or unsupported filter '{name}'", line, column);
        }
    }

    static string Str(object? v, string filter) => v switch
    {
        string s => s,
        Undefined => "",
        _ => Py.Str(v),
    };

    static List<object?> Seq(object? v) => v is string s ? Py.StringElements(s).Select(c => (object?)c).ToList() : Py.Iterate(v);

    // selectattr("x"), selectattr("x", "equalto", 1): a test with arguments, or plain truthiness.
    static bool TestOrTruthy(object? value, List<object?> a, int testIndex, int line, int column)
    {
        if (a.Count <= testIndex) return Py.Truthy(value);
        string test = Py.Str(a[testIndex]);
        return Test(test, value, a.Skip(testIndex + 1).ToList(), line, column);
    }

    // attribute="a.b" or an integer index, as Jinja's make_attrgetter does.
    static object? Lookup(object? item, object? attribute)
    {
        if (Py.IsInteger(attribute)) return GetItem(item, attribute, "item");
        object? cur = item;
        foreach (var part in Py.Str(attribute).Split('.'))
        {
            if (cur is Undefined) return cur;
            cur = long.TryParse(part, NumberStyles.None, CultureInfo.InvariantCulture, out long idx) && cur is List<object?>
                ? GetItem(cur, idx, "item")
                : GetItem(cur, part, "item");
        }
        return cur;
    }

    static object? ToInt(object? v, object? fallback, long numberBase)
    {
        switch (v)
        {
            case long or bool: return Py.ToLong(v);
            case double d: return double.IsFinite(d) ? (long)Math.Truncate(d) : fallback;
            case string s:
                s = s.Trim().Replace("_", "", StringComparison.Ordinal);
                if (numberBase == 10 && long.TryParse(s, NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out long n)) return n;
                if (numberBase == 16 && long.TryParse(s.StartsWith("0x", StringComparison.OrdinalIgnoreCase) ? s[2..] : s, NumberStyles.HexNumber, CultureInfo.InvariantCulture, out long h)) return h;
                if (double.TryParse(s, NumberStyles.Float, CultureInfo.InvariantCulture, out double f) && double.IsFinite(f)) return (long)Math.Truncate(f);
                return fallback;
            default: return fallback;
        }
    }

    static object? ToFloat(object? v, object? fallback) => v switch
    {
        long or bool => Py.ToDouble(v),
        double d => d,
        string s when double.TryParse(s.Trim(), NumberStyles.Float, CultureInfo.InvariantCulture, out double f) => f,
        _ => fallback,
    };

    static string Capitalize(string s) => s.Length == 0 ? s : char.ToUpperInvariant(s[0]) + s[1..].ToLowerInvariant();

    // Jinja's title filter (not str.title()): words begin after '-', whitespace or an opening bracket.
    static string TitleFilter(string s) => string.Concat(
        System.Text.RegularExpressions.Regex.Split(s, @"([-\s\(\{\[\<]+)")
            .Where(item => item.Length > 0)
            .Select(item => char.ToUpperInvariant(item[0]) + item[1..].ToLowerInvariant()));

    // Python's str.title(): a letter after a non-letter is upper-cased, every other letter lower-cased.
    static string Title(string s)
    {
        var sb = new StringBuilder(s.Length);
        bool prevLetter = false;
        foreach (char c in s)
        {
            bool letter = char.IsLetter(c);
            sb.Append(letter ? (prevLetter ? char.ToLowerInvariant(c) : char.ToUpperInvariant(c)) : c);
            prevLetter = letter;
        }
        return sb.ToString();
    }

    static string StripChars(string s, object? chars, bool left, bool right)
    {
        if (chars is null or Undefined)
        {
            if (left) s = s.TrimStart();
            if (right) s = s.TrimEnd();
            return s;
        }
        var set = Py.Str(chars).ToCharArray();
        if (set.Length == 0) return s; // strip('') strips nothing (.NET's Trim() would trim whitespace)
        if (left) s = s.TrimStart(set);
        if (right) s = s.TrimEnd(set);
        return s;
    }

    static string Replace(string s, string old, string @new, object? count)
    {
        long max = count is null or Undefined ? -1 : Py.ToLong(count);
        if (@new.Length > old.Length)
        {
            long hits = 0;
            if (old.Length == 0) hits = Py.StringElements(s).Count + 1;
            else for (int i = s.IndexOf(old, StringComparison.Ordinal); i >= 0; i = s.IndexOf(old, i + old.Length, StringComparison.Ordinal)) hits++;
            if (max >= 0) hits = Math.Min(hits, max);
            CheckSize(s.Length + Product(hits, @new.Length - old.Length), "the replaced string");
        }
        if (max < 0) return old.Length == 0 ? string.Join(@new, Py.StringElements(s).Prepend("").Append("")) : s.Replace(old, @new, StringComparison.Ordinal);
        var sb = new StringBuilder();
        int pos = 0;
        for (long done = 0; done < max; done++)
        {
            int i = s.IndexOf(old, pos, StringComparison.Ordinal);
            if (i < 0 || old.Length == 0) break;
            sb.Append(s, pos, i - pos).Append(@new);
            pos = i + old.Length;
        }
        return sb.Append(s, pos, s.Length - pos).ToString();
    }

    static List<object?> Split(string s, object? sep, object? maxsplit)
    {
        long max = maxsplit is null or Undefined ? -1 : Py.ToLong(maxsplit);
        var parts = new List<object?>();
        if (sep is null or Undefined)
        {
            // Python: runs of whitespace, no empty strings at either end.
            int i = 0;
            while (true)
            {
                while (i < s.Length && char.IsWhiteSpace(s[i])) i++;
                if (i >= s.Length) break;
                if (max >= 0 && parts.Count == max)
                {
                    parts.Add(s[i..]); // Python keeps the remainder's trailing whitespace
                    break;
                }
                int start = i;
                while (i < s.Length && !char.IsWhiteSpace(s[i])) i++;
                parts.Add(s[start..i]);
            }
            return parts;
        }
        string sp = Py.Str(sep);
        if (sp.Length == 0) throw Err("empty separator");
        int pos = 0;
        while (max < 0 || parts.Count < max)
        {
            int i = s.IndexOf(sp, pos, StringComparison.Ordinal);
            if (i < 0) break;
            parts.Add(s[pos..i]);
            pos = i + sp.Length;
        }
        parts.Add(s[pos..]);
        return parts;
    }

    // Jinja's indent filter, quirks included: the text gets a "\n" appended before splitlines(), so a
    // trailing line break survives; empty lines stay unindented unless blank; first indents line one.
    static string Indent(string s, object? width, bool first, bool blank)
    {
        long padLength = width is string w0 ? w0.Length : Math.Max(0, Py.ToLong(width));
        CheckSize(padLength, "the indent");
        string pad = width is string w ? w : new string(' ', (int)padLength);
        var lines = SplitLines(s + "\n");
        CheckSize(s.Length + Product(padLength, lines.Count), "the indented string");
        string rv;
        if (blank) rv = string.Join("\n" + pad, lines);
        else
        {
            rv = lines.Count > 0 ? lines[0] : "";
            if (lines.Count > 1) rv += "\n" + string.Join("\n", lines.Skip(1).Select(l => l.Length > 0 ? pad + l : l));
        }
        return first ? pad + rv : rv;
    }

    // Python's str.splitlines() for \n, \r\n and \r: no empty string after a final line break.
    static List<string> SplitLines(string s)
    {
        var lines = new List<string>();
        int start = 0;
        for (int i = 0; i < s.Length; i++)
        {
            if (s[i] is not ('\n' or '\r')) continue;
            lines.Add(s[start..i]);
            if (s[i] == '\r' && i + 1 < s.Length && s[i + 1] == '\n') i++;
            start = i + 1;
        }
        if (start < s.Length) lines.Add(s[start..]);
        return lines;
    }

    // Python's printf-style "%s" % x for %s, %r, %d, %i, %f (with precision) and %%; x is one value or a tuple.
    static string PercentFormat(string format, object? args)
    {
        var values = args is PyTuple t ? t.Items : [args];
        var sb = new StringBuilder();
        int next = 0;
        object? Take() => next < values.Count ? values[next++] : throw Err("not enough arguments for format string");
        for (int i = 0; i < format.Length; i++)
        {
            char c = format[i];
            if (c != '%') { sb.Append(c); continue; }
            if (++i >= format.Length) throw Err("incomplete format");
            int precision = -1;
            if (format[i] == '.')
            {
                int start = ++i;
                while (i < format.Length && char.IsAsciiDigit(format[i])) i++;
                precision = int.Parse(format.AsSpan(start, i - start), CultureInfo.InvariantCulture);
                CheckSize(precision, "the formatted number");
                if (i >= format.Length) throw Err("incomplete format");
            }
            switch (format[i])
            {
                case '%': sb.Append('%'); break;
                case 's': sb.Append(Py.Str(Take())); break;
                case 'r': sb.Append(Py.Repr(Take())); break;
                case 'd' or 'i': sb.Append(Py.ToLong(Defined(Take())).ToString(CultureInfo.InvariantCulture)); break;
                case 'f': sb.Append(Py.ToDouble(Defined(Take())).ToString("F" + (precision < 0 ? 6 : precision), CultureInfo.InvariantCulture)); break;
                default: throw Err($"unsupported format character '{format[i]}'");
            }
            CheckSize(sb.Length, "the formatted string");
        }
        if (next < values.Count && args is PyTuple) throw Err("not all arguments converted during string formatting");
        return sb.ToString();
    }

    // Python's str.format for "{}", "{0}" and "{name}" (no format specs); "{{" and "}}" are literal braces.
    static string BraceFormat(string format, List<object?> args, Dictionary<string, object?> kwargs)
    {
        var sb = new StringBuilder();
        int auto = 0;
        for (int i = 0; i < format.Length; i++)
        {
            char c = format[i];
            if (c == '{' && i + 1 < format.Length && format[i + 1] == '{') { sb.Append('{'); i++; continue; }
            if (c == '}' && i + 1 < format.Length && format[i + 1] == '}') { sb.Append('}'); i++; continue; }
            if (c != '{') { sb.Append(c); continue; }
            int end = format.IndexOf('}', i);
            if (end < 0) throw Err("single '{' encountered in format string");
            string field = format[(i + 1)..end];
            if (field.Contains(':', StringComparison.Ordinal) || field.Contains('!', StringComparison.Ordinal))
                throw Err("format specs in str.format are not supported");
            object? value = field.Length == 0 ? (auto < args.Count ? args[auto++] : throw Err("replacement index out of range"))
                : int.TryParse(field, NumberStyles.None, CultureInfo.InvariantCulture, out int k) ? (k < args.Count ? args[k] : throw Err("replacement index out of range"))
                : kwargs.TryGetValue(field, out var named) ? named : throw Err($"no argument named '{field}'");
            sb.Append(Py.Str(value));
            CheckSize(sb.Length, "the formatted string");
            i = end;
        }
        return sb.ToString();
    }

    // ---- methods ------------------------------------------------------------------------------

    static Callable? DictMethod(Dictionary<string, object?> d, string name) => name switch
    {
        "get" => Method("dict.get", (a, kw) => a.Count > 0 && a[0] is string k && d.TryGetValue(k, out var v) ? v : Arg(a, kw, 1, "default")),
        "items" => Method("dict.items", (_, _) => d.Select(p => (object?)new PyTuple([p.Key, p.Value])).ToList()),
        "keys" => Method("dict.keys", (_, _) => d.Keys.Select(k => (object?)k).ToList()),
        "values" => Method("dict.values", (_, _) => d.Values.ToList()),
        _ => null,
    };

    static Callable? ListMethod(List<object?> l, string name) => name switch
    {
        "index" => Method("list.index", (a, _) =>
        {
            int i = l.FindIndex(x => Py.Equals(x, a.Count > 0 ? a[0] : null));
            return i >= 0 ? (long)i : throw Err("value is not in list");
        }),
        "count" => Method("list.count", (a, _) => (long)l.Count(x => Py.Equals(x, a.Count > 0 ? a[0] : null))),
        _ => null,
    };

    static Callable? StringMethod(string s, string name) => name switch
    {
        "strip" => Method("str.strip", (a, kw) => StripChars(s, Arg(a, kw, 0, "chars"), true, true)),
        "lstrip" => Method("str.lstrip", (a, kw) => StripChars(s, Arg(a, kw, 0, "chars"), true, false)),
        "rstrip" => Method("str.rstrip", (a, kw) => StripChars(s, Arg(a, kw, 0, "chars"), false, true)),
        "split" => Method("str.split", (a, kw) => Split(s, Arg(a, kw, 0, "sep"), Arg(a, kw, 1, "maxsplit"))),
        "splitlines" => Method("str.splitlines", (_, _) => SplitLines(s).Select(x => (object?)x).ToList()),
        "startswith" => Method("str.startswith", (a, _) => Affix(a, p => s.StartsWith(p, StringComparison.Ordinal))),
        "endswith" => Method("str.endswith", (a, _) => Affix(a, p => s.EndsWith(p, StringComparison.Ordinal))),
        "upper" => Method("str.upper", (_, _) => s.ToUpperInvariant()),
        "lower" => Method("str.lower", (_, _) => s.ToLowerInvariant()),
        "title" => Method("str.title", (_, _) => Title(s)),
        "capitalize" => Method("str.capitalize", (_, _) => Capitalize(s)),
        "replace" => Method("str.replace", (a, kw) => Replace(s, Py.Str(Arg(a, kw, 0, "old")), Py.Str(Arg(a, kw, 1, "new")), Arg(a, kw, 2, "count"))),
        "find" => Method("str.find", (a, _) => (long)s.IndexOf(Py.Str(a.Count > 0 ? a[0] : ""), StringComparison.Ordinal)),
        "rfind" => Method("str.rfind", (a, _) => (long)s.LastIndexOf(Py.Str(a.Count > 0 ? a[0] : ""), StringComparison.Ordinal)),
        "count" => Method("str.count", (a, _) =>
        {
            string sub = Py.Str(a.Count > 0 ? a[0] : "");
            if (sub.Length == 0) return (long)Py.StringElements(s).Count + 1;
            long n = 0;
            for (int i = s.IndexOf(sub, StringComparison.Ordinal); i >= 0; i = s.IndexOf(sub, i + sub.Length, StringComparison.Ordinal)) n++;
            return n;
        }),
        "join" => Method("str.join", (a, _) =>
        {
            var parts = Seq(a.Count > 0 ? a[0] : null).Select(x =>
                x as string ?? throw Err($"sequence item: expected str instance, {Py.TypeName(x)} found")).ToList();
            CheckSize(parts.Sum(x => (long)x.Length) + Product(s.Length, Math.Max(0, parts.Count - 1)), "the joined string");
            return string.Join(s, parts);
        }),
        "format" => Method("str.format", (a, kw) => BraceFormat(s, a, kw)),
        "isdigit" => Method("str.isdigit", (_, _) => s.Length > 0 && s.All(char.IsDigit)),
        "isalpha" => Method("str.isalpha", (_, _) => s.Length > 0 && s.All(char.IsLetter)),
        "isspace" => Method("str.isspace", (_, _) => s.Length > 0 && s.All(char.IsWhiteSpace)),
        "islower" => Method("str.islower", (_, _) => s.Any(char.IsLetter) && !s.Any(char.IsUpper)),
        "isupper" => Method("str.isupper", (_, _) => s.Any(char.IsLetter) && !s.Any(char.IsLower)),
        _ => null,
    };

    static bool Affix(List<object?> a, Func<string, bool> test)
    {
        if (a.Count == 0) throw Err("startswith/endswith need an argument");
        return a[0] switch
        {
            string p => test(p),
            PyTuple t => t.Items.Any(x => x is string p && test(p)),
            _ => throw Err("startswith/endswith take a string or a tuple of strings"),
        };
    }
}
