namespace TokenMill.Tests.Fuzz;

/// <summary>
/// Fuzz campaigns run a short version in every test run and a long one on demand:
/// <c>TOKENMILL_FUZZ_SCALE=300 dotnet test -c Release --filter Category=Fuzz</c> runs 300 times the CI count.
/// </summary>
public static class FuzzSettings
{
    public static int Iterations(int ciDefault) =>
        int.TryParse(Environment.GetEnvironmentVariable("TOKENMILL_FUZZ_SCALE"), out int scale) && scale > 0
            ? checked(ciDefault * scale)
            : ciDefault;

    /// <summary>Seed of a campaign: fixed by default so CI is repeatable; TOKENMILL_FUZZ_SEED explores new ground.</summary>
    public static int Seed(int fallback) =>
        int.TryParse(Environment.GetEnvironmentVariable("TOKENMILL_FUZZ_SEED"), out int s) ? s : fallback;

    /// <summary>
    /// Seconds a campaign idles at its end, reporting what the heap gives back (TOKENMILL_FUZZ_IDLE_SECONDS; 0 in CI):
    /// pooled buffers are trimmed only after they have gone unused for a while.
    /// </summary>
    public static int IdleSeconds =>
        int.TryParse(Environment.GetEnvironmentVariable("TOKENMILL_FUZZ_IDLE_SECONDS"), out int s) && s > 0 ? s : 0;
}
