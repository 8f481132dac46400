using System.Net;
using System.Security.Cryptography;
using TokenMill.Models;
using TokenMill.Models.Hub;

namespace TokenMill.Tests.Models.Hub;

/// <summary>
/// Models by name from a Hugging Face Hub (a local <see cref="FakeHub"/> that speaks its endpoints and headers) into the
/// cache layout of huggingface_hub: quantization choice, resume, checksum, offline mode, reuse of a Python-made cache, errors.
/// </summary>
public sealed class HubDownloadTests : IAsyncLifetime, IDisposable
{
    const string GgufRepo = "tm-test/tiny-GGUF";
    readonly FakeHub _hub = new();
    readonly string _cache = Directory.CreateTempSubdirectory("tokenmill-hub-").FullName;
    readonly FakeHub.HubFile _q4 = new("tiny-Q4_K_M.gguf", RandomBytes(300_000, 1), Lfs: true);
    readonly FakeHub.HubFile _q8 = new("tiny.Q8_0.gguf", RandomBytes(500_000, 2), Lfs: true);
    readonly FakeHub.HubFile _readme = new("README.md", "# tiny\n"u8.ToArray(), Lfs: false);
    string _commit = "";

    public async Task InitializeAsync()
    {
        await _hub.StartAsync();
        _commit = _hub.AddRepo(GgufRepo, [_readme, _q4, _q8, new("mmproj-tiny-F16.gguf", RandomBytes(1000, 3), Lfs: true)]);
    }

    public async Task DisposeAsync() => await _hub.DisposeAsync();

    public void Dispose() => Directory.Delete(_cache, recursive: true);

    static byte[] RandomBytes(int n, int seed)
    {
        var b = new byte[n];
        new Random(seed).NextBytes(b);
        return b;
    }

    HubOptions Options(bool offline = false, string? token = null) =>
        new() { Endpoint = _hub.Endpoint, CacheDirectory = _cache, Offline = offline, Token = token };

    string Resolve(string model, HubOptions? options = null, string revision = "main")
    {
        Assert.True(HubModelReference.TryParse(model, out var reference), model);
        return HubModelResolver.Resolve(reference, revision, options ?? Options());
    }

    string RepoDir => Path.Combine(_cache, "models--tm-test--tiny-GGUF");

    [Fact]
    public void Quantization_tag_picks_its_file_into_the_huggingface_hub_layout()
    {
        string path = Resolve($"{GgufRepo}:q8_0");

        Assert.Equal(Path.Combine(RepoDir, "snapshots", _commit, "tiny.Q8_0.gguf"), path);
        Assert.Equal(Path.Combine("..", "..", "blobs", _q8.Sha256), new FileInfo(path).LinkTarget);
        Assert.Equal(_q8.Content, File.ReadAllBytes(path));
        Assert.Equal(_commit, File.ReadAllText(Path.Combine(RepoDir, "refs", "main")));
        Assert.Empty(Directory.GetFiles(Path.Combine(RepoDir, "blobs"), "*.incomplete"));
        Assert.False(File.Exists(Path.Combine(RepoDir, "snapshots", _commit, _q4.Path)), "only the chosen quantization is fetched");
    }

    [Fact]
    public void Without_a_tag_a_repository_of_quantizations_gives_Q4_K_M_as_llama_server_does()
    {
        Assert.EndsWith(_q4.Path, Resolve(GgufRepo));
    }

    [Fact]
    public void An_absent_quantization_lists_the_ones_there_are()
    {
        var e = Assert.Throws<HubException>(() => Resolve($"{GgufRepo}:Q5_K_S"));
        Assert.Contains("no GGUF file of quantization 'Q5_K_S'", e.Message);
        Assert.Contains("available: Q4_K_M, Q8_0", e.Message); // the vision projector (mmproj) is not a choice
    }

