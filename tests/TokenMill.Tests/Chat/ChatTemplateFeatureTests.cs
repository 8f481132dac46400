using System.Text.Json;
using TokenMill.Chat;

namespace TokenMill.Tests.Chat;

/// <summary>
/// One small template per Jinja construct (Features/features.json), each checked against Python's
/// Jinja2 configured as transformers configures it (tools/chat-goldens/render_features.py →
/// features-expected.json): whitespace control, loops, scoping, macros, operators, tests, filters,
/// Python string/dict methods, and the failures (undefined attributes, sandboxed mutation, …).
/// </summary>
public class ChatTemplateFeatureTests
{
    static readonly string Dir = Path.Combine(TestData.RepoRoot, "tests", "TokenMill.Tests", "Chat", "Features");
    static readonly Lazy<JsonDocument> Cases = new(() => JsonDocument.Parse(File.ReadAllText(Path.Combine(Dir, "features.json"))));
    static readonly Lazy<JsonDocument> Expected = new(() => JsonDocument.Parse(File.ReadAllText(Path.Combine(Dir, "features-expected.json"))));

    public static TheoryData<string> Names()
    {
        var data = new TheoryData<string>();
        foreach (var c in Cases.Value.RootElement.EnumerateArray()) data.Add(c.GetProperty("name").GetString()!);
        return data;
    }

    [Theory]
    [MemberData(nameof(Names))]
    public void Renders_like_jinja2(string name)
    {
        var c = Cases.Value.RootElement.EnumerateArray().Single(x => x.GetProperty("name").GetString() == name);
        var expected = Expected.Value.RootElement.GetProperty(name);
        var context = c.GetProperty("context").EnumerateObject().ToDictionary(p => p.Name, p => (object?)p.Value.Clone());

        var template = ChatTemplate.Parse(c.GetProperty("template").GetString()!, clock: new ChatTemplateGoldenTests.FixedClock());
        if (expected.TryGetProperty("output", out var output))
            Assert.Equal(output.GetString(), template.Render([], addGenerationPrompt: false, context));
        else
            Assert.Throws<ChatTemplateException>(() => template.Render([], addGenerationPrompt: false, context));
    }
}
