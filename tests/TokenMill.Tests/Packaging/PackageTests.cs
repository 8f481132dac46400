using System.Diagnostics;
using System.IO.Compression;
using System.Runtime.InteropServices;
using TokenMill.Tests.Models.Hub;
using TokenMill.Tokenization;

namespace TokenMill.Tests.Packaging;

/// <summary>
/// Packs the repository's packages from the build already made (<c>dotnet pack --no-build</c>) into a folder feed,
/// installs the <c>tokenmill</c> tool from it into a temporary tool path and runs it — against a local Hub too.
/// </summary>
public sealed class PackageTests : IDisposable
{
    readonly string _tmp = Directory.CreateTempSubdirectory("tokenmill-pack-").FullName;

    public void Dispose() => Directory.Delete(_tmp, recursive: true);

    /// <summary>The configuration this test assembly was built in (bin/Release/… or bin/Debug/…): the one to pack.</summary>
    static string Configuration => new DirectoryInfo(AppContext.BaseDirectory).Parent!.Name;

    /// <summary>The dotnet installation running the tests, for the tool's apphost to find its runtime.</summary>
    static string DotnetRoot => Path.GetFullPath(Path.Combine(RuntimeEnvironment.GetRuntimeDirectory(), "..", "..", ".."));

    static (int Code, string Stdout, string Stderr) Run(string file, IEnumerable<string> args, Dictionary<string, string?>? env = null, int timeoutSeconds = 300)
    {
        var psi = new ProcessStartInfo(file, args) { RedirectStandardOutput = true, RedirectStandardError = true, WorkingDirectory = TestData.RepoRoot };
        psi.Environment["DOTNET_CLI_TELEMETRY_OPTOUT"] = "1";
        psi.Environment["DOTNET_NOLOGO"] = "1";
        psi.Environment["DOTNET_ROOT"] = DotnetRoot;
        foreach (var (k, v) in env ?? [])
            if (v is null) psi.Environment.Remove(k);
            else psi.Environment[k] = v;
        using var p = Process.Start(psi)!;
        var stderr = p.StandardError.ReadToEndAsync();
        var stdout = p.StandardOutput.ReadToEndAsync();
        if (!p.WaitForExit(timeoutSeconds * 1000))
        {
            p.Kill(entireProcessTree: true);
            throw new TimeoutException($"{file} {string.Join(' ', args)} ran past {timeoutSeconds} s");
        }
        p.WaitForExit();
        return (p.ExitCode, stdout.Result, stderr.Result);
    }

    static string Entry(ZipArchive zip, string name)
    {
        var e = zip.GetEntry(name) ?? throw new Xunit.Sdk.XunitException($"no {name} in the package: {string.Join(", ", zip.Entries.Select(x => x.FullName))}");
        using var r = new StreamReader(e.Open());
        return r.ReadToEnd();
    }

