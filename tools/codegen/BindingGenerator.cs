using System.Globalization;
using System.Text;

namespace TokenMill.Codegen;

/// <summary>
/// Turns one declaration file (<c>native/*.decl</c>, format in <c>native/README.md</c>) into C# source:
/// typed handle structs, enums with the C member names, and per function a private blittable
/// <c>[LibraryImport]</c> plus a public wrapper that checks the status in one place.
/// Pure text in, text out, so the test suite can run it in-process against the committed files.
/// </summary>
public static class BindingGenerator
{
    public const string Namespace = "TokenMill.Interop";

    /// <summary>Generated file name for a declaration file: <c>CudaApi.g.cs</c> for the class it declares.</summary>
    public static (string FileName, string Source) Generate(string declText, string declName)
    {
        var d = Parse(declText, declName);
        return ($"{d.ClassName}.g.cs", Emit(d, declName));
    }

    /// <summary>Every <c>*.decl</c> in <paramref name="nativeDir"/> with its generated file, ordered by name.</summary>
    public static IReadOnlyList<(string FileName, string Source)> GenerateAll(string nativeDir) =>
        Directory.GetFiles(nativeDir, "*.decl").Order(StringComparer.Ordinal)
            .Select(p => Generate(File.ReadAllText(p), Path.GetFileName(p))).ToList();

    /// <summary>The repository root: the first folder upwards from <paramref name="start"/> holding Engine.sln.</summary>
    public static string FindRepositoryRoot(string start)
    {
        for (var dir = new DirectoryInfo(start); dir is not null; dir = dir.Parent)
            if (File.Exists(Path.Combine(dir.FullName, "Engine.sln"))) return dir.FullName;
        throw new DirectoryNotFoundException($"no Engine.sln in {start} or any folder above it");
    }

    /// <summary>Human-readable differences between the generated sources and the files in <paramref name="generatedDir"/>; empty when up to date.</summary>
    public static IReadOnlyList<string> Verify(string nativeDir, string generatedDir)
    {
        var problems = new List<string>();
        var expected = GenerateAll(nativeDir);
        foreach (var (name, source) in expected)
        {
            string path = Path.Combine(generatedDir, name);
            if (!File.Exists(path)) { problems.Add($"{name}: missing"); continue; }
            string actual = File.ReadAllText(path);
            if (actual == source) continue;
            var a = actual.Split('\n');
            var e = source.Split('\n');
            int line = 0;
            while (line < a.Length && line < e.Length && a[line] == e[line]) line++;
            problems.Add($"{name}: stale from line {line + 1}\n  committed: {(line < a.Length ? a[line] : "<end of file>")}\n  generated: {(line < e.Length ? e[line] : "<end of file>")}");
        }
        if (Directory.Exists(generatedDir))
            foreach (var path in Directory.GetFiles(generatedDir, "*.g.cs"))
                if (!expected.Any(x => x.FileName == Path.GetFileName(path)))
                    problems.Add($"{Path.GetFileName(path)}: no declaration file generates it (delete it)");
        return problems;
    }

    // ---- model ---------------------------------------------------------------------------------

    sealed record Param(string CType, string CsType, string Name);
    sealed record Function(string ReturnCType, string ReturnCsType, string Name, List<Param> Params, bool Unchecked, string Declaration, int Line);
    sealed record EnumDecl(string Name, List<(string Member, long Value)> Members);

    sealed class Decl
    {
        public string Library = "", ClassName = "";
        public string? StatusType, StatusSuccess, StatusException;
        public readonly List<(string Name, string CsUnderlying, string CUnderlying)> Handles = [];
        public readonly List<(string Name, int Bytes)> Structs = [];
        public readonly Dictionary<string, string> Aliases = [];
        public readonly List<EnumDecl> Enums = [];
        public readonly List<Function> Functions = [];
        public readonly List<string> Comments = [];
    }

    static readonly Dictionary<string, string> Primitives = new()
    {
        ["void"] = "void", ["char"] = "byte", ["unsigned char"] = "byte", ["signed char"] = "sbyte",
        ["short"] = "short", ["unsigned short"] = "ushort", ["int"] = "int", ["unsigned int"] = "uint",
        ["long long"] = "long", ["unsigned long long"] = "ulong", ["size_t"] = "nuint",
        ["float"] = "float", ["double"] = "double",
    };

    static readonly HashSet<string> CSharpKeywords =
        ["base", "event", "object", "string", "params", "ref", "out", "in", "lock", "fixed", "checked", "operator", "internal", "decimal"];

