using System.Text;
using System.Text.RegularExpressions;
using TokenMill.KvCache;

namespace TokenMill.Server.Cli;

/// <summary>
/// <c>tokenmill completion bash|zsh|fish|pwsh</c>: a completion script written from <see cref="Cli.Commands"/> — the same
/// option tables the parsers use — with each option's description taken from its command's help text.
/// </summary>
public static partial class CompletionCommand
{
    internal static readonly string[] Shells = ["bash", "zsh", "fish", "pwsh"];
    internal static readonly HashSet<string> Flags = ["help"];

    internal const string Help = """
        usage: tokenmill completion bash|zsh|fish|pwsh

          prints a completion script for the shell: commands, each command's options, option values where they are
          a fixed set (--dtype, --eviction-policy, --log-format …) and file names where an option takes a file.

          bash:  source <(tokenmill completion bash)             (or save it under ~/.local/share/bash-completion/completions/tokenmill)
          zsh:   source <(tokenmill completion zsh)              (after compinit)
          fish:  tokenmill completion fish > ~/.config/fish/completions/tokenmill.fish
          pwsh:  tokenmill completion pwsh | Out-String | Invoke-Expression   (add it to $PROFILE to keep it)

        example: tokenmill completion bash > ~/.local/share/bash-completion/completions/tokenmill
        """;

    /// <summary>Options whose value is one of a fixed set, from the tables their parsers check against.</summary>
    /// <remarks>A property, not a field: <see cref="Cli"/>'s static initializer reaches this class before its own tables are set.</remarks>
    internal static IReadOnlyDictionary<string, string[]> Choices => new Dictionary<string, string[]>(StringComparer.Ordinal)
    {
        ["dtype"] = Cli.DTypeNames,
        ["dummy-values"] = Cli.DTypeNames,
        ["eviction-policy"] = [.. EvictionPolicies.Names, "all"], // 'all' is simulate's
        ["log-format"] = ServeCommand.LogFormats,
        ["kv-cache-dtype"] = TokenMill.KvCache.KvCacheDtypes.Names,
    };

    /// <summary>Options whose value is a path (completed as file names).</summary>
    internal static readonly HashSet<string> FileOptions =
        ["model", "tokenizer", "config", "prompts-file", "trace", "out", "output-json", "api-key-file", "kernels-dir", "dataset"];

    public static int Run(string[] args, TextWriter stdout, TextWriter stderr)
    {
        var a = new CliArguments("completion", args, new HashSet<string>(), Flags);
        if (a.Flag("help"))
        {
            stdout.WriteLine(Help);
            return Cli.ExitOk;
        }
        if (a.Positional is not [var shell]) throw new UsageException($"name one shell: {string.Join(", ", Shells)}");
        stdout.Write(shell switch
        {
            "bash" => Bash(),
            "zsh" => Zsh(),
            "fish" => Fish(),
            "pwsh" or "powershell" => PowerShell(),
            _ => throw new UsageException($"unknown shell '{shell}' (shells: {string.Join(", ", Shells)})"),
        });
        return Cli.ExitOk;
    }

    /// <summary>Every option of a command as typed (<c>--name</c>), value options first; <c>--config</c> is read by every command that has options.</summary>
    static IEnumerable<string> Options(CliCommand c) =>
        c.ValueOptions.Order(StringComparer.Ordinal).Concat(c.ValueOptions.Count > 0 ? ["config"] : []).Concat(c.Flags.Order(StringComparer.Ordinal))
            .Select(o => "--" + o);

    static IEnumerable<string> ValueOptions(CliCommand c) =>
        c.ValueOptions.Concat(c.ValueOptions.Count > 0 ? ["config"] : []).Order(StringComparer.Ordinal);

    /// <summary>
    /// An option's description: the first line of its entry in the command's help (<c>  --name ARG   description</c>), else
    /// in another command's help (serve refers to generate's for the engine options), else none.
    /// </summary>
    static string Describe(CliCommand command, string option)
    {
        if (option == "config") return "read options from a YAML or JSON file";
        if (option == "help") return "show the options and an example";
        foreach (var help in Cli.Commands.Select(c => c.Help).Prepend(command.Help))
        {
            // The argument's name is upper case (N, SIZE), a choice (text|json) or bracketed (<file>); a flag has none.
            var m = Regex.Match(help, $@"^\s*--{Regex.Escape(option)}(?:\s(?:[A-Z][A-Z0-9_]*|[a-z]+(?:\|[a-z]+)+|<[^>]+>))?\s+(?<d>\S.*)$", RegexOptions.Multiline);
            if (m.Success) return m.Groups["d"].Value.Trim();
        }
        return "";
    }