    [Fact]
    public async Task The_packages_pack_and_the_tool_installs_from_a_folder_feed_and_runs()
    {
        string feed = Path.Combine(_tmp, "feed");
        var pack = Run("dotnet", ["pack", "Engine.sln", "-c", Configuration, "--no-build", "-o", feed, "-v", "q", "--disable-build-servers"]);
        Assert.True(pack.Code == 0, pack.Stdout + pack.Stderr);

        // The libraries: XML docs, README, license, symbols; the engine depends on the interop package of the same version.
        foreach (var id in new[] { "TokenMill.Engine", "TokenMill.Interop", "TokenMill.Extensions.AI" })
        {
            // TokenMill.Engine.0.1.0.nupkg, not TokenMill.Extensions.AI.…: the version follows the id.
            string nupkg = Assert.Single(Directory.GetFiles(feed, $"{id}.*.nupkg"), f => char.IsAsciiDigit(Path.GetFileName(f)[id.Length + 1]));
            using var zip = ZipFile.OpenRead(nupkg);
            Assert.NotNull(zip.GetEntry($"lib/net10.0/{id}.dll"));
            Assert.Contains("<member name=", Entry(zip, $"lib/net10.0/{id}.xml"));
            Assert.StartsWith($"# {id}", Entry(zip, "README.md"));
            string nuspec = Entry(zip, $"{id}.nuspec");
            Assert.Contains("<license type=\"expression\">", nuspec);
            Assert.Contains("<readme>README.md</readme>", nuspec);
            Assert.Contains("<repository type=\"git\"", nuspec);
            using var symbols = ZipFile.OpenRead(Path.ChangeExtension(nupkg, ".snupkg"));
            Assert.NotNull(symbols.GetEntry($"lib/net10.0/{id}.pdb"));
            if (id == "TokenMill.Engine") Assert.Contains("<dependency id=\"TokenMill.Interop\"", nuspec);
            if (id == "TokenMill.Extensions.AI")
            {
                Assert.Contains("<dependency id=\"TokenMill.Engine\"", nuspec);
                Assert.Contains("<dependency id=\"Microsoft.Extensions.AI\"", nuspec);
            }
        }

        // The tool, from the feed alone (--source: no other feed is asked), into a tool path, with its own package folder.
        string tools = Path.Combine(_tmp, "tools");
        var install = Run("dotnet", ["tool", "install", "--tool-path", tools, "--source", feed, "tokenmill"],
            new() { ["NUGET_PACKAGES"] = Path.Combine(_tmp, "packages") });
        Assert.True(install.Code == 0, install.Stdout + install.Stderr);
        string tokenmill = Path.Combine(tools, OperatingSystem.IsWindows() ? "tokenmill.exe" : "tokenmill");

        var help = Run(tokenmill, ["--help"]);
        Assert.Equal(0, help.Code);
        Assert.Contains("usage: tokenmill <command>", help.Stdout);

        var dummy = Run(tokenmill, ["tokenize", "--model", "dummy:tinyllama-1.1b", "hello world"]);
        Assert.True(dummy.Code == 0, dummy.Stderr);
        var expected = TokenizerLoader.Cl100kFitted(TokenMill.Models.Dummy.DummyPresets.All["tinyllama-1.1b"].Config.VocabSize)
            .Encode("hello world", addSpecial: false, parseSpecial: false);
        Assert.Equal(string.Join(' ', expected), dummy.Stdout.Trim());

        var missing = Run(tokenmill, ["generate", "--model", Path.Combine(_tmp, "absent.gguf")]);
        Assert.Equal(1, missing.Code);
        Assert.Contains("absent.gguf: no such file", missing.Stderr);

        // A model by name from a (local) Hub, downloaded by the installed tool with a progress bar, then run offline.
        if (TestData.Root is { } root && File.Exists(Path.Combine(root, "models", "stories260K.gguf")))
        {
            string stories = Path.Combine(root, "models", "stories260K.gguf");
            await using var hub = new FakeHub();
            await hub.StartAsync();
            hub.AddRepo("tm-test/stories260K-GGUF", [new FakeHub.HubFile("stories260K-F32.gguf", File.ReadAllBytes(stories), Lfs: true)]);
            var env = new Dictionary<string, string?>
            {
                ["HF_ENDPOINT"] = hub.Endpoint, ["HF_HOME"] = Path.Combine(_tmp, "hf"), ["HF_TOKEN"] = null, ["HF_HUB_CACHE"] = null, ["HF_HUB_OFFLINE"] = null,
            };
            var fetched = Run(tokenmill, ["tokenize", "--model", "tm-test/stories260K-GGUF:F32", "Once upon a time"], env);
            Assert.True(fetched.Code == 0, fetched.Stderr);
            Assert.Contains("stories260K-F32.gguf [##############################] 100.0%", fetched.Stderr);
            Assert.True(File.Exists(Path.Combine(_tmp, "hf", "hub", "models--tm-test--stories260K-GGUF", "refs", "main")));
            using (var file = TokenMill.Models.Gguf.GgufFile.Open(stories))
                Assert.Equal(string.Join(' ', TokenizerLoader.FromGguf(file).Encode("Once upon a time", addSpecial: false, parseSpecial: false)),
                    fetched.Stdout.Trim());

            env["HF_HUB_OFFLINE"] = "1";
            string[] generate = ["generate", "--prompt", "Once upon a time", "--max-tokens", "24", "--temperature", "0"];
            var offline = Run(tokenmill, [.. generate, "--model", "tm-test/stories260K-GGUF:F32"], env);
            Assert.True(offline.Code == 0, offline.Stderr);
            var reference = Run(tokenmill, [.. generate, "--model", stories]);
            Assert.Equal(reference.Stdout, offline.Stdout);
            Assert.NotEmpty(offline.Stdout.Trim());
        }
    }
}
