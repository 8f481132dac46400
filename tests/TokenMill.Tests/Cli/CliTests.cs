using TokenMill.Core;
using TokenMill.Server.Cli;

namespace TokenMill.Tests.Cli;

public class CliTests
{
    static (int Code, string Out, string Err) Run(params string[] args) => CliRun.Capture(args);

    [SkippableFact]
    public void Generate_prints_the_reference_greedy_completion_on_stdout_and_statistics_on_stderr()
    {
        var model = TestData.Require("models/stories260K.gguf");
        var (code, stdout, stderr) = Run("generate", "--model", model, "--prompt", "Once upon a time", "--max-tokens", "40", "--temperature", "0");
        Assert.Equal(0, code);
        Assert.Equal(", there was a little girl named Lily. She loved to play outside in the park. One day, she saw a big,", stdout.Trim());
        Assert.Contains("tokens/s", stderr);
        Assert.Contains("prompt 5 tokens", stderr);
    }

    [SkippableFact]
    public void Generate_with_a_prompt_that_fills_max_tokens_generates_nothing_and_counts_the_prompt()
    {
        // --max-tokens counts the prompt (llama2.c's steps): BOS + "Once upon a time" is 5 tokens, 3 leaves nothing.
        var model = TestData.Require("models/stories260K.gguf");
        var (code, stdout, stderr) = Run("generate", "--model", model, "--prompt", "Once upon a time", "--max-tokens", "3");
        Assert.Equal(0, code);
        Assert.Equal("", stdout.Trim());
        Assert.Contains("prompt 5 tokens", stderr);
        Assert.Contains("generation 0 tokens", stderr);
    }

    [SkippableFact]
    public void Generate_with_tensor_parallelism_prints_the_same_greedy_completion_and_refuses_a_size_that_does_not_divide()
    {
        var model = TestData.Require("models/stories260K.gguf");
        string[] args = ["generate", "--model", model, "--prompt", "Once upon a time", "--max-tokens", "40", "--temperature", "0"];
        var one = Run(args);
        var two = Run([.. args, "-tp", "2"]);
        var four = Run([.. args, "--tensor-parallel-size", "4"]);
        Assert.Equal((0, 0, 0), (one.Code, two.Code, four.Code));
        Assert.Equal(one.Out, two.Out);
        Assert.Equal(one.Out, four.Out);

        var three = Run([.. args, "-tp", "3"]);
        Assert.Equal(1, three.Code);
        Assert.Contains("--tensor-parallel-size 3 does not divide the 8 attention heads of", three.Err);
        var zero = Run([.. args, "-tp", "0"]);
        Assert.Equal(2, zero.Code);
        Assert.Contains("--tensor-parallel-size must be between 1 and 64, got 0", zero.Err);
    }

    /// <summary>The pool's spin is a tuning knob only: blocking at once gives the same greedy completion, and a bad value is a usage error.</summary>
    [SkippableFact]
    public void Cpu_spin_reaches_the_engine_options_changes_no_output_and_an_out_of_range_value_is_a_usage_error()
    {
        static EngineOptions Parse(params string[] args) =>
            GenerateCommand.ParseEngineOptions(new CliArguments("generate", args, GenerateCommand.ValueOptions, GenerateCommand.Flags));
        Assert.Equal(TokenMill.Backends.Cpu.CpuWorkerPool.DefaultSpinMicroseconds, Parse().CpuSpinMicroseconds);
        Assert.Equal(0, Parse("--cpu-spin-us", "0").CpuSpinMicroseconds);
        Assert.Equal(100_000, Parse("--cpu-spin-us", "100000").CpuSpinMicroseconds);
        foreach (string[] command in new[] { new[] { "generate" }, ["serve"], ["bench", "latency"] })
            foreach (string value in new[] { "-1", "100001", "fast" })
            {
                var (code, _, err) = Run([.. command, "--model", "dummy:no-such-preset", "--cpu-spin-us", value]);
                Assert.True(code == 2, $"{string.Join(' ', command)} --cpu-spin-us {value}: exit {code}, {err}");
                Assert.Contains("--cpu-spin-us", err);
            }

        var model = TestData.Require("models/stories260K.gguf");
        string[] args = ["generate", "--model", model, "--prompt", "Once upon a time", "--max-tokens", "30", "--temperature", "0", "--threads", "2"];
        var spinning = Run(args);
        var blocking = Run([.. args, "--cpu-spin-us", "0"]);
        Assert.Equal((0, 0), (spinning.Code, blocking.Code));
        Assert.Equal(spinning.Out, blocking.Out);
    }

