using TokenMill.Chat;

namespace TokenMill.Tests.Chat;

public class ChatTemplateTests
{
    [Theory]
    [InlineData("{% if x %}a", 1, 12, "'{% if %}' at line 1, column 1 is never closed")]
    [InlineData("ok\n  {% for m in messages %}{{ m }}", 2, 33, "'{% for %}' at line 2, column 3 is never closed")]
    [InlineData("a {{ x ", 1, 3, "never closed with '}}'")]
    [InlineData("{# note", 1, 1, "comment")]
    [InlineData("line 1\nline 2 {{ 1 + }}", 2, 15, "unexpected '}}'")]
    [InlineData("{% include 'other.jinja' %}", 1, 4, "'{% include %}' is not supported")]
    [InlineData("{% extends 'base.jinja' %}", 1, 4, "'{% extends %}' is not supported")]
    [InlineData("{% import 'macros.jinja' as m %}", 1, 4, "'{% import %}' is not supported")]
    [InlineData("{% while true %}{% endwhile %}", 1, 4, "unknown or unsupported statement '{% while %}'")]
    [InlineData("{{ x | frobnicate }}", 1, 8, "unknown or unsupported filter 'frobnicate'")]
    [InlineData("{% if false %}{{ x is prime }}{% endif %}", 1, 23, "unknown or unsupported test 'prime'")]
    [InlineData("{% for x in xs recursive %}{% endfor %}", 1, 16, "recursive for loops are not supported")]
    [InlineData("{% endif %}", 1, 4, "unexpected '{% endif %}'")]
    [InlineData("{{ 'unterminated }}", 1, 4, "string literal is never closed")]
    [InlineData("{{ a ? b }}", 1, 6, "unexpected character '?'")]
    public void Syntax_errors_and_unsupported_constructs_fail_at_parse_time_with_line_and_column(string source, int line, int column, string fragment)
    {
        var e = Assert.Throws<ChatTemplateException>(() => ChatTemplate.Parse(source));
        Assert.Contains(fragment, e.Message);
        Assert.Equal((line, column), (e.Line, e.Column));
        Assert.StartsWith($"chat template line {line}, column {column}: ", e.Message);
    }

    [Fact]
    public void Raise_exception_keeps_the_templates_message_and_line()
    {
        var t = ChatTemplate.Parse("{% for m in messages %}\n{% if m.role == 'tool' %}{{ raise_exception('no tools here') }}{% endif %}{% endfor %}");
        var e = Assert.Throws<ChatTemplateException>(() => t.Render([new ChatMessage("tool", "x")], addGenerationPrompt: false));
        Assert.Equal("no tools here", e.TemplateMessage);
        Assert.Equal(2, e.Line);
        Assert.Contains("no tools here", e.Message);
    }

    [Fact]
    public void Templates_see_only_plain_data_no_dotnet_members()
    {
        var t = ChatTemplate.Parse("[{{ messages.Count }}][{{ messages[0].GetType }}][{{ bos_token.Length }}][{{ messages[0].__class__ }}]");
        Assert.Equal("[][][][]", t.Render([new ChatMessage("user", "hi")], addGenerationPrompt: false));
        Assert.Throws<ArgumentException>(() => t.Render([], false, new Dictionary<string, object?> { ["x"] = new Uri("http://example.com") }));
    }

    [Fact]
    public void Runaway_templates_fail_instead_of_hanging_or_overflowing_the_stack()
    {
        var recursion = ChatTemplate.Parse("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}");
        Assert.Contains("nested more than", Assert.Throws<ChatTemplateException>(() => recursion.Render([], false)).Message);
        var loops = ChatTemplate.Parse("{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}");
        // (an hour's time budget: on a busy machine the default second could run out before the million steps)
        Assert.Contains("statements", Assert.Throws<ChatTemplateException>(() => loops.Render([], false, limits: new ChatTemplateLimits { TimeBudget = TimeSpan.FromHours(1) })).Message);
        Assert.Throws<ChatTemplateException>(() => ChatTemplate.Parse("{{ " + new string('(', 1000) + "1" + new string(')', 1000) + " }}"));
    }

