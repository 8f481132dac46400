namespace TokenMill.Tests.Fuzz;

/// <summary>
/// Fuzz campaigns run a short version in every test run and a long one on demand:
/// <c>TOKENMILL_FUZZ_ITERATIONS=1000000 dotnet test --filter Category=Fuzz</c>.
/// </summary>
public static class FuzzSettings
{
    public static int Iterations(int ciDefault) =>
        int.TryParse(Environment.GetEnvironmentVariable("TOKENMILL_FUZZ_ITERATIONS"), out int n) && n > 0 ? n : ciDefault;

    /// <summary>Seed of a campaign: fixed by default so CI is repeatable; TOKENMILL_FUZZ_SEED explores new ground.</summary>
    public static int Seed(int fallback) =>
        int.TryParse(Environment.GetEnvironmentVariable("TOKENMILL_FUZZ_SEED"), out int s) ? s : fallback;
}
