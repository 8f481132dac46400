using TokenMill.Models.Gguf;

namespace TokenMill.Tests.Models;

public class GgufFileTests
{
    [SkippableFact]
    public void Reads_stories260K_header_metadata_and_tensors()
    {
        using var f = GgufFile.Open(TestData.Require("models/stories260K.gguf"));
        Assert.Equal(3u, f.Version);
        Assert.Equal("llama", f.GetString("general.architecture"));
        Assert.Equal(64, f.GetInt("llama.embedding_length"));
        Assert.Equal(5, f.GetInt("llama.block_count"));
        Assert.Equal(512, f.GetArray("tokenizer.ggml.tokens")!.Length);
        Assert.Equal(48, f.Tensors.Count);
        var embd = f.GetTensor("token_embd.weight");
        Assert.Equal(GgmlType.F32, embd.Type);
        Assert.Equal(new long[] { 64, 512 }, embd.Dimensions);
        Assert.Equal(64 * 512 * 4, f.GetTensorBytes(embd).Length);
    }
}