    static string Words(IEnumerable<string> words) => string.Join(' ', words);

    // ---- bash -------------------------------------------------------------------------------------------------

    static string Bash()
    {
        var sb = new StringBuilder();
        sb.Append($$"""
            # bash completion for tokenmill (written by 'tokenmill completion bash')
            _tokenmill() {
                local cur prev cmd opts values subs
                cur="${COMP_WORDS[COMP_CWORD]}"
                prev="${COMP_WORDS[COMP_CWORD-1]}"
                if [ "$COMP_CWORD" -eq 1 ]; then
                    COMPREPLY=($(compgen -W "{{Words(Cli.Commands.Select(c => c.Name).Append("help"))}} --help --version" -- "$cur"))
                    return
                fi
                cmd="${COMP_WORDS[1]}"
                case "$prev" in
                    {{string.Join('|', FileOptions.Order(StringComparer.Ordinal).Select(o => "--" + o))}})
                        COMPREPLY=($(compgen -f -- "$cur")); return ;;

            """);
        foreach (var (option, values) in Choices)
            sb.Append($"""
                        --{option}) COMPREPLY=($(compgen -W "{Words(values)}" -- "$cur")); return ;;

                """);
        sb.Append("""
                esac
                case "$cmd" in

            """);
        foreach (var c in Cli.Commands)
            sb.Append($"""
                        {c.Name}) opts="{Words(Options(c))}"; values="{Words(ValueOptions(c).Select(o => "--" + o))}"; subs="{Words(c.Subcommands ?? [])}" ;;

                """);
        sb.Append("""
                    *) return ;;
                esac
                # The value of an option with no fixed set (a number, a host …): nothing to offer.
                if [[ " $values " == *" $prev "* ]]; then return; fi
                if [ "$COMP_CWORD" -eq 2 ] && [ -n "$subs" ] && [[ "$cur" != -* ]]; then
                    COMPREPLY=($(compgen -W "$subs" -- "$cur"))
                    return
                fi
                if [[ "$cur" == -* ]]; then COMPREPLY=($(compgen -W "$opts" -- "$cur")); fi
            }
            complete -o default -F _tokenmill tokenmill

            """);
        return sb.ToString();
    }

    // ---- zsh --------------------------------------------------------------------------------------------------

    static string ZshQuote(string s) => "'" + s.Replace("'", "'\\''", StringComparison.Ordinal) + "'";

    /// <summary>A bracket would end an _arguments description early: brackets (and the backslash) are escaped.</summary>
    static string ZshDescription(string s) =>
        s.Replace("\\", "\\\\", StringComparison.Ordinal).Replace("[", "\\[", StringComparison.Ordinal).Replace("]", "\\]", StringComparison.Ordinal);

    static string Zsh()
    {
        var sb = new StringBuilder();
        sb.Append("""
            #compdef tokenmill
            # zsh completion for tokenmill (written by 'tokenmill completion zsh')
            _tokenmill() {
                local curcontext="$curcontext" state line
                typeset -A opt_args
                _arguments -C '1: :->command' '*:: :->argument' && return
                case $state in
                    command)
                        local -a commands
                        commands=(

            """);
        foreach (var c in Cli.Commands) sb.Append($"                {ZshQuote(c.Name + ":" + c.Summary)}\n");
        sb.Append("""
                            'help:show the commands'
                        )
                        _describe -t commands 'tokenmill command' commands
                        ;;
                    argument)
                        case $line[1] in

            """);
        foreach (var c in Cli.Commands)
        {
            var specs = new List<string>();
            foreach (string o in ValueOptions(c))
            {
                string action = Choices.TryGetValue(o, out var values) ? $"({Words(values)})" : FileOptions.Contains(o) ? "_files" : " ";
                specs.Add($"--{o}[{ZshDescription(Describe(c, o))}]:{o}:{action}");
            }
            foreach (string f in c.Flags.Order(StringComparer.Ordinal)) specs.Add($"--{f}[{ZshDescription(Describe(c, f))}]");
            if (c.Subcommands is { Count: > 0 } subs) specs.Add($"1:subcommand:({Words(subs)})");
            else if (c.FileArguments) specs.Add("*:file:_files");
            sb.Append($"                {c.Name})\n                    _arguments -S {string.Join(" \\\n                        ", specs.Select(ZshQuote))}\n                    ;;\n");
        }
        sb.Append("""
                        esac
                        ;;
                esac
            }
            if [ "$funcstack[1]" = "_tokenmill" ]; then _tokenmill "$@"; else compdef _tokenmill tokenmill; fi

            """);
        return sb.ToString();
    }