    static Decl Parse(string text, string file)
    {
        var d = new Decl();
        EnumDecl? currentEnum = null;
        var lines = text.Replace("\r\n", "\n", StringComparison.Ordinal).Split('\n');
        for (int i = 0; i < lines.Length; i++)
        {
            string raw = lines[i];
            int hash = raw.IndexOf('#', StringComparison.Ordinal);
            string line = (hash >= 0 ? raw[..hash] : raw).TrimEnd();
            if (line.Length == 0) continue;
            string where = $"{file}:{i + 1}";

            if (char.IsWhiteSpace(line[0]))
            {
                if (currentEnum is null) throw new FormatException($"{where}: an indented line belongs to an enum, but no enum is open");
                var parts = line.Split('=', StringSplitOptions.TrimEntries);
                if (parts.Length != 2 || !long.TryParse(parts[1], NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out long v))
                    throw new FormatException($"{where}: expected 'NAME = integer', got '{line.Trim()}'");
                currentEnum.Members.Add((parts[0], v));
                continue;
            }
            currentEnum = null;
            var words = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
            switch (words[0])
            {
                case "library" when words.Length == 2: d.Library = words[1]; break;
                case "class" when words.Length == 2: d.ClassName = words[1]; break;
                case "status" when words.Length == 4:
                    (d.StatusType, d.StatusSuccess, d.StatusException) = (words[1], words[2], words[3]);
                    break;
                case "handle" when words.Length >= 2:
                    string cUnder = words.Length > 2 ? string.Join(' ', words[2..]) : "void*";
                    string csUnder = words.Length > 2
                        ? Primitives.GetValueOrDefault(cUnder) ?? throw new FormatException($"{where}: unknown handle type '{cUnder}'")
                        : "nint";
                    d.Handles.Add((words[1], csUnder, cUnder));
                    break;
                case "alias" when words.Length == 3: d.Aliases[words[1]] = words[2]; break;
                case "struct" when words.Length == 3: d.Structs.Add((words[1], int.Parse(words[2], CultureInfo.InvariantCulture))); break;
                case "enum" when words.Length == 2:
                    currentEnum = new EnumDecl(words[1], []);
                    d.Enums.Add(currentEnum);
                    break;
                default:
                    d.Functions.Add(ParseFunction(d, line, where, i + 1));
                    break;
            }
        }
        if (d.Library.Length == 0 || d.ClassName.Length == 0) throw new FormatException($"{file}: needs 'library NAME' and 'class NAME' lines");
        return d;
    }

    static Function ParseFunction(Decl d, string line, string where, int lineNumber)
    {
        bool isUnchecked = false;
        string decl = line.Trim();
        if (decl.StartsWith("unchecked ", StringComparison.Ordinal)) { isUnchecked = true; decl = decl["unchecked ".Length..].Trim(); }
        int open = decl.IndexOf('(', StringComparison.Ordinal), close = decl.LastIndexOf(')');
        if (open < 0 || close < open) throw new FormatException($"{where}: expected a C function declaration 'type name(params)', got '{line.Trim()}'");
        var (retC, name) = SplitTypeAndName(decl[..open].Trim(), where);
        string retCs = MapType(d, retC, where);
        var ps = new List<Param>();
        string plist = decl[(open + 1)..close].Trim();
        if (plist.Length > 0 && plist != "void")
            foreach (string p in plist.Split(','))
            {
                var (ct, pn) = SplitTypeAndName(p.Trim(), where);
                ps.Add(new Param(ct, MapType(d, ct, where), CSharpKeywords.Contains(pn) ? "@" + pn : pn));
            }
        if (isUnchecked && retC != d.StatusType) throw new FormatException($"{where}: 'unchecked' applies only to functions returning the status type {d.StatusType}");
        return new Function(retC, retCs, name, ps, isUnchecked, decl, lineNumber);
    }

    /// <summary>"const char* const* headers" → ("const char* const*", "headers").</summary>
    static (string Type, string Name) SplitTypeAndName(string s, string where)
    {
        int end = s.Length;
        int start = end;
        while (start > 0 && (char.IsLetterOrDigit(s[start - 1]) || s[start - 1] == '_')) start--;
        if (start == end || start == 0) throw new FormatException($"{where}: cannot split '{s}' into a C type and a name");
        return (s[..start].Trim(), s[start..]);
    }

    static string MapType(Decl d, string cType, string where)
    {
        string t = cType.Replace("*", " * ", StringComparison.Ordinal);
        var words = t.Split(' ', StringSplitOptions.RemoveEmptyEntries).Where(w => w != "const").ToList();
        int stars = words.Count(w => w == "*");
        string baseType = string.Join(' ', words.Where(w => w != "*"));
        string cs = Primitives.TryGetValue(baseType, out var prim) ? prim
            : d.Aliases.TryGetValue(baseType, out var alias) ? alias
            : d.Handles.Any(h => h.Name == baseType) || d.Enums.Any(e => e.Name == baseType) || d.Structs.Any(s => s.Name == baseType) ? baseType
            : throw new FormatException($"{where}: unknown C type '{baseType}' (declare it with handle/enum/struct/alias first)");
        if (cs == "void" && stars == 0) return "void";
        return cs + new string('*', stars);
    }