    [Fact]
    public void Tensor_parallel_timeout_reaches_the_engine_options_and_a_non_positive_or_non_numeric_value_is_a_usage_error()
    {
        static EngineOptions Parse(params string[] args) =>
            GenerateCommand.ParseEngineOptions(new CliArguments("generate", args, GenerateCommand.ValueOptions, GenerateCommand.Flags));
        Assert.Equal(TimeSpan.FromSeconds(60), Parse().TensorParallelTimeout);
        Assert.Equal(TimeSpan.FromSeconds(2.5), Parse("--tensor-parallel-timeout", "2.5").TensorParallelTimeout);
        Assert.Equal(TimeSpan.FromSeconds(90), Parse("-tp", "2", "--tensor-parallel-timeout=90").TensorParallelTimeout);

        // generate, serve and bench all take it, and all refuse the same bad values before loading anything.
        foreach (string[] command in new[] { new[] { "generate" }, ["serve"], ["bench", "latency"] })
        {
            foreach (var (value, message) in new[]
            {
                ("0", "--tensor-parallel-timeout must be more than 0 and at most 86400 seconds, got 0"),
                ("-3", "--tensor-parallel-timeout must be more than 0 and at most 86400 seconds, got -3"),
                ("1e9", "--tensor-parallel-timeout must be more than 0 and at most 86400 seconds, got 1e9"),
                ("ten", "--tensor-parallel-timeout must be a number of seconds, got 'ten'"),
                ("NaN", "--tensor-parallel-timeout must be a number of seconds, got 'NaN'"),
            })
            {
                var (code, _, err) = Run([.. command, "--model", "dummy:no-such-preset", "--tensor-parallel-timeout", value]);
                Assert.True(code == 2, $"{string.Join(' ', command)} --tensor-parallel-timeout {value}: exit {code}, {err}");
                Assert.Contains(message, err);
            }
        }
    }

    [SkippableFact]
    public void Tokenize_prints_the_ids_of_the_bare_text()
    {
        var model = TestData.Require("models/stories260K.gguf");
        var (code, stdout, _) = Run("tokenize", "--model", model, "Once upon a time");
        Assert.Equal(0, code);
        var ids = stdout.Trim().Split(' ').Select(int.Parse).ToArray();
        Assert.NotEqual(1, ids[0]); // no BOS
        Assert.Equal(4, ids.Length);
        var (_, withBos, _) = Run("tokenize", "--model", model, "--add-special", "Once upon a time");
        Assert.Equal("1 " + stdout.Trim(), withBos.Trim());
    }

    [SkippableFact]
    public void Tokenize_works_on_a_folder_holding_only_tokenizer_files()
    {
        string source = Path.GetDirectoryName(TestData.Require("hf-tokenizers/qwen3/tokenizer.json"))!;
        var dir = Directory.CreateTempSubdirectory("tokenmill-tokonly-");
        try
        {
            foreach (var f in new[] { "tokenizer.json", "tokenizer_config.json" }) File.Copy(Path.Combine(source, f), Path.Combine(dir.FullName, f));
            // Raw input: the text of <|im_start|> is ordinary text; with --parse-special it is the one token 151644.
            var (code, plain, _) = Run("tokenize", "--model", dir.FullName, "<|im_start|>user");
            Assert.Equal(0, code);
            Assert.DoesNotContain("151644", plain);
            var (_, parsed, _) = Run("tokenize", "--model", dir.FullName, "--parse-special", "<|im_start|>user");
            Assert.Equal("151644 872", parsed.Trim());
        }
        finally
        {
            dir.Delete(recursive: true);
        }
    }

    [Fact]
    public void Generate_on_a_dummy_preset_runs_without_a_model_file()
    {
        var (code, stdout, stderr) = Run("generate", "--model", "dummy:qwen2.5-0.5b", "--dtype", "q4_0", "--max-tokens", "4",
            "--ignore-eos", "--seed", "1", "--prompt", "Hello");
        Assert.True(code == 0, stderr);
        Assert.Contains("model dummy:qwen2.5-0.5b", stderr);
        Assert.Contains("generation 3 tokens", stderr);
        Assert.False(string.IsNullOrWhiteSpace(stdout));
    }