    [Fact]
    public void An_interrupted_download_resumes_with_Range_from_what_it_kept()
    {
        // Every attempt of the first run is cut after half its bytes: the run fails, keeping the bytes it got.
        _hub.CutsLeft = HubClient.MaxAttempts;
        var e = Assert.Throws<HubException>(() => Resolve($"{GgufRepo}:Q8_0"));
        Assert.Contains("resumes", e.Message);
        string incomplete = Path.Combine(RepoDir, "blobs", _q8.Sha256 + ".incomplete");
        long kept = new FileInfo(incomplete).Length;
        Assert.InRange(kept, 1, _q8.Content.Length - 1);
        Assert.False(File.Exists(Path.Combine(RepoDir, "blobs", _q8.Sha256)), "a partial file never gets the blob's name");
        Assert.False(Directory.Exists(Path.Combine(RepoDir, "snapshots", _commit)) && File.Exists(Path.Combine(RepoDir, "snapshots", _commit, _q8.Path)));
        // Each attempt asked for the bytes after those already kept.
        var ranges = _hub.Requests.Where(r => r.Path.StartsWith("/cdn/", StringComparison.Ordinal)).Select(r => r.Range).ToList();
        Assert.Equal(HubClient.MaxAttempts, ranges.Count);
        Assert.Null(ranges[0]);
        Assert.All(ranges.Skip(1), r => Assert.StartsWith("bytes=", r));

        // The next run resumes from the kept length and ends with the whole, checked file.
        int before = _hub.Requests.Count;
        string path = Resolve($"{GgufRepo}:Q8_0");
        Assert.Equal(_q8.Content, File.ReadAllBytes(path));
        Assert.Contains(_hub.Requests.Skip(before), r => r.Path.StartsWith("/cdn/", StringComparison.Ordinal) && r.Range == $"bytes={kept}-");
        Assert.False(File.Exists(incomplete));
    }

    [Fact]
    public void A_cut_connection_is_resumed_within_one_run()
    {
        _hub.CutsLeft = 1;
        string path = Resolve($"{GgufRepo}:Q4_K_M");
        Assert.Equal(_q4.Content, File.ReadAllBytes(path));
        var cdn = _hub.Requests.Where(r => r.Path.StartsWith("/cdn/", StringComparison.Ordinal)).ToList();
        Assert.Equal(2, cdn.Count);
        // The server sent half before it cut; what reached the client before the reset (at most that) is kept and resumed from.
        Assert.Matches(@"^bytes=\d+-$", cdn[1].Range);
        Assert.InRange(long.Parse(cdn[1].Range!["bytes=".Length..^1]), 1, _q4.Content.Length / 2);
    }

    [Fact]
    public void A_corrupt_blob_is_rejected_and_nothing_is_cached()
    {
        _hub.Corrupt = true;
        var e = Assert.Throws<HubException>(() => Resolve($"{GgufRepo}:Q8_0"));
        Assert.Contains("corrupt", e.Message);
        Assert.Contains(_q8.Sha256, e.Message);
        Assert.Empty(Directory.GetFiles(Path.Combine(RepoDir, "blobs")));
        Assert.False(File.Exists(Path.Combine(RepoDir, "snapshots", _commit, _q8.Path)));

        // A later clean download succeeds.
        _hub.Corrupt = false;
        Assert.Equal(_q8.Content, File.ReadAllBytes(Resolve($"{GgufRepo}:Q8_0")));
    }

    [Fact]
    public void Offline_a_cached_model_loads_without_a_request_and_a_missing_one_is_a_clear_error()
    {
        string online = Resolve($"{GgufRepo}:Q8_0");
        int before = _hub.Requests.Count;

        Assert.Equal(online, Resolve($"{GgufRepo}:Q8_0", Options(offline: true)));
        Assert.Equal(before, _hub.Requests.Count);

        var other = Assert.Throws<HubException>(() => Resolve($"{GgufRepo}:Q4_K_M", Options(offline: true)));
        Assert.Contains("no GGUF file of quantization 'Q4_K_M'", other.Message);
        var missing = Assert.Throws<HubException>(() => Resolve("tm-test/never-fetched", Options(offline: true)));
        Assert.Contains("HF_HUB_OFFLINE", missing.Message);
        Assert.Contains("not in the cache", missing.Message);
        Assert.Equal(before, _hub.Requests.Count);
    }

    [Fact]
    public async Task An_unreachable_hub_falls_back_to_the_cached_revision_and_else_says_it_cannot_reach_it()
    {
        string online = Resolve($"{GgufRepo}:Q8_0");
        string endpoint = _hub.Endpoint;
        await _hub.DisposeAsync(); // nothing listens there any more
        var unreachable = new HubOptions { Endpoint = endpoint, CacheDirectory = _cache };
        Assert.Equal(online, Resolve($"{GgufRepo}:Q8_0", unreachable));
        var e = Assert.Throws<HubException>(() => Resolve("tm-test/never-fetched", unreachable));
        Assert.Contains("cannot reach", e.Message);
        Assert.Contains("not in the cache", e.Message);
    }

