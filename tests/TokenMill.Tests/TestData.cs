namespace TokenMill.Tests;

/// <summary>
/// Locates the shared test data (<c>../shared/testdata</c> next to the repository root, or the
/// folder named by <c>TOKENMILL_TESTDATA</c>). Tests that need it call <see cref="Require"/>,
/// which skips them with the reason when the data is absent.
/// </summary>
public static class TestData
{
    public static string? Root { get; } = Find();

    public static string RepoRoot => FindRepoRoot();

    static string FindRepoRoot()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
            if (File.Exists(Path.Combine(dir.FullName, "Engine.sln"))) return dir.FullName;
        throw new InvalidOperationException("cannot find the repository root (Engine.sln) above " + AppContext.BaseDirectory);
    }

    static string? Find()
    {
        var env = Environment.GetEnvironmentVariable("TOKENMILL_TESTDATA");
        if (!string.IsNullOrEmpty(env)) return Directory.Exists(env) ? env : null;
        var candidate = Path.GetFullPath(Path.Combine(FindRepoRoot(), "..", "shared", "testdata"));
        return Directory.Exists(candidate) ? candidate : null;
    }

    /// <summary>Full path of a file under the test data root; skips the calling test if it is absent.</summary>
    public static string Require(string relativePath)
    {
        Skip.If(Root is null, "shared test data not found (expected ../shared/testdata beside the repository, or set TOKENMILL_TESTDATA)");
        var path = Path.Combine(Root!, relativePath);
        Skip.IfNot(File.Exists(path), $"test data file {relativePath} is absent from {Root}");
        return path;
    }
}