    // ---- emit ----------------------------------------------------------------------------------

    static string Emit(Decl d, string declName)
    {
        var sb = new StringBuilder();
        void L(string s = "") => sb.Append(s).Append('\n');

        L("// <auto-generated>");
        L($"// Generated by tools/codegen from native/{declName}. Do not edit: change the .decl file and run");
        L("// 'dotnet run --project tools/codegen'. The C declaration is kept next to each member.");
        L("// </auto-generated>");
        L("#nullable enable");
        L("using System.Runtime.InteropServices;");
        L();
        L($"namespace {Namespace};");

        foreach (var (name, csUnder, cUnder) in d.Handles)
        {
            L();
            L($"/// <summary>C <c>{name}</c> ({cUnder}), passed by value exactly as the native type.</summary>");
            if (csUnder is "nint" or "ulong")
            {
                // A pointer (or device address): zero is the null handle.
                L($"public readonly record struct {name}({csUnder} Value)");
                L("{");
                L($"    public bool IsNull => Value == 0;");
                L("}");
            }
            else
            {
                L($"public readonly record struct {name}({csUnder} Value);");   // an ordinal such as CUdevice: 0 is valid
            }
        }
        foreach (var (name, bytes) in d.Structs)
        {
            L();
            L($"/// <summary>C <c>{name}</c>: an opaque {bytes}-byte struct passed by value.</summary>");
            L($"public unsafe struct {name}");
            L("{");
            L($"    public const int Size = {bytes};");
            L($"    public fixed byte Bytes[{bytes}];");
            L("}");
        }
        foreach (var e in d.Enums)
        {
            L();
            L($"/// <summary>C <c>{e.Name}</c>, with the header's member names.</summary>");
            L($"public enum {e.Name}");
            L("{");
            foreach (var (m, v) in e.Members) L($"    {m} = {v.ToString(CultureInfo.InvariantCulture)},");
            L("}");
        }

        L();
        L($"/// <summary>Bindings of <c>{d.Library}</c> (native/{declName}). Public members check the status and throw; raw imports are private.</summary>");
        L($"public static unsafe partial class {d.ClassName}");
        L("{");
        L($"    /// <summary>The logical library name; <see cref=\"NativeLibraryResolver\"/> maps it to the installed soname.</summary>");
        L($"    public const string Library = \"{d.Library}\";");
        L();
        L($"    static {d.ClassName}() => NativeLibraryResolver.Register();");
        if (d.StatusType is not null)
        {
            L();
            L($"    /// <summary>The one place a {d.StatusType} becomes an exception.</summary>");
            L($"    public static void ThrowIfFailed({d.StatusType} status, string call)");
            L("    {");
            L($"        if (status != {d.StatusType}.{d.StatusSuccess}) throw {d.StatusException}.FromStatus(status, call);");
            L("    }");
        }
        foreach (var f in d.Functions)
        {
            L();
            string pub = string.Join(", ", f.Params.Select(p => $"{p.CsType} {p.Name} /* {p.CType} */"));
            string args = string.Join(", ", f.Params.Select(p => p.Name));
            bool check = f.ReturnCType == d.StatusType && !f.Unchecked;
            L($"    /// <summary><c>{Escape(f.Declaration)}</c>{(check ? $"; throws {d.StatusException} unless {d.StatusSuccess}." : f.Unchecked ? "; the status is returned, not thrown." : ".")}</summary>");
            if (check)
                L($"    public static void {f.Name}({pub}) => ThrowIfFailed({f.Name}_Raw({args}), \"{f.Name}\");");
            else
                L($"    public static {f.ReturnCsType} {f.Name}({pub}) => {f.Name}_Raw({args});");
            L();
            L($"    [LibraryImport(Library, EntryPoint = \"{f.Name}\")]");
            L($"    private static partial {f.ReturnCsType} {f.Name}_Raw({string.Join(", ", f.Params.Select(p => $"{p.CsType} {p.Name}"))});");
        }
        L("}");
        return sb.ToString();
    }

    static string Escape(string s) => s.Replace("&", "&amp;", StringComparison.Ordinal).Replace("<", "&lt;", StringComparison.Ordinal).Replace(">", "&gt;", StringComparison.Ordinal);
}