    [Theory]
    [InlineData(new[] { "frobnicate" }, "unknown command 'frobnicate'")]
    [InlineData(new[] { "generate", "--bogus", "1" }, "unknown option --bogus")]
    [InlineData(new[] { "generate", "--max-tokens", "many" }, "--max-tokens must be a whole number, got 'many'")]
    [InlineData(new[] { "generate", "--temperature", "-1" }, "--temperature must be between 0")]
    [InlineData(new[] { "generate", "--top-p", "1.5" }, "--top-p must be between")]
    [InlineData(new[] { "generate", "--dtype", "q3_x" }, "--dtype must be one of")]
    [InlineData(new[] { "generate", "--dtype", "f32", "--dummy-values", "fp8" }, "--dummy-values must be one of F32, F16, BF16, Q8_0, Q4_0, Q4_K, Q6_K; got 'fp8'")]
    [InlineData(new[] { "generate", "--prompt" }, "option --prompt needs a value")]
    [InlineData(new[] { "generate", "stray" }, "unexpected argument 'stray'")]
    [InlineData(new[] { "tokenize", "text" }, "--model is required")]
    [InlineData(new[] { "generate", "--eviction-policy", "random" }, "--eviction-policy must be one of lru, lfu, fifo, priority-lru; got 'random'")]
    [InlineData(new[] { "generate", "--kv-cache-dtype", "fp8" }, "--kv-cache-dtype must be one of f32, f16, q8_0; got 'fp8'")]
    [InlineData(new[] { "info", "dummy:tinyllama-1.1b", "--kv-cache-dtype", "q4_0" }, "--kv-cache-dtype must be one of f32, f16, q8_0; got 'q4_0'")]
    public void Bad_arguments_exit_2_with_a_precise_message(string[] args, string message)
    {
        var (code, _, stderr) = Run(args);
        Assert.Equal(2, code);
        Assert.Contains(message, stderr);
    }

    [Theory]
    [InlineData("--dtype", "Q8_0", "the values of another type (BF16) apply to F32 weights only, not Q8_0")]
    [InlineData("--model", "/nonexistent/model.gguf", "--dummy-values BF16 applies to dummy models only")]
    public void Dummy_values_other_than_an_F32_dummy_models_are_refused(string option, string value, string message)
    {
        var (code, _, stderr) = Run("generate", option, value, "--dummy-values", "bf16", "--max-tokens", "2");
        Assert.Equal(1, code);
        Assert.Contains(message, stderr);
    }

    [Fact]
    public void A_missing_model_file_exits_1_naming_the_file()
    {
        var (code, _, stderr) = Run("generate", "--model", "/nonexistent/model.gguf");
        Assert.Equal(1, code);
        Assert.Contains("/nonexistent/model.gguf", stderr);
    }

    [Fact]
    public void A_file_that_is_not_gguf_exits_1_naming_the_file_and_the_field()
    {
        var path = Path.GetTempFileName();
        try
        {
            File.WriteAllText(path, "this is not a model, just some text long enough");
            var (code, _, stderr) = Run("generate", "--model", path);
            Assert.Equal(1, code);
            Assert.Contains(path, stderr);
            Assert.Contains("magic", stderr);
        }
        finally
        {
            File.Delete(path);
        }
    }

    [Fact]
    public void An_unknown_dummy_preset_lists_the_known_ones()
    {
        var (code, _, stderr) = Run("generate", "--model", "dummy:gpt-5");
        Assert.Equal(1, code);
        Assert.Contains("unknown dummy preset 'gpt-5'", stderr);
        Assert.Contains("tinyllama-1.1b", stderr);
    }
}