    // ---- fish -------------------------------------------------------------------------------------------------

    static string FishQuote(string s) => "'" + s.Replace("\\", "\\\\", StringComparison.Ordinal).Replace("'", "\\'", StringComparison.Ordinal) + "'";

    static string Fish()
    {
        var sb = new StringBuilder();
        sb.Append("# fish completion for tokenmill (written by 'tokenmill completion fish')\ncomplete -c tokenmill -f\n");
        string names = Words(Cli.Commands.Select(c => c.Name).Append("help"));
        foreach (var c in Cli.Commands)
            sb.Append($"complete -c tokenmill -n 'not __fish_seen_subcommand_from {names}' -a {c.Name} -d {FishQuote(c.Summary)}\n");
        sb.Append($"complete -c tokenmill -n 'not __fish_seen_subcommand_from {names}' -a help -d 'show the commands'\n");
        foreach (var c in Cli.Commands)
        {
            string when = $"-n '__fish_seen_subcommand_from {c.Name}'";
            foreach (string o in ValueOptions(c))
            {
                string value = Choices.TryGetValue(o, out var values) ? $"-x -a {FishQuote(Words(values))}" : FileOptions.Contains(o) ? "-r -F" : "-x";
                sb.Append($"complete -c tokenmill {when} -l {o} {value} -d {FishQuote(Describe(c, o))}\n");
            }
            foreach (string f in c.Flags.Order(StringComparer.Ordinal))
                sb.Append($"complete -c tokenmill {when} -l {f} -d {FishQuote(Describe(c, f))}\n");
            if (c.Subcommands is { Count: > 0 } subs)
                sb.Append($"complete -c tokenmill -n '__fish_seen_subcommand_from {c.Name}; and not __fish_seen_subcommand_from {Words(subs)}' -a {FishQuote(Words(subs))}\n");
            if (c.FileArguments) sb.Append($"complete -c tokenmill {when} -F\n");
        }
        return sb.ToString();
    }

    // ---- PowerShell -------------------------------------------------------------------------------------------

    static string PsQuote(string s) => "'" + s.Replace("'", "''", StringComparison.Ordinal) + "'";

    static string PowerShell()
    {
        var sb = new StringBuilder();
        sb.Append("""
            # PowerShell completion for tokenmill (written by 'tokenmill completion pwsh')
            Register-ArgumentCompleter -Native -CommandName tokenmill, tokenmill.exe -ScriptBlock {
                param($wordToComplete, $commandAst, $cursorPosition)
                $commands = [ordered]@{

            """);
        foreach (var c in Cli.Commands)
            sb.Append($"        {PsQuote(c.Name)} = @{{ Options = @({string.Join(", ", Options(c).Select(PsQuote))}); Values = @({string.Join(", ", ValueOptions(c).Select(o => PsQuote("--" + o)))}); Subcommands = @({string.Join(", ", (c.Subcommands ?? []).Select(PsQuote))}) }}\n");
        sb.Append("""
                }
                $choices = @{

            """);
        foreach (var (option, values) in Choices)
            sb.Append($"        {PsQuote("--" + option)} = @({string.Join(", ", values.Select(PsQuote))})\n");
        sb.Append("""
                }
                $words = @($commandAst.CommandElements | Select-Object -Skip 1 | ForEach-Object { $_.ToString() })
                # The word under the cursor is not counted when it is still empty.
                if ($wordToComplete -ne '' -and $words.Count -gt 0) { $words = @($words | Select-Object -SkipLast 1) }
                if ($words.Count -eq 0) {
                    $candidates = @($commands.Keys) + @('help', '--help', '--version')
                } else {
                    $command = $commands[$words[0]]
                    if ($null -eq $command) { return }
                    $prev = $words[-1]
                    if ($choices.ContainsKey($prev)) { $candidates = $choices[$prev] }
                    elseif ($command.Values -contains $prev) { return }   # a path or a number: the shell's own completion
                    elseif ($words.Count -eq 1 -and $command.Subcommands.Count -gt 0 -and -not $wordToComplete.StartsWith('-')) { $candidates = $command.Subcommands }
                    else { $candidates = $command.Options }
                }
                $candidates | Where-Object { $_ -like "$wordToComplete*" } | ForEach-Object {
                    [System.Management.Automation.CompletionResult]::new($_, $_, 'ParameterValue', $_)
                }
            }

            """);
        return sb.ToString();
    }
}
