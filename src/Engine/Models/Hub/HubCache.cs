namespace TokenMill.Models.Hub;

/// <summary>
/// The cache layout of <c>huggingface_hub</c>, so that either tool reuses what the other fetched:
/// <code>
/// {cache}/models--Org--Name/blobs/{etag}                      the file's bytes, named by its ETag (sha256 for LFS files)
/// {cache}/models--Org--Name/blobs/{etag}.incomplete           a download in progress (resumed from its length)
/// {cache}/models--Org--Name/snapshots/{commit}/{path}         a relative symlink to ../../blobs/{etag}
/// {cache}/models--Org--Name/refs/{revision}                   the commit a branch or tag named, as text
/// {cache}/.locks/models--Org--Name/{etag}.lock                held while one process downloads that blob
/// </code>
/// </summary>
public sealed class HubCache(string cacheDirectory, string repoId)
{
    public string CacheDirectory { get; } = cacheDirectory;
    public string RepoId { get; } = repoId;

    /// <summary><c>models--Org--Name</c>, as huggingface_hub's <c>repo_folder_name</c>.</summary>
    public string FolderName => "models--" + RepoId.Replace("/", "--", StringComparison.Ordinal);

    public string RepoDirectory => Path.Combine(CacheDirectory, FolderName);
    public string BlobPath(string etag) => Path.Combine(RepoDirectory, "blobs", etag);
    public string SnapshotDirectory(string commit) => Path.Combine(RepoDirectory, "snapshots", commit);
    public string SnapshotPath(string commit, string file) => Path.Combine(SnapshotDirectory(commit), file.Replace('/', Path.DirectorySeparatorChar));
    public string RefPath(string revision) => Path.Combine(RepoDirectory, "refs", revision.Replace('/', Path.DirectorySeparatorChar));
    public string LockPath(string etag) => Path.Combine(CacheDirectory, ".locks", FolderName, etag + ".lock");

    /// <summary>A full commit hash (40 hex digits) names itself; anything else is a branch, tag or ref.</summary>
    public static bool IsCommitHash(string revision) => revision.Length == 40 && revision.All(char.IsAsciiHexDigitLower);

    /// <summary>The commit <paramref name="revision"/> names in the cache: itself if a commit hash, else what <c>refs/</c> says.</summary>
    public string? ResolveCommit(string revision)
    {
        if (IsCommitHash(revision)) return revision;
        string path = RefPath(revision);
        return File.Exists(path) ? File.ReadAllText(path).Trim() : null;
    }

    /// <summary>Records that <paramref name="revision"/> names <paramref name="commit"/> (written whole, then renamed into place).</summary>
    public void WriteRef(string revision, string commit)
    {
        if (revision == commit) return;
        string path = RefPath(revision);
        if (File.Exists(path) && File.ReadAllText(path).Trim() == commit) return;
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        string tmp = path + "." + Environment.ProcessId + ".tmp";
        File.WriteAllText(tmp, commit);
        File.Move(tmp, path, overwrite: true);
    }

    /// <summary>
    /// Points <c>snapshots/{commit}/{file}</c> at its blob by a relative symlink (as huggingface_hub does), or, where
    /// symlinks cannot be made, by a copy of the blob.
    /// </summary>
    public string LinkSnapshot(string commit, string file, string etag)
    {
        string pointer = SnapshotPath(commit, file);
        if (File.Exists(pointer)) return pointer;
        Directory.CreateDirectory(Path.GetDirectoryName(pointer)!);
        string blob = BlobPath(etag);
        try
        {
            File.CreateSymbolicLink(pointer, Path.GetRelativePath(Path.GetDirectoryName(pointer)!, blob));
        }
        catch (IOException) when (File.Exists(pointer))
        {
            // Another process linked it first.
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or PlatformNotSupportedException)
        {
            string tmp = pointer + "." + Environment.ProcessId + ".tmp";
            File.Copy(blob, tmp, overwrite: true);
            File.Move(tmp, pointer, overwrite: true);
        }
        return pointer;
    }

    /// <summary>The files of a cached snapshot, as repository paths with '/'.</summary>
    public IReadOnlyList<string> SnapshotFiles(string commit)
    {
        string dir = SnapshotDirectory(commit);
        if (!Directory.Exists(dir)) return [];
        return [.. Directory.EnumerateFiles(dir, "*", SearchOption.AllDirectories)
            .Select(f => Path.GetRelativePath(dir, f).Replace(Path.DirectorySeparatorChar, '/'))
            .Order(StringComparer.Ordinal)];
    }
}