    [Fact]
    public void A_cache_laid_out_by_huggingface_hub_is_reused_without_downloading()
    {
        // What huggingface_hub's hf_hub_download leaves: the blob named by its sha256, a relative symlink, refs/main.
        Directory.CreateDirectory(Path.Combine(RepoDir, "blobs"));
        Directory.CreateDirectory(Path.Combine(RepoDir, "refs"));
        Directory.CreateDirectory(Path.Combine(RepoDir, "snapshots", _commit));
        File.WriteAllBytes(Path.Combine(RepoDir, "blobs", _q4.Sha256), _q4.Content);
        File.CreateSymbolicLink(Path.Combine(RepoDir, "snapshots", _commit, _q4.Path), $"../../blobs/{_q4.Sha256}");
        File.WriteAllText(Path.Combine(RepoDir, "refs", "main"), _commit);

        string path = Resolve($"{GgufRepo}:Q4_K_M");
        Assert.Equal(Path.Combine(RepoDir, "snapshots", _commit, _q4.Path), path);
        Assert.Equal(0, _hub.CountRequests("/cdn/"));
        // Offline too, with no request at all.
        int before = _hub.Requests.Count;
        Assert.Equal(path, Resolve($"{GgufRepo}:Q4_K_M", Options(offline: true)));
        Assert.Equal(before, _hub.Requests.Count);
    }

    [Fact]
    public void A_blob_another_snapshot_fetched_is_linked_not_downloaded_again()
    {
        Resolve($"{GgufRepo}:Q4_K_M");
        string next = _hub.AddRepo(GgufRepo, [_readme, _q4, _q8]); // a new commit on main with the same Q4_K_M bytes
        int cdn = _hub.CountRequests("/cdn/");
        string path = Resolve($"{GgufRepo}:Q4_K_M");
        Assert.Equal(Path.Combine(RepoDir, "snapshots", next, _q4.Path), path);
        Assert.Equal(cdn, _hub.CountRequests("/cdn/"));
        Assert.Equal(next, File.ReadAllText(Path.Combine(RepoDir, "refs", "main")));
    }

    [Fact]
    public void A_private_repository_needs_the_token_which_never_goes_to_the_storage_host()
    {
        _hub.AddRepo("tm-test/private-GGUF", [_q8], isPrivate: true);
        var e = Assert.Throws<HubException>(() => Resolve("tm-test/private-GGUF"));
        Assert.Equal(HttpStatusCode.Unauthorized, e.Status);
        Assert.Contains("repository not found (401)", e.Message);
        Assert.Contains("HF_TOKEN", e.Message);

        string path = Resolve("tm-test/private-GGUF", Options(token: _hub.Token));
        Assert.Equal(_q8.Content, File.ReadAllBytes(path));
        Assert.Contains(_hub.Requests, r => r.Path.Contains("/resolve/", StringComparison.Ordinal) && r.Authorization == $"Bearer {_hub.Token}");
        Assert.All(_hub.Requests.Where(r => r.Path.StartsWith("/cdn/", StringComparison.Ordinal)), r => Assert.Null(r.Authorization));
    }

    [Fact]
    public async Task Missing_repositories_revisions_and_files_are_clear_errors()
    {
        var repo = Assert.Throws<HubException>(() => Resolve("tm-test/no-such-repo"));
        Assert.Contains("tm-test/no-such-repo: repository not found (401)", repo.Message);

        var revision = Assert.Throws<HubException>(() => Resolve(GgufRepo, revision: "v9"));
        Assert.Equal(HttpStatusCode.NotFound, revision.Status);
        Assert.Contains("revision 'v9' does not exist (404)", revision.Message);

        using var client = new HubClient(Options());
        var file = await Assert.ThrowsAsync<HubException>(() => client.DownloadFileAsync(GgufRepo, "nope.gguf"));
        Assert.Equal(HttpStatusCode.NotFound, file.Status);
        Assert.Contains("'nope.gguf' does not exist at revision 'main' (404)", file.Message);
    }

    [Fact]
    public void A_tag_revision_is_recorded_in_refs_and_a_commit_revision_is_used_as_is()
    {
        string v1 = _hub.AddRepo(GgufRepo, [_q8], revision: "v1.0");
        string path = Resolve(GgufRepo, revision: "v1.0");
        Assert.Equal(Path.Combine(RepoDir, "snapshots", v1, _q8.Path), path);
        Assert.Equal(v1, File.ReadAllText(Path.Combine(RepoDir, "refs", "v1.0")));

        Assert.Equal(Path.Combine(RepoDir, "snapshots", _commit, _q4.Path), Resolve(GgufRepo, revision: _commit));
        Assert.False(File.Exists(Path.Combine(RepoDir, "refs", _commit)));
    }

    [Fact]
    public async Task A_git_file_is_cached_under_its_git_blob_id()
    {
        using var client = new HubClient(Options());
        string path = await client.DownloadFileAsync(GgufRepo, "README.md");
        Assert.Equal(_readme.Content, File.ReadAllBytes(path));
        Assert.Equal(Path.Combine("..", "..", "blobs", _readme.GitSha1), new FileInfo(path).LinkTarget);
    }