public class GeneratePromptsFileTests
{
    [SkippableFact]
    public void Prompts_file_with_jsonl_prints_one_object_per_prompt_in_input_order()
    {
        var model = TestData.Require("models/stories260K.gguf");
        var file = Path.GetTempFileName();
        try
        {
            File.WriteAllLines(file, ["Once upon a time", "", "Lily and Ben", "The cat"]);
            var stdout = new StringWriter();
            var stderr = new StringWriter();
            int code = TokenMill.Server.Cli.Cli.Run(["generate", "--model", model, "--prompts-file", file, "--jsonl",
                "--temperature", "0", "--max-tokens", "20", "--max-model-len", "128"], stdout, stderr);
            Assert.True(code == 0, stderr.ToString());
            var lines = stdout.ToString().Split('\n', StringSplitOptions.RemoveEmptyEntries);
            Assert.Equal(3, lines.Length); // the empty line is skipped
            string[] prompts = ["Once upon a time", "Lily and Ben", "The cat"];
            for (int i = 0; i < 3; i++)
            {
                var o = System.Text.Json.JsonDocument.Parse(lines[i]).RootElement;
                Assert.Equal(i, o.GetProperty("index").GetInt32());
                Assert.Equal(prompts[i], o.GetProperty("prompt").GetString());
                // --max-tokens counts the whole sequence: the completion gets what the prompt leaves.
                int promptTokens = o.GetProperty("prompt_tokens").GetInt32();
                Assert.True(promptTokens > 1);
                Assert.Equal(20 - promptTokens, o.GetProperty("completion_tokens").GetInt32());
                Assert.Equal(20 - promptTokens, o.GetProperty("token_ids").GetArrayLength());
                Assert.Equal("length", o.GetProperty("finish_reason").GetString());
            }
            Assert.StartsWith(", there was a little girl", System.Text.Json.JsonDocument.Parse(lines[0]).RootElement.GetProperty("text").GetString());
        }
        finally
        {
            File.Delete(file);
        }
    }
}

public class GeneratePrefixCachingTests
{
    [SkippableTheory]
    [InlineData(false)]
    [InlineData(true)]
    public void Prompts_sharing_a_prefix_hit_the_cache_unless_it_is_turned_off(bool off)
    {
        var model = TestData.Require("models/stories260K.gguf");
        var file = Path.GetTempFileName();
        try
        {
            const string shared = "Once upon a time, there was a little girl named Lily. She loved to play outside.";
            File.WriteAllLines(file, [shared + " One day", shared + " Her mom", shared + " The sun"]);
            var stdout = new StringWriter();
            var stderr = new StringWriter();
            string[] args = ["generate", "--model", model, "--prompts-file", file, "--temperature", "0", "--max-tokens", "60",
                "--max-model-len", "128", "--block-size", "4", "--max-num-seqs", "1", "--eviction-policy", "LFU", "--jsonl"];
            int code = TokenMill.Server.Cli.Cli.Run(off ? [.. args, "--no-prefix-caching"] : args, stdout, stderr);
            Assert.True(code == 0, stderr.ToString());
            var m = System.Text.RegularExpressions.Regex.Match(stderr.ToString(), @"prefix cache: (\d+) of (\d+) looked-up tokens hit");
            Assert.True(m.Success, stderr.ToString());
            int hits = int.Parse(m.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture);
            // The hits are also per prompt, in the JSON lines.
            var cachedPerPrompt = stdout.ToString().Split('\n', StringSplitOptions.RemoveEmptyEntries)
                .Sum(l => System.Text.Json.JsonDocument.Parse(l).RootElement.GetProperty("cached_prompt_tokens").GetInt32());
            Assert.Equal(hits, cachedPerPrompt);
            if (off) Assert.Equal(0, hits);
            else Assert.True(hits >= 2 * 16, $"two later prompts should each reuse most of the shared prefix: {stderr}");
        }
        finally
        {
            File.Delete(file);
        }
    }
}

public class SimulateCommandTests
{
    [Fact]
    public void Generate_trace_then_simulate_prints_every_policy_and_the_belady_bound()
    {
        var path = Path.GetTempFileName();
        try
        {
            var err = new StringWriter();
            Assert.Equal(0, TokenMill.Server.Cli.Cli.Run(["simulate", "generate-trace", "--out", path, "--seed", "5", "--sessions", "30"], new StringWriter(), err));
            Assert.Contains("30 sessions", err.ToString());
            var stdout = new StringWriter();
            int code = TokenMill.Server.Cli.Cli.Run(["simulate", "--trace", path, "--num-blocks", "256", "--no-prefix-caching"], stdout, err);
            Assert.True(code == 0, err.ToString());
            var lines = stdout.ToString().Split('\n', StringSplitOptions.RemoveEmptyEntries);
            foreach (string name in new[] { "no-cache", "lru", "lfu", "fifo", "priority-lru", "belady (bound)" })
                Assert.Contains(lines, l => l.StartsWith(name + " ", StringComparison.Ordinal));
        }
        finally
        {
            File.Delete(path);
        }
    }

