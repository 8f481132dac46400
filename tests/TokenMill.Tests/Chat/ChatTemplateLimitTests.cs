using System.Diagnostics;
using System.Runtime.ExceptionServices;
using TokenMill.Chat;

namespace TokenMill.Tests.Chat;

/// <summary>
/// Hostile chat templates: ones that loop, recurse, grow their output or run long stop at the named
/// <see cref="ChatTemplateLimits"/> with a <see cref="ChatTemplateException"/> — quickly, without the
/// allocation they asked for — and no template reaches a .NET member of the values it is given.
/// </summary>
public class ChatTemplateLimitTests
{
    static readonly ChatMessage[] Hi = [new("user", "hi")];

    // A generous time budget where another limit is under test, so a busy machine does not trip it first.
    static readonly ChatTemplateLimits Untimed = new() { TimeBudget = TimeSpan.FromMinutes(1) };

    static ChatTemplateException Stopped(string source, string limit, ChatTemplateLimits? limits = null, bool growth = false)
    {
        limits ??= Untimed;
        var template = ChatTemplate.Parse(source);
        long before = GC.GetAllocatedBytesForCurrentThread();
        var clock = Stopwatch.StartNew();
        var e = Assert.Throws<ChatTemplateException>(() => template.Render(Hi, true, limits: limits));
        Assert.True(limit == e.Limit, $"expected the limit {limit}, got {e.Limit ?? "none"}: {e.Message}");
        Assert.Contains($"ChatTemplateLimits.{limit}", e.Message);
        Assert.StartsWith("chat template line ", e.Message);
        // A template that grows a value is stopped before the allocation it asked for: a few times the limit at most.
        long allocated = GC.GetAllocatedBytesForCurrentThread() - before;
        if (growth) Assert.True(allocated < 8L * 2 * limits.MaxOutputChars + (64 << 20), $"{source}: allocated {allocated >> 20} MiB before stopping");
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(20), $"{source}: took {clock.Elapsed}");
        return e;
    }

    [Theory]
    [InlineData("{{ 'x' * 10000000000 }}")]                                           // string repetition
    [InlineData("{{ ([1] * 100000000000) | length }}")]                              // list repetition
    [InlineData("{% set ns = namespace(s='xy') %}{% for i in range(64) %}{% set ns.s = ns.s + ns.s %}{% endfor %}{{ ns.s | length }}")] // doubling
    [InlineData("{{ (['abcdefgh' * 1000000] * 16) | join(',') }}")]                 // join of a repeated long string
    [InlineData("{{ ','.join(['abcdefgh' * 1000000] * 16) }}")]
    [InlineData("{{ ('a' * 1000000) | replace('a', 'bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb') }}")] // replace that multiplies
    [InlineData("{{ 'x' | center(100000000000) }}")]
    [InlineData("{{ ('a\\n' * 100000) | indent(10000) }}")]
    [InlineData("{{ {'a': [[[1]]]} | tojson(indent=1000000000) }}")]
    [InlineData("{{ '%.999999999f' % 1.5 }}")]
    [InlineData("{{ ('{0}' * 1000000).format('y' * 1000) }}")]
    [InlineData("{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}")]       // output grows past the limit
    public void Templates_that_grow_their_output_stop_at_MaxOutputChars(string source) =>
        Stopped(source, nameof(ChatTemplateLimits.MaxOutputChars), growth: true);

    [Fact]
    public void Templates_that_loop_stop_at_MaxSteps_and_the_limit_is_an_option()
    {
        // (the default million is ChatTemplateTests' to check; a tenth of it keeps this test quick)
        var e = Stopped("{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}", nameof(ChatTemplateLimits.MaxSteps),
            Untimed with { MaxSteps = 100_000 });
        Assert.Contains("more than 100000 statements", e.Message);
        var small = Untimed with { MaxSteps = 50 };
        e = Stopped("{% for i in range(100) %}{{ i }}{% endfor %}", nameof(ChatTemplateLimits.MaxSteps), small);
        Assert.Contains("more than 50 statements", e.Message);
        Assert.Equal("0123456789", ChatTemplate.Parse("{% for i in range(10) %}{{ i }}{% endfor %}").Render(Hi, true, limits: small));
    }

    // Runs f on a thread with the given stack, rethrowing what it threw: a thread-pool thread's stack (1.5 MiB) holds
    // fewer macro levels than MaxCallDepth allows while the interpreter still runs unoptimized code.
    static void OnThread(int stackBytes, Action f)
    {
        ExceptionDispatchInfo? thrown = null;
        var thread = new Thread(() =>
        {
            try { f(); }
            catch (Exception e) { thrown = ExceptionDispatchInfo.Capture(e); }
        }, stackBytes);
        thread.Start();
        thread.Join();
        thrown?.Throw();
    }

    const string Recursion = "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}";
    // Recursion through a {% call %} block is counted the same way.
    const string RecursionThroughCaller = "{% macro g() %}{% call g() %}x{% endcall %}{% endmacro %}{{ g() }}";

    [Theory]
    [InlineData(100)]
    [InlineData(1000)] // the largest depth an option accepts stops at the limit where the stack holds that many calls
    public void Templates_that_recurse_stop_at_MaxCallDepth(int depth) => OnThread(64 << 20, () =>
    {
        var limits = Untimed with { MaxCallDepth = depth };
        var e = Stopped(Recursion, nameof(ChatTemplateLimits.MaxCallDepth), limits);
        Assert.Contains($"nested more than {depth} deep", e.Message);
        Stopped(RecursionThroughCaller, nameof(ChatTemplateLimits.MaxCallDepth), limits);
        // Recursion that ends within the limit renders.
        string bounded = ChatTemplate.Parse("{% macro f(n) %}{% if n > 0 %}{{ f(n - 1) }}{% endif %}.{% endmacro %}{{ f(20) }}").Render(Hi, true, limits: limits);
        Assert.Equal(new string('.', 21), bounded);
    });

    [Theory]
    [InlineData(Recursion)]
    [InlineData(RecursionThroughCaller)]
    public void Recursion_deeper_than_the_thread_stack_holds_stops_at_MaxCallDepth_instead_of_crashing(string source) => OnThread(256 << 10, () =>
    {
        // A stack overflow would end the test process; the interpreter stops while ~128 KiB of the stack are left.
        var e = Stopped(source, nameof(ChatTemplateLimits.MaxCallDepth), Untimed with { MaxCallDepth = 1000 });
        Assert.Matches(@"macro calls nested \d+ deep, more than this thread's stack holds", e.Message);
    });

    [Theory]
    [InlineData("{{ ns.a|tojson }}", "tojson")]
    [InlineData("{{ ns.a }}", "printing")]
    [InlineData("{{ ns.a|string|length }}", "printing")]
    [InlineData("{{ ns.a == ns.a }}", "==")]
    [InlineData("{{ ns.a in [ns.a] }}", "==")]
    [InlineData("{{ ns.a < ns.a }}", "ordering")]
    public void A_value_nested_deeper_than_the_stack_holds_is_an_error_not_a_crash(string use, string walk) => OnThread(1 << 20, () =>
    {
        // 100,000 steps build a list nested 100,000 deep; walking it recursively would overflow any thread's stack.
        const string Nest = "{% set ns = namespace(a=[]) %}{% for i in range(100000) %}{% set ns.a = [ns.a] %}{% endfor %}";
        var e = Assert.Throws<ChatTemplateException>(() => ChatTemplate.Parse(Nest + use).Render(Hi, true, limits: Untimed));
        Assert.Contains($"{walk}: a value nested deeper than this thread's stack holds", e.Message);
        Assert.Null(e.Limit);
        // Nested as deep as real data is (tool schemas), the same walks work.
        const string Shallow = "{% set ns = namespace(a=[]) %}{% for i in range(50) %}{% set ns.a = [ns.a] %}{% endfor %}";
        ChatTemplate.Parse(Shallow + use).Render(Hi, true, limits: Untimed);
    });

    [Fact]
    public void A_template_nested_deeper_than_the_parsers_stack_holds_is_a_parse_error() => OnThread(160 << 10, () =>
    {
        // Within MaxNesting (200), but deeper than a 160 KiB stack holds while the parser still runs unoptimized.
        string parens = "{{ " + new string('(', 190) + "1" + new string(')', 190) + " }}";
        var e = Assert.Throws<ChatTemplateException>(() => ChatTemplate.Parse(parens));
        Assert.Matches(@"expression nested \d+ deep, more than this thread's stack holds", e.Message);
        string blocks = string.Concat(Enumerable.Repeat("{% if 1 %}", 190)) + "x" + string.Concat(Enumerable.Repeat("{% endif %}", 190));
        Assert.Contains("more than this thread's stack holds", Assert.Throws<ChatTemplateException>(() => ChatTemplate.Parse(blocks)).Message);
    });

    [Fact]
    public void Templates_that_run_long_stop_at_the_TimeBudget()
    {
        // Each iteration scans a 100 kB string: well under the step limit, far over a 50 ms budget.
        var limits = new ChatTemplateLimits { TimeBudget = TimeSpan.FromMilliseconds(50) };
        var clock = Stopwatch.StartNew();
        var e = Stopped("{% set s = 'a' * 100000 %}{% for i in range(1000) %}{% for j in range(900) %}{% if 'b' in s %}{% endif %}{% endfor %}{% endfor %}",
            nameof(ChatTemplateLimits.TimeBudget), limits);
        Assert.Contains("longer than 50 ms", e.Message);
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(2), $"stopped after {clock.Elapsed.TotalMilliseconds:F0} ms");
    }

    [Fact]
    public void Limits_out_of_range_are_refused_by_name()
    {
        var t = ChatTemplate.Parse("x");
        Assert.Equal("MaxSteps", Assert.Throws<ArgumentOutOfRangeException>(() => t.Render(Hi, true, limits: new ChatTemplateLimits { MaxSteps = 0 })).ParamName);
        Assert.Equal("MaxCallDepth", Assert.Throws<ArgumentOutOfRangeException>(() => t.Render(Hi, true, limits: new ChatTemplateLimits { MaxCallDepth = 5000 })).ParamName);
        Assert.Equal("TimeBudget", Assert.Throws<ArgumentOutOfRangeException>(() => t.Render(Hi, true, limits: new ChatTemplateLimits { TimeBudget = TimeSpan.Zero })).ParamName);
        Assert.Equal("MaxOutputChars", Assert.Throws<ArgumentOutOfRangeException>(() => t.Render(Hi, true, limits: new ChatTemplateLimits { MaxOutputChars = -1 })).ParamName);
    }

    // Every kind of value a template can hold: the data it is given, literals, and the interpreter's own objects.
    static readonly string[] Values =
    [
        "messages", "messages[0]", "messages[0].content", "bos_token", "add_generation_prompt", "tools", "1", "1.5", "none", "true",
        "[1, 2]", "(1, 2)", "{'a': 1}", "namespace(a=1)", "range", "range(3)", "dict", "namespace", "raise_exception", "strftime_now",
        "loop", "f", "caller", "'abc'.upper", "{'a': 1}.items", "undefined_name", "cycler", "joiner", "lipsum", "self", "config", "request",
    ];

    // .NET members of strings, lists, dictionaries, delegates and the interpreter's classes, and the Python
    // dunders sandbox escapes in Jinja go through.
    static readonly string[] Members =
    [
        "GetType", "ToString", "GetHashCode", "Equals", "MemberwiseClone", "Finalize", "Length", "Count", "Chars", "Keys", "Values",
        "Item", "Invoke", "DynamicInvoke", "Method", "Target", "Name", "Parent", "Attributes", "Items", "Comparer", "Capacity",
        "__class__", "__mro__", "__subclasses__", "__globals__", "__init__", "__dict__", "__builtins__", "__import__", "__getattribute__",
        "__module__", "__code__", "__self__", "__func__", "func_globals", "gi_frame", "mro", "_vars", "_body", "_clock", "Clock", "Source",
    ];

    [Fact]
    public void No_template_reaches_a_dotnet_member_of_any_value()
    {
        int probes = 0;
        foreach (string value in Values)
            foreach (string member in Members)
                foreach (string access in new[] { $"{value}.{member}", $"{value}['{member}']", $"{value} | attr('{member}')" })
                {
                    string source = "{% macro f() %}{% endmacro %}{% for _ in [0] %}"
                                    + $"[{{{{ ({access}) is defined }}}}][{{{{ {access} }}}}]{{% endfor %}}";
                    probes++;
                    string output;
                    try
                    {
                        output = ChatTemplate.Parse(source).Render(Hi, true);
                    }
                    catch (ChatTemplateException)
                    {
                        continue; // refused (e.g. indexing a number): reached nothing either
                    }
                    Assert.True(output == "[False][]", $"{access} gave {output}");
                }
        Assert.Equal(Values.Length * Members.Length * 3, probes);
    }

    [Fact]
    public void Printing_any_value_shows_no_dotnet_type()
    {
        foreach (string value in Values)
        {
            string output;
            try
            {
                output = ChatTemplate.Parse("{% macro f() %}{% endmacro %}{% for _ in [0] %}{{ " + value + " }}|{{ " + value + " | string }}|{{ " + value + " | pprint }}{% endfor %}").Render(Hi, true);
            }
            catch (ChatTemplateException)
            {
                continue;
            }
            Assert.DoesNotContain("System.", output, StringComparison.Ordinal);
            Assert.DoesNotContain("TokenMill", output, StringComparison.Ordinal);
            Assert.DoesNotContain("`1", output, StringComparison.Ordinal);
        }
    }
}
