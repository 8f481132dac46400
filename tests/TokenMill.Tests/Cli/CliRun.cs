namespace TokenMill.Tests.Cli;

/// <summary>Runs the CLI in-process and captures what it writes.</summary>
internal static class CliRun
{
    public static (int Code, string Out, string Err) Capture(params string[] args)
    {
        var stdout = new StringWriter();
        var stderr = new StringWriter();
        int code = TokenMill.Server.Cli.Cli.Run(args, stdout, stderr);
        return (code, stdout.ToString(), stderr.ToString());
    }
}
