using TokenMill.Codegen;

// tokenmill-codegen [--verify] [--root DIR]
//   writes src/Interop/Generated/*.g.cs from native/*.decl; with --verify writes nothing and exits 1
//   with a diff summary when the committed files are stale.
bool verify = args.Contains("--verify");
int rootAt = Array.IndexOf(args, "--root");
string root = rootAt >= 0 && rootAt + 1 < args.Length ? args[rootAt + 1] : BindingGenerator.FindRepositoryRoot(Environment.CurrentDirectory);
string nativeDir = Path.Combine(root, "native");
string generatedDir = Path.Combine(root, "src", "Interop", "Generated");

try
{
    if (verify)
    {
        var problems = BindingGenerator.Verify(nativeDir, generatedDir);
        if (problems.Count == 0)
        {
            Console.WriteLine($"codegen: {generatedDir} is up to date");
            return 0;
        }
        Console.Error.WriteLine("codegen: generated interop is stale; run 'dotnet run --project tools/codegen' and commit the result:");
        foreach (var p in problems) Console.Error.WriteLine("  " + p);
        return 1;
    }
    Directory.CreateDirectory(generatedDir);
    foreach (var (name, source) in BindingGenerator.GenerateAll(nativeDir))
    {
        string path = Path.Combine(generatedDir, name);
        bool same = File.Exists(path) && File.ReadAllText(path) == source;
        if (!same) File.WriteAllText(path, source);
        Console.WriteLine($"codegen: {(same ? "unchanged" : "wrote")} {Path.GetRelativePath(root, path)}");
    }
    return 0;
}
catch (FormatException e)
{
    Console.Error.WriteLine($"codegen: {e.Message}");
    return 1;
}
