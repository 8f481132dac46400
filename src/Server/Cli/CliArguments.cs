using System.Globalization;

namespace TokenMill.Server.Cli;

/// <summary>A command-line mistake: printed as one line with the command's usage hint, exit code 2.</summary>
public sealed class UsageException(string message) : Exception(message);

/// <summary>
/// The options of one subcommand: <c>--name value</c>, <c>--name=value</c>, boolean <c>--flag</c>
/// and positional arguments. Every option must be declared, so a typo is an error, not a silent
/// default; every value is parsed with a message that names the option.
/// </summary>
public sealed class CliArguments
{
    readonly Dictionary<string, string?> _values = new(StringComparer.Ordinal);
    readonly List<string> _positional = [];

    public CliArguments(string command, IEnumerable<string> args, IReadOnlySet<string> valueOptions, IReadOnlySet<string> flags)
    {
        Command = command;
        // Short forms as vLLM spells them: -tp N is --tensor-parallel-size N.
        args = args.Select(a => ShortForms.TryGetValue(a, out var full) && valueOptions.Contains(full[2..]) ? full : a);
        using var e = args.GetEnumerator();
        bool onlyPositional = false;
        while (e.MoveNext())
        {
            string a = e.Current;
            if (onlyPositional || !a.StartsWith("--", StringComparison.Ordinal) || a == "--")
            {
                if (a == "--" && !onlyPositional) { onlyPositional = true; continue; }
                _positional.Add(a);
                continue;
            }
            string name = a[2..];
            string? inline = null;
            int eq = name.IndexOf('=', StringComparison.Ordinal);
            if (eq >= 0) (name, inline) = (name[..eq], name[(eq + 1)..]);

            if (flags.Contains(name))
            {
                if (inline is not null) throw new UsageException($"option --{name} takes no value");
                _values[name] = null;
            }
            else if (valueOptions.Contains(name))
            {
                if (inline is null)
                {
                    if (!e.MoveNext()) throw new UsageException($"option --{name} needs a value");
                    inline = e.Current;
                }
                if (_values.ContainsKey(name)) throw new UsageException($"option --{name} is given twice");
                _values[name] = inline;
            }
            else if (name == "config")
            {
                if (inline is null)
                {
                    if (!e.MoveNext()) throw new UsageException("option --config needs a value");
                    inline = e.Current;
                }
                configFile = inline;
            }
            else
            {
                throw new UsageException($"unknown option --{name} for '{command}'");
            }
        }

        // Precedence: the command line, then TOKENMILL_* environment variables, then --config FILE, then defaults.
        foreach (var name in valueOptions.Concat(flags).Where(n => n != "help"))
        {
            if (_values.ContainsKey(name)) continue;
            string env = "TOKENMILL_" + name.Replace('-', '_').ToUpperInvariant();
            if (Environment.GetEnvironmentVariable(env) is { Length: > 0 } value)
            {
                if (flags.Contains(name))
                {
                    if (value is "1" or "true" or "yes") _values[name] = null;
                    else if (value is not ("0" or "false" or "no")) throw new UsageException($"{env} must be true or false, got '{value}'");
                }
                else _values[name] = value;
            }
        }
        if (configFile is not null)
            foreach (var (name, value) in ConfigFile.Read(configFile))
            {
                if (!valueOptions.Contains(name) && !flags.Contains(name))
                    throw new UsageException($"{configFile}: unknown option '{name}' for '{command}'");
                if (_values.ContainsKey(name)) continue;
                if (flags.Contains(name))
                {
                    if (value is "true") _values[name] = null;
                    else if (value is not "false") throw new UsageException($"{configFile}: '{name}' must be true or false, got '{value}'");
                }
                else _values[name] = value;
            }
    }

    string? configFile;

    static readonly Dictionary<string, string> ShortForms = new(StringComparer.Ordinal) { ["-tp"] = "--tensor-parallel-size" };

    public string Command { get; }
    public IReadOnlyList<string> Positional => _positional;

    public bool Flag(string name) => _values.ContainsKey(name);

    public string? String(string name) => _values.TryGetValue(name, out var v) ? v : null;

    public int Int(string name, int defaultValue, int min = int.MinValue, int max = int.MaxValue)
    {
        if (String(name) is not { } s) return defaultValue;
        if (!int.TryParse(s, NumberStyles.Integer, CultureInfo.InvariantCulture, out int v))
            throw new UsageException($"--{name} must be a whole number, got '{s}'");
        if (v < min || v > max)
            throw new UsageException($"--{name} must be between {min} and {max}, got {v}");
        return v;
    }

    public float Float(string name, float defaultValue, float min = float.MinValue, float max = float.MaxValue)
    {
        if (String(name) is not { } s) return defaultValue;
        if (!float.TryParse(s, NumberStyles.Float, CultureInfo.InvariantCulture, out float v) || !float.IsFinite(v))
            throw new UsageException($"--{name} must be a number, got '{s}'");
        if (v < min || v > max)
            throw new UsageException($"--{name} must be between {min} and {max}, got {v}");
        return v;
    }

    public ulong? ULong(string name)
    {
        if (String(name) is not { } s) return null;
        if (!ulong.TryParse(s, NumberStyles.Integer, CultureInfo.InvariantCulture, out ulong v))
            throw new UsageException($"--{name} must be a non-negative whole number, got '{s}'");
        return v;
    }
}
