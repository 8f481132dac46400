using System.Collections.ObjectModel;
using System.Text;
using System.Text.Json;
using OpenQA.Selenium;
using OpenQA.Selenium.Chrome;
using OpenQA.Selenium.Support.UI;
using TokenMill.Core;
using TokenMill.Server.Http;

namespace TokenMill.Tests.Server;

/// <summary>
/// The playground in a real browser: Debian's chromium, headless, driven through its chromedriver by Selenium,
/// against a real server on stories260K. Skipped with the reason when chromium or chromedriver is not installed
/// (<c>.ci/install-deps</c> installs both). <c>TOKENMILL_UI_SCREENSHOT=docs/kv-cache-view.png</c> saves the
/// KV-cache view under load (the README's picture) from the load test.
/// </summary>
public class PlaygroundBrowserTests
{
    const string ApiKey = "sk-playground-test";

    static string? FindOnPath(string name) =>
        (Environment.GetEnvironmentVariable("PATH") ?? "").Split(Path.PathSeparator, StringSplitOptions.RemoveEmptyEntries)
            .Select(dir => Path.Combine(dir, name)).FirstOrDefault(File.Exists);

    static ChromeDriver StartBrowser()
    {
        string? chromium = FindOnPath("chromium") ?? FindOnPath("chromium-browser");
        string? chromedriver = FindOnPath("chromedriver");
        Skip.If(chromium is null || chromedriver is null,
            "chromium and chromedriver are not both on PATH (Debian: apt-get install chromium chromium-driver, or run .ci/install-deps)");
        // Both paths given: Selenium Manager (which would look for drivers online) is never consulted.
        var service = ChromeDriverService.CreateDefaultService(Path.GetDirectoryName(chromedriver)!, Path.GetFileName(chromedriver));
        service.SuppressInitialDiagnosticInformation = true;
        service.HideCommandPromptWindow = true;
        var options = new ChromeOptions { BinaryLocation = chromium };
        // --no-sandbox: CI runs as root, where chromium's sandbox refuses to start; the browser only visits our loopback server.
        options.AddArguments("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
            "--disable-extensions", "--window-size=1400,1050", "--force-device-scale-factor=1");
        return new ChromeDriver(service, options, TimeSpan.FromSeconds(30));
    }

    static OpenAiServer StartServer(EngineOptions engineOptions, string? apiKey) =>
        // stories260K states 128 tokens of context but was trained at 512 (see Cli.ParseModel).
        ServerFixture.Start(TestData.Require("models/stories260K.gguf"), engineOptions, apiKey, contextLength: 512);

    /// <summary>The legend's block counts, read in one script call so they come from one frame.</summary>
    static Dictionary<string, long> Counts(ChromeDriver browser)
    {
        var values = (ReadOnlyCollection<object>)browser.ExecuteScript(
            "return ['free','cached','owned','shared','evicted','hit'].map(k => document.getElementById('count-' + k).textContent);")!;
        string[] names = ["free", "cached", "owned", "shared", "evicted", "hit"];
        return names.Zip(values, (n, v) => (n, long.Parse((string)v, System.Globalization.CultureInfo.InvariantCulture))).ToDictionary();
    }

    /// <summary>
    /// A poll of the page: the engine view re-renders its lists as the stream goes, so an element found a moment ago
    /// may be gone when its attribute is read — that poll looks again (CI once failed on it), as it does for one not
    /// found yet.
    /// </summary>
    static WebDriverWait Wait(ChromeDriver browser, double seconds)
    {
        var wait = new WebDriverWait(browser, TimeSpan.FromSeconds(seconds)) { PollingInterval = TimeSpan.FromMilliseconds(40) };
        wait.IgnoreExceptionTypes(typeof(StaleElementReferenceException));
        return wait;
    }

    [SkippableFact]
    public async Task A_chat_streams_into_the_page_while_the_kv_map_shows_its_blocks_owned_then_free_or_cached()
    {
        await using var server = StartServer(new EngineOptions { MaxModelLen = 512, NumKvBlocks = 96 }, ApiKey);
        await server.StartAsync();
        var engine = await server.Ready;
        // Each step waits up to 300 ms until the browser has seen the request mid-flight (between steps, so the engine
        // view's snapshots are still answered): 100 tokens take 30 s until then, however slow the browser is.
        using var seen = new ManualResetEventSlim();
        engine.BeforeStepHook = () => seen.Wait(TimeSpan.FromMilliseconds(300));
        using var browser = StartBrowser();

        browser.Navigate().GoToUrl(server.BaseAddress);
        Wait(browser, 10).Until(b => b.FindElement(By.Id("auth-needed")).Displayed); // the key is asked for, not assumed
        var key = browser.FindElement(By.Id("api-key"));
        key.SendKeys(ApiKey);
        key.SendKeys(Keys.Tab); // 'change' fires: the page reloads the model and reconnects the engine view
        Wait(browser, 10).Until(b => b.FindElement(By.Id("view-status")).Text == "live");
        Assert.Contains("stories260K", browser.FindElement(By.Id("model-name")).Text);
        Assert.Equal(96, Counts(browser)["free"]);

        browser.FindElement(By.Id("temperature")).Clear();
        browser.FindElement(By.Id("temperature")).SendKeys("0");
        browser.FindElement(By.Id("max-tokens")).Clear();
        browser.FindElement(By.Id("max-tokens")).SendKeys("100");
        browser.FindElement(By.Id("prompt")).SendKeys("Tell me a story about a little dog.");
        browser.FindElement(By.Id("send")).Click();

        // Mid-flight: streamed text is on the page while the reply is still streaming, and the map shows the
        // request's blocks as owned, listed under its request id.
        Wait(browser, 25).Until(b =>
        {
            var reply = b.FindElements(By.CssSelector(".msg.assistant")).FirstOrDefault();
            return reply is not null && reply.GetAttribute("data-state") == "streaming" && reply.Text.Trim().Length > 0
                && Counts(browser)["owned"] > 0
                && b.FindElements(By.CssSelector("#kv-requests li")).Any(li => li.GetAttribute("data-request")!.StartsWith("chatcmpl-", StringComparison.Ordinal));
        });
        seen.Set();

        // Done: the reply is whole, the request's numbers are shown, and its blocks went back — full ones to the
        // prefix cache, the partial last one free.
        Wait(browser, 20).Until(b => b.FindElement(By.CssSelector(".msg.assistant")).GetAttribute("data-state") == "done");
        string text = browser.FindElement(By.CssSelector(".msg.assistant")).Text;
        Assert.False(string.IsNullOrWhiteSpace(text));
        Assert.Matches(@"^\d+ ms$", browser.FindElement(By.Id("ttft")).Text);
        Assert.Matches(@"^\d+(\.\d)?$", browser.FindElement(By.Id("tps")).Text);
        Assert.Matches(@"^\d+ \+ \d+$", browser.FindElement(By.Id("tokens")).Text);
        Wait(browser, 10).Until(_ => Counts(browser) is { } c && c["owned"] == 0 && c["shared"] == 0 && c["cached"] > 0 && c["free"] + c["cached"] == 96);
        Assert.Empty(browser.FindElements(By.CssSelector("#kv-requests li")));
        Assert.Equal(0, (await server.Ready).Stats.Running);
    }

