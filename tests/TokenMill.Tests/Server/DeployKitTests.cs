using System.Diagnostics;
using System.Text.RegularExpressions;

namespace TokenMill.Tests.Server;

/// <summary>The monitoring kit in deploy/: valid rules, and no metric name that the server does not export.</summary>
public partial class DeployKitTests(ServerFixture fx) : IClassFixture<ServerFixture>
{
    [GeneratedRegex(@"tokenmill:[a-z_]+")]
    private static partial Regex MetricName();

    static readonly string[] Files = ["deploy/prometheus/tokenmill-alerts.yml", "deploy/grafana/tokenmill-dashboard.json"];

    [SkippableFact]
    public async Task Every_metric_in_the_rules_and_dashboard_exists_in_metrics()
    {
        fx.SkipIfAbsent();
        await fx.Http.PostAsync("/v1/completions", new StringContent("""{"prompt":"Lily","max_tokens":2}""", System.Text.Encoding.UTF8, "application/json"));
        string exported = await fx.Http.GetStringAsync("/metrics");
        var names = MetricName().Matches(exported).Select(m => m.Value).ToHashSet();
        foreach (var file in Files)
        {
            var used = MetricName().Matches(File.ReadAllText(Path.Combine(TestData.RepoRoot, file))).Select(m => m.Value).Distinct().ToList();
            Assert.NotEmpty(used);
            Assert.All(used, name => Assert.True(names.Contains(name), $"{file} uses {name}, which /metrics does not export"));
        }
    }

    [SkippableFact]
    public void Promtool_accepts_the_alert_rules()
    {
        string? promtool = Environment.GetEnvironmentVariable("PATH")?.Split(':').Select(d => Path.Combine(d, "promtool")).FirstOrDefault(File.Exists);
        Skip.If(promtool is null, "promtool not found on PATH (.ci/install-deps installs it)");
        var psi = new ProcessStartInfo(promtool!, ["check", "rules", Path.Combine(TestData.RepoRoot, Files[0])]) { RedirectStandardOutput = true, RedirectStandardError = true };
        using var p = Process.Start(psi)!;
        string output = p.StandardOutput.ReadToEnd() + p.StandardError.ReadToEnd();
        p.WaitForExit();
        Assert.True(p.ExitCode == 0, output);
        Assert.Contains("SUCCESS", output);
    }
}
