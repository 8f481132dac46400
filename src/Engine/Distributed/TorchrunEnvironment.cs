using System.Globalization;

namespace TokenMill.Distributed;

/// <summary>A missing, malformed or inconsistent multi-process environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT).</summary>
public sealed class DistributedEnvironmentException(string message) : Exception(message);

/// <summary>
/// Where this process sits in a group of processes, read from the variables <c>torchrun</c> (and Slurm or
/// Kubernetes launchers imitating it) set for each process: <c>RANK</c> (0 … WORLD_SIZE−1, over all machines),
/// <c>WORLD_SIZE</c>, <c>LOCAL_RANK</c> (the rank on this machine, which picks the GPU), and
/// <c>MASTER_ADDR</c>:<c>MASTER_PORT</c>, where rank 0 listens for the others (<see cref="UniqueIdRendezvous"/>).
/// </summary>
public sealed record TorchrunEnvironment(int Rank, int WorldSize, int LocalRank, string MasterAddress, int MasterPort)
{
    /// <summary>The variables, in the order a message lists them.</summary>
    public static readonly string[] Variables = ["RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"];

    /// <summary>Reads the process environment; null when none of the variables is set (a single process).</summary>
    public static TorchrunEnvironment? FromProcess() => Parse(Environment.GetEnvironmentVariable);

    /// <summary>
    /// Parses the variables through <paramref name="environment"/> (a parameter so tests can vary it). Null when none
    /// is set; otherwise all five must be set and consistent, or a <see cref="DistributedEnvironmentException"/> says
    /// which is wrong.
    /// </summary>
    public static TorchrunEnvironment? Parse(Func<string, string?> environment)
    {
        ArgumentNullException.ThrowIfNull(environment);
        var values = Variables.ToDictionary(v => v, v => environment(v) is { Length: > 0 } s ? s.Trim() : null);
        if (values.Values.All(v => v is null)) return null;
        var missing = Variables.Where(v => values[v] is null).ToList();
        if (missing.Count > 0)
            throw new DistributedEnvironmentException(
                $"{string.Join(", ", Variables.Where(v => values[v] is not null))} {(Variables.Length - missing.Count == 1 ? "is" : "are")} set but " +
                $"{string.Join(", ", missing)} {(missing.Count == 1 ? "is" : "are")} not: a multi-process run needs all of {string.Join(", ", Variables)} " +
                "(torchrun sets them; by hand, set them for every process)");

        int worldSize = Integer(values, "WORLD_SIZE", 1, int.MaxValue);
        int rank = Integer(values, "RANK", 0, int.MaxValue);
        if (rank >= worldSize) throw new DistributedEnvironmentException($"RANK={rank} is not below WORLD_SIZE={worldSize} (ranks are 0 … {worldSize - 1})");
        int localRank = Integer(values, "LOCAL_RANK", 0, int.MaxValue);
        if (localRank > rank)
            throw new DistributedEnvironmentException($"LOCAL_RANK={localRank} is above RANK={rank}: the rank on this machine cannot exceed the rank over all machines");
        int port = Integer(values, "MASTER_PORT", 1, 65535);
        string address = values["MASTER_ADDR"]!;
        if (address.Contains(' ', StringComparison.Ordinal) || Uri.CheckHostName(address.Trim('[', ']')) == UriHostNameType.Unknown)
            throw new DistributedEnvironmentException($"MASTER_ADDR='{address}' is not a host name or an IP address");
        return new TorchrunEnvironment(rank, worldSize, localRank, address, port);
    }

    static int Integer(Dictionary<string, string?> values, string name, int min, int max)
    {
        string s = values[name]!;
        if (!int.TryParse(s, NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out int v))
            throw new DistributedEnvironmentException($"{name} must be a whole number, got '{s}'");
        if (v < min || v > max)
            throw new DistributedEnvironmentException(max == int.MaxValue ? $"{name} must be at least {min}, got {v}" : $"{name} must be between {min} and {max}, got {v}");
        return v;
    }
}