    [Theory]
    [InlineData(new[] { "simulate" }, "--trace is required")]
    [InlineData(new[] { "simulate", "--trace", "t.jsonl", "--eviction-policy", "mru" }, "--eviction-policy must be one of")]
    [InlineData(new[] { "simulate", "generate-trace" }, "--out is required")]
    public void Bad_simulate_arguments_exit_2(string[] args, string message)
    {
        var err = new StringWriter();
        Assert.Equal(2, TokenMill.Server.Cli.Cli.Run(args, new StringWriter(), err));
        Assert.Contains(message, err.ToString());
    }
}

/// <summary><c>tokenmill tokenize</c> must print exactly llama.cpp's ids for every test-vector case.</summary>
public class TokenizeCommandVectorTests
{
    public static IEnumerable<object[]> Vocabularies() =>
        TokenMill.Tests.Tokenization.VocabTestVectors.Available().Select(v => new object[] { v }).DefaultIfEmpty(["(absent)"]);

    [SkippableTheory]
    [MemberData(nameof(Vocabularies))]
    public void Tokenize_agrees_with_the_vectors(string vocabulary)
    {
        Skip.If(vocabulary == "(absent)", "shared test data not found");
        var gguf = TokenMill.Tests.Tokenization.VocabTestVectors.GgufPath(vocabulary);
        var failures = new List<string>();
        foreach (var c in TokenMill.Tests.Tokenization.VocabTestVectors.Load(vocabulary))
        {
            var stdout = new StringWriter();
            int code = TokenMill.Server.Cli.Cli.Run(["tokenize", "--model", gguf, "--", c.Input], stdout, new StringWriter());
            Assert.Equal(0, code);
            var printed = stdout.ToString().TrimEnd('\n');
            if (printed != string.Join(' ', c.Expected))
                failures.Add($"case {c.Index} {TokenMill.Tests.Tokenization.VocabTestVectors.Escape(c.Input)}: printed '{printed}'");
        }
        Assert.True(failures.Count == 0, string.Join('\n', failures));
    }
}

public class BenchCommandTests
{
    [SkippableTheory]
    [InlineData("latency", "prefill_tokens_per_s")]
    [InlineData("throughput", "generated_tokens_per_s")]
    public void Bench_writes_a_summary_and_json(string mode, string key)
    {
        var model = TestData.Require("models/stories260K.gguf");
        var json = Path.GetTempFileName();
        try
        {
            var stdout = new StringWriter();
            var stderr = new StringWriter();
            int code = TokenMill.Server.Cli.Cli.Run(["bench", mode, "--model", model, "--input-len", "16", "--output-len", "8",
                "--repeat", "1", "--num-prompts", "4", "--output-json", json], stdout, stderr);
            Assert.True(code == 0, stderr.ToString());
            Assert.Contains(key, stdout.ToString());
            var o = System.Text.Json.JsonDocument.Parse(File.ReadAllText(json)).RootElement;
            Assert.Equal(mode, o.GetProperty("mode").GetString());
            Assert.True(o.GetProperty(key).GetDouble() > 0);
            Assert.Equal(TokenMill.Backends.Cpu.CpuWorkerPool.DefaultSpinMicroseconds, o.GetProperty("cpu_spin_us").GetInt32());
        }
        finally
        {
            File.Delete(json);
        }
    }

    [SkippableFact]
    public void Throughput_reports_the_steady_batch_phase_or_null()
    {
        // A tiny model's steps take about a millisecond, so on a loaded machine a request may end before the last
        // one's first token is read: the field is then null. Its arithmetic is tested on fixed arrivals below.
        var model = TestData.Require("models/stories260K.gguf");
        var json = Path.GetTempFileName();
        try
        {
            var stderr = new StringWriter();
            int code = TokenMill.Server.Cli.Cli.Run(["bench", "throughput", "--model", model, "--input-len", "16", "--output-len", "32",
                "--num-prompts", "4", "--output-json", json], new StringWriter(), stderr);
            Assert.True(code == 0, stderr.ToString());
            var o = System.Text.Json.JsonDocument.Parse(File.ReadAllText(json)).RootElement;
            var rate = o.GetProperty("batch_decode_tokens_per_s");
            Assert.True(rate.ValueKind == System.Text.Json.JsonValueKind.Null || rate.GetDouble() > 0, rate.ToString());
            Assert.True(o.GetProperty("prefill_phase_s").GetDouble() >= 0);
        }
        finally
        {
            File.Delete(json);
        }
    }

