using BenchmarkDotNet.Running;

namespace TokenMill.Benchmarks;

/// <summary>
/// BenchmarkDotNet micro-benchmarks of the CPU kernels and of whole forward steps:
/// <c>dotnet run -c Release --project benchmarks/TokenMill.Benchmarks -- --filter '*MatVec*'</c>
/// (every BenchmarkDotNet option works: <c>--list flat</c>, <c>--job short</c>, <c>--exporters json</c>).
/// </summary>
public static class Program
{
    public static void Main(string[] args) => BenchmarkSwitcher.FromAssembly(typeof(Program).Assembly).Run(args);
}
