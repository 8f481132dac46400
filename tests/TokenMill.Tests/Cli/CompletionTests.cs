using System.Diagnostics;

namespace TokenMill.Tests.Cli;

/// <summary>
/// <c>tokenmill completion</c>: the scripts are checked by the shells themselves (syntax), and the bash and fish ones are
/// run (what a Tab offers) against the CLI's own option tables; every command's <c>--help</c> shows an example.
/// </summary>
public class CompletionTests
{
    static string Script(string shell)
    {
        var stdout = new StringWriter();
        var stderr = new StringWriter();
        Assert.True(TokenMill.Server.Cli.Cli.Run(["completion", shell], stdout, stderr) == 0, stderr.ToString());
        return stdout.ToString();
    }

    static string? FindOnPath(string name) =>
        (Environment.GetEnvironmentVariable("PATH") ?? "").Split(Path.PathSeparator, StringSplitOptions.RemoveEmptyEntries)
            .Select(dir => Path.Combine(dir, name)).FirstOrDefault(File.Exists);

    /// <summary>Runs a shell on a script file plus a snippet; returns its stdout (fails the test on a non-zero exit).</summary>
    static string RunShell(string shell, string[] args, string script, string extension)
    {
        string file = Path.Combine(Path.GetTempPath(), $"tokenmill-completion-{Guid.NewGuid():N}.{extension}");
        File.WriteAllText(file, script);
        try
        {
            var psi = new ProcessStartInfo(shell) { RedirectStandardOutput = true, RedirectStandardError = true };
            foreach (string a in args) psi.ArgumentList.Add(a.Replace("SCRIPT", file, StringComparison.Ordinal));
            using var p = Process.Start(psi)!;
            var stdout = p.StandardOutput.ReadToEndAsync();
            string stderr = p.StandardError.ReadToEnd();
            Assert.True(p.WaitForExit(20_000), $"{shell} did not finish");
            Assert.True(p.ExitCode == 0, $"{shell} exited with {p.ExitCode}: {stderr}");
            return stdout.Result;
        }
        finally
        {
            File.Delete(file);
        }
    }

    /// <summary>What bash's completion function offers for the words typed so far (the last one is being completed).</summary>
    static string[] BashComplete(string script, params string[] words)
    {
        string quoted = string.Join(' ', words.Select(w => "'" + w.Replace("'", "'\\''", StringComparison.Ordinal) + "'"));
        string output = RunShell("bash", ["-c", $"source SCRIPT; COMP_WORDS=({quoted}); COMP_CWORD={words.Length - 1}; _tokenmill; printf '%s\\n' \"${{COMPREPLY[@]}}\""],
            script, "bash");
        return output.Split('\n', StringSplitOptions.RemoveEmptyEntries);
    }

    [Fact]
    public void The_bash_script_passes_bash_n_and_completes_every_command_and_each_command_s_options()
    {
        string script = Script("bash");
        RunShell("bash", ["-n", "SCRIPT"], script, "bash");
        var commands = BashComplete(script, "tokenmill", "");
        foreach (var c in TokenMill.Server.Cli.Cli.Commands) Assert.Contains(c.Name, commands);
        Assert.Equal(["serve"], BashComplete(script, "tokenmill", "se"));

        foreach (var c in TokenMill.Server.Cli.Cli.Commands)
        {
            var offered = BashComplete(script, "tokenmill", c.Name, "--");
            foreach (string o in c.ValueOptions.Concat(c.Flags)) Assert.Contains("--" + o, offered);
            Assert.Equal(c.ValueOptions.Count + c.Flags.Count + (c.ValueOptions.Count > 0 ? 1 : 0), offered.Length); // + --config
        }
        Assert.Equal(["--no-prefix-caching", "--no-ui"], BashComplete(script, "tokenmill", "serve", "--no-").Order());
        Assert.Equal(["lfu", "lru"], BashComplete(script, "tokenmill", "generate", "--eviction-policy", "l").Order());
        Assert.Equal(["Q4_0", "Q4_K", "Q6_K", "Q8_0"], BashComplete(script, "tokenmill", "serve", "--dtype", "Q").Order());
        Assert.Equal(["latency", "serve", "throughput"], BashComplete(script, "tokenmill", "bench", "").Order());
        Assert.Empty(BashComplete(script, "tokenmill", "serve", "--port", "")); // a number: nothing to offer
    }

    [SkippableFact]
    public void The_zsh_script_passes_zsh_n_and_loads_after_compinit()
    {
        Skip.If(FindOnPath("zsh") is null, "zsh is not installed (Debian: apt-get install zsh, or run .ci/install-deps)");
        string script = Script("zsh");
        RunShell("zsh", ["-n", "SCRIPT"], script, "zsh");
        string output = RunShell("zsh", ["-f", "-c", "autoload -U compinit && compinit -u -D && source SCRIPT && print -r -- $_comps[tokenmill]"], script, "zsh");
        Assert.Equal("_tokenmill", output.Trim());
    }

    [SkippableFact]
    public void The_fish_script_completes_commands_options_and_choices()
    {
        Skip.If(FindOnPath("fish") is null, "fish is not installed (Debian: apt-get install fish, or run .ci/install-deps)");
        string script = Script("fish");
        RunShell("fish", ["--no-execute", "SCRIPT"], script, "fish");
        string[] Complete(string line) =>
            RunShell("fish", ["--no-config", "-c", $"source SCRIPT; complete -C '{line}'"], script, "fish")
                .Split('\n', StringSplitOptions.RemoveEmptyEntries).Select(l => l.Split('\t')[0]).ToArray();
        Assert.Equal(["--no-prefix-caching", "--no-ui"], Complete("tokenmill serve --no-").Order());
        Assert.Equal(["text", "json"], Complete("tokenmill serve --log-format ").Order().Reverse());
        Assert.Contains("completion", Complete("tokenmill "));
        Assert.Contains("generate", Complete("tokenmill "));
    }

    [Fact]
    public void Every_option_has_a_description_from_its_command_s_help()
    {
        // The fish script carries each option's description: an empty one means an option the help does not explain.
        var undocumented = Script("fish").Split('\n').Where(l => l.Contains(" -l ", StringComparison.Ordinal) && l.EndsWith("-d ''", StringComparison.Ordinal));
        Assert.Empty(undocumented);
    }

    [Fact]
    public void Every_command_s_help_shows_an_example_of_that_command()
    {
        foreach (var c in TokenMill.Server.Cli.Cli.Commands)
        {
            var stdout = new StringWriter();
            Assert.Equal(0, TokenMill.Server.Cli.Cli.Run([c.Name, "--help"], stdout, new StringWriter()));
            Assert.Contains($"example: tokenmill {c.Name} ", stdout.ToString());
        }
        var bench = new StringWriter();
        Assert.Equal(0, TokenMill.Server.Cli.Cli.Run(["bench", "serve", "--help"], bench, new StringWriter()));
        Assert.Contains("example: tokenmill bench serve ", bench.ToString());
    }

    [Fact]
    public void An_unknown_shell_is_a_usage_error_naming_the_shells()
    {
        var stderr = new StringWriter();
        Assert.Equal(2, TokenMill.Server.Cli.Cli.Run(["completion", "tcsh"], new StringWriter(), stderr));
        Assert.Contains("unknown shell 'tcsh' (shells: bash, zsh, fish, pwsh)", stderr.ToString());
        Assert.Equal(2, TokenMill.Server.Cli.Cli.Run(["completion"], new StringWriter(), new StringWriter()));
    }
}