    [Fact]
    public void The_steady_batch_phase_runs_from_the_last_first_token_to_the_first_last_token()
    {
        // Three requests: first tokens at 1, 2, 3 s; the first to end ends at 6 s. Tokens arriving in (3, 6]:
        // A at 4, 5, 6 s (3), B at 5, 6 s (2), C at 4 and 6 s, the latter carrying 2 (3): 8 tokens over 3 s.
        (double, int)[] a = [(1, 1), (4, 1), (5, 1), (6, 1)], b = [(2, 1), (5, 1), (6, 1), (7, 1)], c = [(3, 1), (4, 1), (6, 2), (9, 1)];
        var (start, rate) = TokenMill.Server.Cli.BenchCommand.SteadyBatchDecode([a, b, c]);
        Assert.Equal(3.0, start);
        Assert.Equal(8 / 3.0, rate!.Value, 12);
        // A request that ended before another's first token: no steady phase.
        Assert.Null(TokenMill.Server.Cli.BenchCommand.SteadyBatchDecode([[(1, 1), (2, 1)], [(3, 1), (4, 1)]]).TokensPerSecond);
        // A request with no token at all: nothing to measure.
        Assert.Null(TokenMill.Server.Cli.BenchCommand.SteadyBatchDecode([[(1, 1), (2, 1)], []]).TokensPerSecond);
    }

    [Fact]
    public void An_unknown_bench_mode_is_a_usage_error()
    {
        var stderr = new StringWriter();
        Assert.Equal(2, TokenMill.Server.Cli.Cli.Run(["bench", "serve-me"], new StringWriter(), stderr));
        Assert.Contains("unknown bench mode 'serve-me'", stderr.ToString());
    }
}

/// <summary><c>generate --temperature 0</c> prints llama.cpp's greedy completion of every arch reference, byte for byte.</summary>
public class GenerateArchReferenceTests
{
    [SkippableTheory]
    [MemberData(nameof(TokenMill.Tests.Backends.ArchReferenceTests.Cases), MemberType = typeof(TokenMill.Tests.Backends.ArchReferenceTests))]
    public void Generate_prints_the_reference_completion(string model, int index)
    {
        var c = TokenMill.Tests.Backends.ArchReferenceTests.Load(index);
        Assert.Equal(model, c.Model);
        var stdout = new StringWriter();
        var stderr = new StringWriter();
        // --max-tokens counts the whole sequence: the prompt (with BOS where the vocabulary adds one) plus the completion.
        int code = TokenMill.Server.Cli.Cli.Run(["generate", "--model", TestData.Require("arch/" + model), "--prompt", c.Prompt,
            "--max-tokens", (c.PromptIds.Length + c.CompletionIds.Length).ToString(System.Globalization.CultureInfo.InvariantCulture),
            "--temperature", "0", "--ignore-eos"], stdout, stderr);
        Assert.True(code == 0, stderr.ToString());
        Assert.Equal(c.Completion, stdout.ToString()[..^Environment.NewLine.Length]);
    }
}

public class InfoCommandTests
{
    [SkippableFact]
    public void Info_describes_a_gguf_and_sizes_its_kv_cache()
    {
        var model = TestData.Require("arch/arch-qwen3.gguf");
        var stdout = new StringWriter();
        Assert.Equal(0, TokenMill.Server.Cli.Cli.Run(["info", model, "--kv-cache-memory", "1MiB", "--json"], stdout, new StringWriter()));
        var o = System.Text.Json.JsonDocument.Parse(stdout.ToString()).RootElement;
        Assert.Equal("qwen3", o.GetProperty("architecture").GetString());
        Assert.Equal(3_401_408, o.GetProperty("parameters").GetInt64()); // the README of arch/ gives it
        // 3 layers × 2 (K and V) × 2 kv heads × 32 dims × 4 bytes = 1536 bytes per token; 1 MiB holds 682 tokens → 42 whole blocks of 16.
        Assert.Equal(1536, o.GetProperty("kv_bytes_per_token").GetInt64());
        Assert.Equal(672, o.GetProperty("kv_tokens_in_budget").GetInt64());
        Assert.Equal("f32", o.GetProperty("kv_cache_dtype").GetString());

        // An f16 cache: half the bytes per token, twice the tokens (1 MiB / 768 bytes = 1365 → 85 whole blocks).
        stdout = new StringWriter();
        Assert.Equal(0, TokenMill.Server.Cli.Cli.Run(["info", model, "--kv-cache-memory", "1MiB", "--kv-cache-dtype", "f16", "--json"], stdout, new StringWriter()));
        o = System.Text.Json.JsonDocument.Parse(stdout.ToString()).RootElement;
        Assert.Equal("f16", o.GetProperty("kv_cache_dtype").GetString());
        Assert.Equal(768, o.GetProperty("kv_bytes_per_token").GetInt64());
        Assert.Equal(1360, o.GetProperty("kv_tokens_in_budget").GetInt64());

        // q8_0 cannot hold stories260K (head dimension 8): info says so rather than sizing a cache the engine refuses.
        var stderr = new StringWriter();
        Assert.Equal(2, TokenMill.Server.Cli.Cli.Run(["info", TestData.Require("models/stories260K.gguf"), "--kv-cache-dtype", "q8_0"], new StringWriter(), stderr));
        Assert.Contains("--kv-cache-dtype q8_0 needs a head dimension that is a multiple of 32", stderr.ToString());
        Assert.Contains("this model's is 8", stderr.ToString());
    }

