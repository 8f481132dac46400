using TokenMill.Codegen;

namespace TokenMill.Tests.Interop;

public class CodegenTests
{
    static string NativeDir => Path.Combine(TestData.RepoRoot, "native");
    static string GeneratedDir => Path.Combine(TestData.RepoRoot, "src", "Interop", "Generated");

    [Fact]
    public void Committed_bindings_match_the_declaration_files()
    {
        var problems = BindingGenerator.Verify(NativeDir, GeneratedDir);
        Assert.True(problems.Count == 0,
            "src/Interop/Generated is stale; run 'dotnet run --project tools/codegen' and commit:\n" + string.Join("\n", problems));
    }

    [Fact]
    public void Every_declaration_file_generates_one_class()
    {
        var names = BindingGenerator.GenerateAll(NativeDir).Select(g => g.FileName).ToArray();
        Assert.Equal(["CublasApi.g.cs", "CudaApi.g.cs", "NcclApi.g.cs", "NvrtcApi.g.cs"], names);
    }

    const string Sample = """
        library demo
        class DemoApi
        status demoStatus DEMO_OK DemoException
        handle demoThing
        handle demoIndex int
        enum demoStatus
          DEMO_OK = 0
          DEMO_BAD = -3
        demoStatus demoMake(demoThing* thing, const char* const* names, size_t count)
        unchecked demoStatus demoFree(demoThing thing)
        const char* demoName(demoStatus s)
        """;

    [Fact]
    public void A_status_function_gets_a_private_raw_import_and_a_checked_public_wrapper_with_C_types_in_comments()
    {
        var (file, src) = BindingGenerator.Generate(Sample, "demo.decl");
        Assert.Equal("DemoApi.g.cs", file);
        Assert.Contains("public readonly record struct demoThing(nint Value)", src);
        Assert.Contains("public readonly record struct demoIndex(int Value)", src);
        Assert.Contains("DEMO_BAD = -3,", src);
        Assert.Contains("public static void demoMake(demoThing* thing /* demoThing* */, byte** names /* const char* const* */, nuint count /* size_t */) => ThrowIfFailed(demoMake_Raw(thing, names, count), \"demoMake\");", src);
        Assert.Contains("[LibraryImport(Library, EntryPoint = \"demoMake\")]\n    private static partial demoStatus demoMake_Raw(demoThing* thing, byte** names, nuint count);", src);
        Assert.Contains("public static demoStatus demoFree(demoThing thing /* demoThing */) => demoFree_Raw(thing);", src);
        Assert.Contains("public static byte* demoName(demoStatus s /* demoStatus */) => demoName_Raw(s);", src);
        Assert.Contains("if (status != demoStatus.DEMO_OK) throw DemoException.FromStatus(status, call);", src);
    }

    [Fact]
    public void An_undeclared_C_type_is_an_error_naming_file_and_line()
    {
        var e = Assert.Throws<FormatException>(() => BindingGenerator.Generate("library x\nclass X\nint f(mystery_t m)\n", "x.decl"));
        Assert.Contains("x.decl:3", e.Message);
        Assert.Contains("mystery_t", e.Message);
    }

    [Fact]
    public void Verify_reports_a_stale_file_with_the_first_differing_line()
    {
        string dir = Directory.CreateTempSubdirectory("codegen").FullName;
        try
        {
            string native = Path.Combine(dir, "native"), generated = Path.Combine(dir, "gen");
            Directory.CreateDirectory(native);
            Directory.CreateDirectory(generated);
            File.WriteAllText(Path.Combine(native, "demo.decl"), Sample);
            Assert.Equal(["DemoApi.g.cs: missing"], BindingGenerator.Verify(native, generated));

            var (name, src) = BindingGenerator.Generate(Sample, "demo.decl");
            File.WriteAllText(Path.Combine(generated, name), src);
            Assert.Empty(BindingGenerator.Verify(native, generated));

            File.WriteAllText(Path.Combine(generated, name), src.Replace("DEMO_BAD = -3", "DEMO_BAD = -4", StringComparison.Ordinal));
            var problem = Assert.Single(BindingGenerator.Verify(native, generated));
            Assert.Contains("DemoApi.g.cs: stale from line", problem);
            Assert.Contains("DEMO_BAD = -4", problem);
            Assert.Contains("DEMO_BAD = -3", problem);
        }
        finally { Directory.Delete(dir, recursive: true); }
    }
}
