using System.Diagnostics;
using System.Text;
using System.Text.RegularExpressions;

namespace TokenMill.Tests.Fuzz;

/// <summary>
/// Counts a campaign's outcomes by kind — the error with its names and numbers blanked, so
/// "tensor 'a' offset: 17 lies past the end" and "tensor 'b' offset: 9 lies past …" count as one —
/// and prints the tally, the rate and the time, which is what a campaign's report states.
/// </summary>
public sealed partial class RejectionCensus
{
    readonly Dictionary<string, long> _counts = new(StringComparer.Ordinal);
    readonly Stopwatch _clock = Stopwatch.StartNew();

    public long Total { get; private set; }

    public void Add(string outcome)
    {
        _counts[outcome] = _counts.GetValueOrDefault(outcome) + 1;
        Total++;
    }

    /// <summary>The kind of an error message: the input's name dropped, quoted names and numbers blanked.</summary>
    public static string KindOf(string message, string inputName)
    {
        string m = message.StartsWith(inputName + ": ", StringComparison.Ordinal) ? message[(inputName.Length + 2)..] : message;
        m = Quoted().Replace(m, "'…'");
        m = Number().Replace(m, "#");
        return m.Length > 90 ? m[..90] : m;
    }

    public long Count(string outcome) => _counts.GetValueOrDefault(outcome);

    public long CountWhere(Func<string, bool> kind) => _counts.Where(p => kind(p.Key)).Sum(p => p.Value);

    public string Report(string campaign, int top = 25)
    {
        double seconds = _clock.Elapsed.TotalSeconds;
        var sb = new StringBuilder($"{campaign}: {Total:N0} inputs in {seconds:F1} s ({Total / Math.Max(seconds, 1e-9):N0}/s), {_counts.Count} kinds of outcome\n");
        foreach (var (kind, n) in _counts.OrderByDescending(p => p.Value).Take(top))
            sb.Append($"  {n,10:N0}  {kind}\n");
        if (_counts.Count > top) sb.Append($"  … {_counts.Count - top} rarer kinds, {_counts.OrderByDescending(p => p.Value).Skip(top).Sum(p => p.Value):N0} inputs\n");
        return sb.ToString();
    }

    [GeneratedRegex("'[^']*'|\"[^\"]*\"")]
    private static partial Regex Quoted();

    [GeneratedRegex(@"-?\d+(\.\d+)?(E[+-]?\d+)?")]
    private static partial Regex Number();
}