    [Fact]
    public void Info_on_a_dummy_preset_counts_the_real_models_parameters()
    {
        var stdout = new StringWriter();
        Assert.Equal(0, TokenMill.Server.Cli.Cli.Run(["info", "dummy:llama-3.1-8b", "--json"], stdout, new StringWriter()));
        var o = System.Text.Json.JsonDocument.Parse(stdout.ToString()).RootElement;
        Assert.InRange(o.GetProperty("parameters").GetInt64(), 8_030_000_000, 8_031_000_000); // Llama-3.1-8B: 8.03 B
    }
}

/// <summary>Sets process environment variables, so it runs alone: no other test sees them.</summary>
[CollectionDefinition(nameof(EnvironmentCollection), DisableParallelization = true)]
public sealed class EnvironmentCollection;

[Collection(nameof(EnvironmentCollection))]
public class ConfigPrecedenceTests
{
    static readonly HashSet<string> Values = ["max-num-seqs", "port", "model"];
    static readonly HashSet<string> Flags = ["ignore-eos", "help"];

    [Fact]
    public void Command_line_beats_environment_beats_config_file()
    {
        var dir = Directory.CreateTempSubdirectory("tokenmill-config").FullName;
        try
        {
            var yaml = Path.Combine(dir, "c.yaml");
            File.WriteAllText(yaml, "# engine\nmax_num_seqs: 8\nport: '9000'\nmodel: dummy:qwen2.5-0.5b  # a comment\nignore-eos: true\n");
            var json = Path.Combine(dir, "c.json");
            File.WriteAllText(json, """{"max-num-seqs": 16, "port": 9100}""");

            var fromYaml = new TokenMill.Server.Cli.CliArguments("serve", ["--config", yaml], Values, Flags);
            Assert.Equal(8, fromYaml.Int("max-num-seqs", 256));
            Assert.Equal("9000", fromYaml.String("port"));
            Assert.Equal("dummy:qwen2.5-0.5b", fromYaml.String("model"));
            Assert.True(fromYaml.Flag("ignore-eos"));

            Environment.SetEnvironmentVariable("TOKENMILL_MAX_NUM_SEQS", "32");
            try
            {
                var envOverConfig = new TokenMill.Server.Cli.CliArguments("serve", ["--config", json], Values, Flags);
                Assert.Equal(32, envOverConfig.Int("max-num-seqs", 256));
                Assert.Equal(9100, envOverConfig.Int("port", 8000));
                var cliOverEnv = new TokenMill.Server.Cli.CliArguments("serve", ["--config", json, "--max-num-seqs", "4"], Values, Flags);
                Assert.Equal(4, cliOverEnv.Int("max-num-seqs", 256));
            }
            finally
            {
                Environment.SetEnvironmentVariable("TOKENMILL_MAX_NUM_SEQS", null);
            }

            File.WriteAllText(json, """{"max-num-sqes": 16}""");
            var e = Assert.Throws<TokenMill.Server.Cli.UsageException>(() => new TokenMill.Server.Cli.CliArguments("serve", ["--config", json], Values, Flags));
            Assert.Contains("unknown option 'max-num-sqes'", e.Message);
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }
}
