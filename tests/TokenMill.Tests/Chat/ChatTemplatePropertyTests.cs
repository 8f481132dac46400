using CsCheck;
using TokenMill.Chat;

namespace TokenMill.Tests.Chat;

public class ChatTemplatePropertyTests
{
    // Fragments of template syntax; random sequences of them reach most parser and interpreter paths.
    static readonly string[] Fragments =
    [
        "{{", "}}", "{%", "%}", "{#", "#}", "{%-", "-%}", "{{-", "-}}", " ", "\n", "x", "messages", "m", "loop", "ns",
        "if", "elif", "else", "endif", "for", "in", "endfor", "set", "endset", "macro", "endmacro", "call", "endcall",
        "not", "and", "or", "is", "defined", "none", "string", "true", "1", "-1", "2.5", "'s'", "\"t\"", "(", ")", "[", "]",
        "{", "}", ":", ",", ".", "|", "~", "+", "-", "*", "/", "//", "%", "**", "==", "!=", "<", ">=", "=",
        "trim", "length", "tojson", "join", "items", "content", "role", "namespace(", "range(", "raise_exception(",
        "[::-1]", "[1:]", ".strip()", ".split(", "selectattr(", "map(", "default(", "loop.index0", "loop.last",
    ];

    static readonly string[] ExpressionFragments =
    [
        "messages", "messages[0]", "messages[-1]", "m", "x", "x[0]", "x[1:]", "1", "2.5", "'s'", "none", "true", "(", ")", " + ", " - ",
        " * ", " // ", " % ", " ~ ", " == ", " in ", " not ", " and ", " or ", " if ", " else ", " is defined", " is string",
        "|length", "|tojson", "|trim", "|join(',')", "|first", "|list", "|items", "|default('d')", ".role", ".content",
        ".tool_calls", ".function.arguments", ".strip()", ".split('i')", ".get('role')", "[::-1]", "[", "]", ",",
    ];

    // Whole-template soup (mostly syntax errors) and output tags around expression soup (mostly parseable).
    static readonly Gen<string> TemplateSoup = Gen.OneOf(
        Gen.OneOf<string>(Fragments).Array[0, 40].Select(string.Concat),
        Gen.OneOf<string>(ExpressionFragments).Array[1, 8].Select(a => "{{ " + string.Concat(a) + " }}"),
        Gen.OneOf<string>(ExpressionFragments).Array[1, 6].Select(a => "{% for m in messages %}{% if " + string.Concat(a) + " %}[{{ loop.index }}]{% endif %}{% endfor %}"));

    static readonly IReadOnlyList<ChatMessage> Conversation =
    [
        new ChatMessage("system", "sys"),
        new ChatMessage("user", "hi {{ x }}"),
        new ChatMessage("assistant", null) { ToolCalls = [new ChatToolCall("c1", "f", "{\"a\": [1, {\"b\": null}]}")] },
        new ChatMessage("tool", "ok") { ToolCallId = "c1" },
    ];

    [Fact]
    public void Any_text_either_parses_or_fails_with_a_ChatTemplateException_and_rendering_fails_only_that_way()
    {
        int rendered = 0;
        TemplateSoup.Sample(source =>
        {
            ChatTemplate template;
            try
            {
                template = ChatTemplate.Parse(source);
            }
            catch (ChatTemplateException)
            {
                return;
            }
            try
            {
                template.Render(Conversation, addGenerationPrompt: true, new Dictionary<string, object?> { ["x"] = new List<object?> { 1, "a" } });
                Interlocked.Increment(ref rendered);
            }
            catch (ChatTemplateException)
            {
            }
        }, iter: 20_000);
        Assert.True(rendered > 1000, $"only {rendered} of the random templates rendered: the generator no longer reaches the interpreter");
    }

    [Fact]
    public void Message_text_is_data_never_template_code()
    {
        Gen.String.Sample(content =>
        {
            var rendered = ChatTemplate.ChatMl.Render([new ChatMessage("user", content)], addGenerationPrompt: true);
            Assert.Equal("<|im_start|>user\n" + content + "<|im_end|>\n<|im_start|>assistant\n", rendered);
        }, iter: 2_000);
    }
}