    [Fact]
    public void Message_fields_reach_the_template_only_when_set()
    {
        var t = ChatTemplate.Parse(
            "{% for m in messages %}{{ m.role }}:{{ m.content }}|{{ m.name is defined }}|{{ m.tool_call_id is defined }}|"
            + "{% for c in m.tool_calls or [] %}{{ c.id }} {{ c.type }} {{ c.function.name }} {{ c.function.arguments.city }} {{ c.function.arguments | tojson }}{% endfor %};{% endfor %}");
        var messages = new[]
        {
            new ChatMessage("user", "hi") { Name = "ann" },
            new ChatMessage("assistant", null) { ToolCalls = [new ChatToolCall("call_1", "get_weather", "{\"city\": \"Paris\", \"days\": 2}")] },
            new ChatMessage("tool", "sunny") { ToolCallId = "call_1" },
        };
        Assert.Equal(
            "user:hi|True|False|;assistant:None|False|False|call_1 function get_weather Paris {\"city\": \"Paris\", \"days\": 2};tool:sunny|False|True|;",
            t.Render(messages, addGenerationPrompt: false));
    }

    [Fact]
    public void Tool_call_arguments_that_are_not_a_json_object_stay_a_string()
    {
        var t = ChatTemplate.Parse("{{ messages[0].tool_calls[0].function.arguments is string }}");
        var m = new ChatMessage("assistant", "") { ToolCalls = [new ChatToolCall("c", "f", "not json")] };
        Assert.Equal("True", t.Render([m], false));
    }

    [Fact]
    public void Extra_variables_override_and_accept_clr_collections()
    {
        var t = ChatTemplate.Parse("{{ enable_thinking }} {{ tools | length }} {{ tools[0].function.name }} {{ n + 1 }} {{ add_generation_prompt }}");
        var extra = new Dictionary<string, object?>
        {
            ["enable_thinking"] = false,
            ["tools"] = new List<object?> { new Dictionary<string, object?> { ["function"] = new Dictionary<string, object?> { ["name"] = "f" } } },
            ["n"] = 41,
        };
        Assert.Equal("False 1 f 42 True", t.Render([], addGenerationPrompt: true, extra));
    }

    [Fact]
    public void Extra_variables_that_contain_themselves_or_nest_past_64_are_an_argument_error()
    {
        var t = ChatTemplate.Parse("{{ x | length }}");
        var loop = new List<object?>();
        loop.Add(loop);
        var e = Assert.Throws<ArgumentException>(() => t.Render([], true, new Dictionary<string, object?> { ["x"] = loop }));
        Assert.Contains("template variable 'x[0][0]", e.Message);
        Assert.Contains("nested more than 64 deep (does a list or dictionary contain itself?)", e.Message);
        object? Nest(int depth) => depth == 0 ? 1 : new List<object?> { Nest(depth - 1) };
        Assert.Equal("1", t.Render([], true, new Dictionary<string, object?> { ["x"] = Nest(64) }));
        Assert.Throws<ArgumentException>(() => t.Render([], true, new Dictionary<string, object?> { ["x"] = Nest(65) }));
    }

    [Fact]
    public void Bos_and_eos_tokens_and_the_clock_are_the_parse_arguments()
    {
        var t = ChatTemplate.Parse("{{ bos_token }}{{ strftime_now('%d %b %Y') }}{{ eos_token }}", "<s>", "</s>", new ChatTemplateGoldenTests.FixedClock());
        Assert.Equal("<s>15 Jan 2025</s>", t.Render([], false));
    }

    [Fact]
    public void OpenAI_content_parts_flatten_to_their_text()
    {
        static System.Text.Json.JsonElement J(string json) => System.Text.Json.JsonDocument.Parse(json).RootElement;
        Assert.Equal("plain", ChatMessage.FlattenContent(J("\"plain\"")));
        Assert.Null(ChatMessage.FlattenContent(J("null")));
        Assert.Equal("a\nb", ChatMessage.FlattenContent(J("[{\"type\": \"text\", \"text\": \"a\"}, {\"type\": \"text\", \"text\": \"b\"}]")));
        Assert.Throws<ArgumentException>(() => ChatMessage.FlattenContent(J("[{\"type\": \"image_url\", \"image_url\": {\"url\": \"x\"}}]")));
        Assert.Throws<ArgumentException>(() => ChatMessage.FlattenContent(J("42")));
    }
}
