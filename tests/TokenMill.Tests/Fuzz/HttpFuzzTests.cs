using System.Net.Http.Headers;
using System.Text;
using TokenMill.Core;
using TokenMill.Tests.Core;
using TokenMill.Tests.Server;

namespace TokenMill.Tests.Fuzz;

/// <summary>
/// Requests built from the API's own field list with hostile values — wrong types, huge and negative
/// numbers, deep nesting, long strings, invalid UTF-8, huge lists and maps: never a 5xx, never a hang.
/// </summary>
[Trait("Category", "Fuzz")]
public class HttpFuzzTests
{
    static readonly string[] Hostile =
    [
        "null", "true", "-1", "0", "1", "2", "3.5", "-1e308", "1e308", "9223372036854775807", "-9223372036854775808", "18446744073709551616",
        "\"\"", "\"x\"", "\"Lily\"", "[]", "[1,2,3]", "[\"a\",\"b\"]", "{}", "{\"a\":1}", "[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]",
        "\"\\ud800\"", "\"\\u0000\"", "[" + string.Join(",", Enumerable.Repeat("\"stop\"", 300)) + "]",
        "{" + string.Join(",", Enumerable.Range(0, 2000).Select(i => $"\"{i}\":1")) + "}",
        "\"" + new string('a', 20_000) + "\"", "[" + string.Join(",", Enumerable.Range(0, 3000)) + "]",
    ];

    static readonly string[] CompletionFields =
        ["model", "prompt", "max_tokens", "temperature", "top_p", "top_k", "min_p", "n", "stream", "stream_options", "logprobs", "echo",
         "stop", "seed", "presence_penalty", "frequency_penalty", "repetition_penalty", "logit_bias", "user", "suffix", "best_of",
         "min_tokens", "ignore_eos", "stop_token_ids", "priority"];

    static readonly string[] ChatFields =
        ["model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "n", "stream", "stream_options", "logprobs",
         "top_logprobs", "stop", "seed", "logit_bias", "user", "tools", "response_format"];

    static readonly string[] Messages =
    [
        "[{\"role\":\"user\",\"content\":\"Hi\"}]", "[{\"role\":\"user\"}]", "[{\"content\":\"x\"}]", "[{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"a\"}]}]",
        "[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\"}]}]", "[{\"role\":\"user\",\"content\":5}]", "[1]",
    ];

    [SkippableFact]
    public async Task Hostile_requests_never_get_a_server_error_or_hang()
    {
        await using var server = ServerFixture.Start(TestData.Require("models/stories260K.gguf"), new EngineOptions { MaxModelLen = 128 }, maxBody: 1 << 20);
        await server.StartAsync();
        var engine = await server.Ready;
        using var http = new HttpClient { BaseAddress = server.BaseAddress, Timeout = TimeSpan.FromSeconds(60) };
        var random = new Random(FuzzSettings.Seed(4242));
        int iterations = FuzzSettings.Iterations(ciDefault: 150);
        var statuses = new Dictionary<int, int>();

        for (int i = 0; i < iterations; i++)
        {
            bool chat = random.Next(2) == 0;
            var fields = chat ? ChatFields : CompletionFields;
            var body = new StringBuilder("{");
            // A valid base most of the time, so that deeper checks are reached, then hostile fields on top.
            if (random.Next(4) > 0)
                body.Append(chat ? $"\"messages\":{Messages[random.Next(Messages.Length)]}," : "\"prompt\":\"Once upon a time\",").Append("\"max_tokens\":8,");
            int count = random.Next(1, 5);
            for (int k = 0; k < count; k++)
            {
                string field = fields[random.Next(fields.Length)];
                string value = field == "messages" && random.Next(2) == 0 ? Messages[random.Next(Messages.Length)] : Hostile[random.Next(Hostile.Length)];
                body.Append('"').Append(field).Append("\":").Append(value).Append(',');
            }
            body.Length--; // trailing comma
            body.Append('}');
            byte[] bytes = Encoding.UTF8.GetBytes(body.ToString());
            if (random.Next(10) == 0) bytes[random.Next(bytes.Length)] = 0xFF; // invalid UTF-8 somewhere
            using var content = new ByteArrayContent(bytes);
            content.Headers.ContentType = new MediaTypeHeaderValue("application/json");
            using var response = await http.PostAsync(chat ? "/v1/chat/completions" : "/v1/completions", content);
            string text = await response.Content.ReadAsStringAsync();
            int status = (int)response.StatusCode;
            statuses[status] = statuses.GetValueOrDefault(status) + 1;
            Assert.True(status < 500, $"request {i} got {status}: {body.ToString()[..Math.Min(300, body.Length)]} → {text[..Math.Min(300, text.Length)]}");
            if (status >= 400) Assert.Contains("\"error\"", text);
        }
        Assert.True(statuses.Keys.Any(s => s >= 400) && statuses.ContainsKey(200), $"statuses seen: {string.Join(", ", statuses)}");
        await LlmEngineTests.WaitFor(() => engine.Stats is var s && s.FreeKvBlocks == s.TotalKvBlocks && s.Running == 0);
    }
}