    [SkippableFact]
    public async Task Under_load_the_kv_map_shows_free_cached_owned_shared_and_evicted_blocks_at_once()
    {
        // A small cache (128 blocks of 16 tokens) under 12 clients: prefixes get cached, shared and evicted within seconds.
        await using var server = StartServer(new EngineOptions { MaxModelLen = 256, NumKvBlocks = 128, MaxNumSeqs = 12 }, apiKey: null);
        await server.StartAsync();
        var engine = await server.Ready;
        engine.BeforeStepHook = () => Thread.Sleep(8);
        using var browser = StartBrowser();
        browser.Navigate().GoToUrl(server.BaseAddress);
        Wait(browser, 10).Until(b => b.FindElement(By.Id("view-status")).Text == "live");

        using var http = new HttpClient { BaseAddress = server.BaseAddress };
        using var stop = new CancellationTokenSource();
        const string SharedPrefix = "Once upon a time, in a small town by the sea, there lived a kind old fisherman and his curious cat.";
        string[] stories = ["Lily liked red balloons.", "Tom found a shiny stone.", "The sun was warm and bright.", "A bird sang in the tree."];
        // A chat from the page too, so that the picture shows both halves at work.
        browser.FindElement(By.Id("max-tokens")).Clear();
        browser.FindElement(By.Id("max-tokens")).SendKeys("60");
        browser.FindElement(By.Id("prompt")).SendKeys("Tell me about the fisherman's cat.");
        browser.FindElement(By.Id("send")).Click();
        var clients = Enumerable.Range(0, 12).Select(c => Task.Run(async () =>
        {
            var rng = new Random(FuzzSeed(c));
            while (!stop.IsCancellationRequested)
            {
                // Shared-prefix requests (prefix hits: shared blocks), n = 2 (forks share the prompt until copy-on-write),
                // and fresh prompts that fill the cache and force evictions.
                string prompt = rng.Next(3) switch
                {
                    0 => SharedPrefix + " " + stories[rng.Next(stories.Length)],
                    1 => stories[rng.Next(stories.Length)] + " " + string.Join(' ', Enumerable.Range(0, 12).Select(_ => stories[rng.Next(stories.Length)])),
                    _ => $"{rng.Next(1000)} " + SharedPrefix,
                };
                var body = JsonSerializer.Serialize(new { prompt, max_tokens = rng.Next(8, 60), n = rng.Next(4) == 0 ? 2 : 1, ignore_eos = true, temperature = 0.9 });
                try
                {
                    using var r = await http.PostAsync("/v1/completions", new StringContent(body, Encoding.UTF8, "application/json"), stop.Token);
                    Assert.True(r.IsSuccessStatusCode, await r.Content.ReadAsStringAsync());
                }
                catch (OperationCanceledException) when (stop.IsCancellationRequested)
                {
                }
            }
        })).ToArray();

        Dictionary<string, long>? seen = null;
        try
        {
            Wait(browser, 25).Until(b => (seen = Counts(browser)) is { } c
                && c["free"] > 0 && c["cached"] > 0 && c["owned"] > 0 && c["shared"] > 0 && c["evicted"] > 0);
            if (Environment.GetEnvironmentVariable("TOKENMILL_UI_SCREENSHOT") is { Length: > 0 } path)
                browser.GetScreenshot().SaveAsFile(Path.IsPathRooted(path) ? path : Path.Combine(TestData.RepoRoot, path));
        }
        catch (WebDriverTimeoutException)
        {
            Assert.Fail($"the map never showed every state at once; last counts {string.Join(", ", seen ?? [])}, engine {engine.Stats}");
        }
        finally
        {
            await stop.CancelAsync();
            await Task.WhenAll(clients);
        }
        Assert.True(engine.Stats.KvEvictions > 0);
    }

    static int FuzzSeed(int client) => TokenMill.Tests.Fuzz.FuzzSettings.Seed(1300) + client;
}
