using TokenMill.Models.Gguf;
using TokenMill.Quantization;
using TokenMill.Tokenization;

namespace TokenMill.Models;

/// <summary>Builds a <see cref="Model"/> over a memory-mapped GGUF file: weights stay in the file's format and place.</summary>
public static class GgufModelLoader
{
    public static Model Load(string path)
    {
        var file = GgufFile.Open(path);
        try
        {
            var config = ModelConfig.FromGguf(file);
            var weights = LoadWeights(file, config);
            var tokenizer = TokenizerLoader.FromGguf(file);
            Chat.ChatTemplate? template;
            try
            {
                template = Chat.ChatTemplate.FromGguf(file);
            }
            catch (Chat.ChatTemplateException e)
            {
                // A template we cannot render is an error at start-up, never a wrong prompt later.
                throw new InvalidDataException($"{path}: tokenizer.chat_template cannot be used: {e.Message}", e);
            }
            return new Model(path, config, weights, tokenizer, [file], template);
        }
        catch
        {
            file.Dispose();
            throw;
        }
    }

    static ModelWeights LoadWeights(GgufFile f, ModelConfig c)
    {
        var layers = new LayerWeights[c.BlockCount];
        for (int i = 0; i < c.BlockCount; i++)
        {
            string p = $"blk.{i}.";
            // Phi-3 fuses Q, K and V into one matrix (rows: Q, then K, then V) and gate with up (rows: gate, then up):
            // views over its rows are the separate matrices, no copy.
            WeightTensor wq, wk, wv, gate, up;
            if (f.TryGetTensor(p + "attn_qkv.weight", out _))
            {
                var qkv = Matrix(f, p + "attn_qkv.weight", c.QDim + 2 * c.KvDim, c.EmbeddingLength);
                (wq, wk, wv) = (qkv.RowRange(0, c.QDim), qkv.RowRange(c.QDim, c.KvDim), qkv.RowRange(c.QDim + c.KvDim, c.KvDim));
            }
            else
            {
                wq = Matrix(f, p + "attn_q.weight", c.QDim, c.EmbeddingLength);
                wk = Matrix(f, p + "attn_k.weight", c.KvDim, c.EmbeddingLength);
                wv = Matrix(f, p + "attn_v.weight", c.KvDim, c.EmbeddingLength);
            }
            if (f.TryGetTensor(p + "ffn_gate.weight", out _))
            {
                gate = Matrix(f, p + "ffn_gate.weight", c.FeedForwardLength, c.EmbeddingLength);
                up = Matrix(f, p + "ffn_up.weight", c.FeedForwardLength, c.EmbeddingLength);
            }
            else
            {
                var gateUp = Matrix(f, p + "ffn_up.weight", 2 * c.FeedForwardLength, c.EmbeddingLength);
                (gate, up) = (gateUp.RowRange(0, c.FeedForwardLength), gateUp.RowRange(c.FeedForwardLength, c.FeedForwardLength));
            }
            layers[i] = new LayerWeights
            {
                AttnNorm = Vector(f, p + "attn_norm.weight", c.EmbeddingLength)!,
                Wq = wq,
                Wk = wk,
                Wv = wv,
                Wo = Matrix(f, p + "attn_output.weight", c.EmbeddingLength, c.QDim),
                Bq = Vector(f, p + "attn_q.bias", c.QDim, optional: true),
                Bk = Vector(f, p + "attn_k.bias", c.KvDim, optional: true),
                Bv = Vector(f, p + "attn_v.bias", c.KvDim, optional: true),
                QNorm = Vector(f, p + "attn_q_norm.weight", c.HeadDim, optional: true),
                KNorm = Vector(f, p + "attn_k_norm.weight", c.HeadDim, optional: true),
                PostAttnNorm = Vector(f, p + "post_attention_norm.weight", c.EmbeddingLength, optional: true),
                PostFfnNorm = Vector(f, p + "post_ffw_norm.weight", c.EmbeddingLength, optional: true),
                FfnNorm = Vector(f, p + "ffn_norm.weight", c.EmbeddingLength)!,
                Gate = gate,
                Up = up,
                Down = Matrix(f, p + "ffn_down.weight", c.EmbeddingLength, c.FeedForwardLength),
            };
        }

        var embedding = Matrix(f, "token_embd.weight", c.VocabSize, c.EmbeddingLength);
        return new ModelWeights
        {
            TokenEmbedding = embedding,
            Layers = layers,
            OutputNorm = Vector(f, "output_norm.weight", c.EmbeddingLength)!,
            // No output.weight means the classifier is tied to the embedding (Llama 3.2, Qwen2.5 small).
            Output = f.TryGetTensor("output.weight", out _) ? Matrix(f, "output.weight", c.VocabSize, c.EmbeddingLength) : embedding,
        };
    }

    static unsafe WeightTensor Matrix(GgufFile f, string name, int rows, int columns)
    {
        var t = f.GetTensor(name);
        if (t.Dimensions.Length != 2 || t.Dimensions[0] != columns || t.Dimensions[1] != rows)
            throw new GgufFormatException(f.Path, $"tensor '{name}' dimensions",
                $"expected [{columns}, {rows}] for this model's shape, found [{string.Join(", ", t.Dimensions)}]");
        return new WeightTensor(name, t.Type, rows, columns, f.GetTensorPointer(t));
    }

    static float[]? Vector(GgufFile f, string name, int length, bool optional = false)
    {
        if (!f.TryGetTensor(name, out var t))
            return optional ? null : throw new GgufFormatException(f.Path, $"tensor '{name}'", "missing");
        if (t.ElementCount != length)
            throw new GgufFormatException(f.Path, $"tensor '{name}' dimensions", $"expected {length} elements, found [{string.Join(", ", t.Dimensions)}]");
        var v = new float[length];
        Dequantize.Row(t.Type, f.GetTensorBytes(t), v);
        return v;
    }
}