    [SkippableFact]
    public void A_real_model_loads_by_name_from_the_hub()
    {
        var stories = new FakeHub.HubFile("stories260K-F32.gguf", File.ReadAllBytes(TestData.Require("models/stories260K.gguf")), Lfs: true);
        _hub.AddRepo("tm-test/stories260K-GGUF", [stories]);
        using var model = ModelLoader.Load("tm-test/stories260K-GGUF:F32", new ModelLoadOptions { Hub = Options() });
        Assert.Equal("llama", model.Config.Architecture);
        Assert.Equal(512, model.Config.VocabSize);
    }

    [Fact]
    public void A_safetensors_repository_fetches_the_folder_files()
    {
        var files = new[] { "README.md", "config.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
            "model.safetensors.index.json", "tokenizer.json", "tokenizer_config.json", "onnx/model.onnx", "original/consolidated.00.pth" };
        var chosen = HubModelResolver.Choose(new HubModelReference("Org/Model", null), "main", files);
        Assert.Equal(["config.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors.index.json",
            "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"], chosen);
    }

    [Fact]
    public void A_split_gguf_is_refused_with_what_to_do()
    {
        var e = Assert.Throws<HubException>(() => HubModelResolver.Choose(new HubModelReference("Org/Big-GGUF", "Q4_K_M"), "main",
            ["Q4_K_M/big-Q4_K_M-00001-of-00002.gguf", "Q4_K_M/big-Q4_K_M-00002-of-00002.gguf", "big-Q8_0.gguf"]));
        Assert.Contains("split into 2 files", e.Message);
    }

    [Theory]
    [InlineData("Qwen/Qwen2.5-0.5B-Instruct-GGUF", "Qwen/Qwen2.5-0.5B-Instruct-GGUF", null)]
    [InlineData("unsloth/Llama-3.2-1B-Instruct-GGUF:Q4_K_M", "unsloth/Llama-3.2-1B-Instruct-GGUF", "Q4_K_M")]
    [InlineData("bartowski/gemma-2-2b-it-GGUF:IQ2_XXS", "bartowski/gemma-2-2b-it-GGUF", "IQ2_XXS")]
    [InlineData("dummy:tinyllama-1.1b", null, null)]
    [InlineData("models/stories.gguf", null, null)]
    [InlineData("a/b/c", null, null)]
    [InlineData("/abs/path", null, null)]
    [InlineData("./rel", null, null)]
    [InlineData("Org/Name:", null, null)]
    [InlineData("Org/bad--name", null, null)]
    public void Hub_names_are_told_from_local_paths(string model, string? repo, string? quant)
    {
        bool ok = HubModelReference.TryParse(model, out var r);
        Assert.Equal(repo is not null, ok);
        if (ok)
        {
            Assert.Equal(repo, r!.RepoId);
            Assert.Equal(quant, r.Quantization);
        }
    }

    [Fact]
    public void Revision_is_refused_for_a_local_path_and_a_missing_repository_mentions_the_local_reading()
    {
        string local = Path.Combine(_cache, "model.gguf");
        File.WriteAllBytes(local, [1]);
        var e = Assert.Throws<ArgumentException>(() => ModelLoader.LocalPath(local, new ModelLoadOptions { Revision = "v1", Hub = Options() }));
        Assert.Contains("--revision applies to Hub models", e.Message);
        Assert.Equal(local, ModelLoader.LocalPath(local, new ModelLoadOptions { Hub = Options() }));

        var missing = Assert.Throws<HubException>(() => ModelLoader.LocalPath("models/llama", new ModelLoadOptions { Hub = Options() }));
        Assert.Contains("repository not found (401)", missing.Message);
        Assert.Contains("no local file or folder 'models/llama'", missing.Message);
    }

    [Fact]
    public void The_environment_is_read_as_huggingface_hub_reads_it()
    {
        var env = new Dictionary<string, string>
        {
            ["HF_HOME"] = "/data/hf", ["HF_ENDPOINT"] = "https://mirror.example/", ["HF_TOKEN"] = "hf_x", ["HF_HUB_OFFLINE"] = "yes",
        };
        var o = HubOptions.FromEnvironment(env.GetValueOrDefault);
        Assert.Equal(Path.Combine("/data/hf", "hub"), o.CacheDirectory);
        Assert.Equal("https://mirror.example", o.Endpoint);
        Assert.Equal("hf_x", o.Token);
        Assert.True(o.Offline);

        env["HF_HUB_CACHE"] = "/elsewhere";
        env["HF_HUB_OFFLINE"] = "0";
        o = HubOptions.FromEnvironment(env.GetValueOrDefault);
        Assert.Equal("/elsewhere", o.CacheDirectory);
        Assert.False(o.Offline);
    }
}
