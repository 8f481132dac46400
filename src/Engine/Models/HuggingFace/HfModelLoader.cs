using TokenMill.Models.Safetensors;
using TokenMill.Tokenization;

namespace TokenMill.Models.HuggingFace;

/// <summary>
/// Builds a <see cref="Model"/> from a Hugging Face folder: <c>config.json</c> plus safetensors
/// weights (single or sharded), which stay memory-mapped in their own dtype (F32, F16, BF16).
/// The tokenizer is passed in (<see cref="ModelLoader"/> picks the folder's tokenizer.json or <c>--tokenizer</c>).
/// </summary>
public static class HfModelLoader
{
    public const string ConfigFileName = "config.json";

    /// <summary>Whether <paramref name="directory"/> looks like a Hugging Face model folder.</summary>
    public static bool IsModelFolder(string directory) => File.Exists(Path.Combine(directory, ConfigFileName));

    public static Model Load(string directory, ITokenizer tokenizer)
    {
        string configPath = Path.Combine(directory, ConfigFileName);
        if (!File.Exists(configPath))
            throw new FileNotFoundException($"{directory}: no {ConfigFileName}; not a Hugging Face model folder", configPath);
        var (config, tied) = HfConfig.Read(configPath);
        if (tokenizer is Tokenization.HuggingFace.HfTokenizer hf)
        {
            // Padding rows beyond the tokenizer decode to nothing; special tokens beyond the rows are refused in prompts.
            if (hf.FitsVocabulary(config.VocabSize)) tokenizer = hf.PaddedTo(config.VocabSize);
        }
        if (tokenizer.VocabSize > config.VocabSize && !(tokenizer is Tokenization.HuggingFace.HfTokenizer h && h.FitsVocabulary(config.VocabSize)))
            throw new InvalidDataException(
                $"{directory}: the tokenizer has {tokenizer.VocabSize} tokens but the model's vocab_size is {config.VocabSize}");

        var checkpoint = SafetensorsCheckpoint.Open(directory);
        try
        {
            var weights = LoadWeights(checkpoint, config, tied);
            return new Model(directory, config, weights, tokenizer, [checkpoint]);
        }
        catch
        {
            checkpoint.Dispose();
            throw;
        }
    }

    static ModelWeights LoadWeights(SafetensorsCheckpoint w, ModelConfig c, bool tied)
    {
        bool qkvBias = c.Architecture == "qwen2";
        bool gemma = c.Architecture == "gemma3";
        bool qkNorm = c.Architecture == "qwen3" || gemma;
        bool fused = c.Architecture == "phi3";
        // Gemma's RMSNorm multiplies by (1 + w) and stores w: the forward pass multiplies by what it is given.
        float[]? Norm(string name, int length, bool optional = false)
        {
            var v = w.Vector(name, length, optional);
            if (gemma && v is not null)
                for (int k = 0; k < v.Length; k++) v[k] += 1f;
            return v;
        }

        var layers = new LayerWeights[c.BlockCount];
        for (int i = 0; i < c.BlockCount; i++)
        {
            string p = $"model.layers.{i}.";
            // nn.Linear stores [out_features, in_features] row-major: exactly the engine's [rows × columns].
            WeightTensor wq, wk, wv, gate, up;
            if (fused)
            {
                // Phi-3 fuses q, k, v (rows: q, then k, then v) and gate with up (rows: gate, then up): views, no copy.
                var qkv = w.Matrix(p + "self_attn.qkv_proj.weight", c.QDim + 2 * c.KvDim, c.EmbeddingLength);
                (wq, wk, wv) = (qkv.RowRange(0, c.QDim), qkv.RowRange(c.QDim, c.KvDim), qkv.RowRange(c.QDim + c.KvDim, c.KvDim));
                var gateUp = w.Matrix(p + "mlp.gate_up_proj.weight", 2 * c.FeedForwardLength, c.EmbeddingLength);
                (gate, up) = (gateUp.RowRange(0, c.FeedForwardLength), gateUp.RowRange(c.FeedForwardLength, c.FeedForwardLength));
            }
            else
            {
                wq = w.Matrix(p + "self_attn.q_proj.weight", c.QDim, c.EmbeddingLength);
                wk = w.Matrix(p + "self_attn.k_proj.weight", c.KvDim, c.EmbeddingLength);
                wv = w.Matrix(p + "self_attn.v_proj.weight", c.KvDim, c.EmbeddingLength);
                gate = w.Matrix(p + "mlp.gate_proj.weight", c.FeedForwardLength, c.EmbeddingLength);
                up = w.Matrix(p + "mlp.up_proj.weight", c.FeedForwardLength, c.EmbeddingLength);
            }
            layers[i] = new LayerWeights
            {
                AttnNorm = Norm(p + "input_layernorm.weight", c.EmbeddingLength)!,
                Wq = wq,
                Wk = wk,
                Wv = wv,
                Wo = w.Matrix(p + "self_attn.o_proj.weight", c.EmbeddingLength, c.QDim),
                Bq = w.Vector(p + "self_attn.q_proj.bias", c.QDim, optional: !qkvBias),
                Bk = w.Vector(p + "self_attn.k_proj.bias", c.KvDim, optional: !qkvBias),
                Bv = w.Vector(p + "self_attn.v_proj.bias", c.KvDim, optional: !qkvBias),
                QNorm = Norm(p + "self_attn.q_norm.weight", c.HeadDim, optional: !qkNorm),
                KNorm = Norm(p + "self_attn.k_norm.weight", c.HeadDim, optional: !qkNorm),
                // Gemma: post_attention_layernorm normalizes the attention output; pre_feedforward_layernorm is the MLP's input norm.
                PostAttnNorm = gemma ? Norm(p + "post_attention_layernorm.weight", c.EmbeddingLength) : null,
                PostFfnNorm = gemma ? Norm(p + "post_feedforward_layernorm.weight", c.EmbeddingLength) : null,
                FfnNorm = Norm(p + (gemma ? "pre_feedforward_layernorm.weight" : "post_attention_layernorm.weight"), c.EmbeddingLength)!,
                Gate = gate,
                Up = up,
                Down = w.Matrix(p + "mlp.down_proj.weight", c.EmbeddingLength, c.FeedForwardLength),
            };
        }

        var embedding = w.Matrix("model.embed_tokens.weight", c.VocabSize, c.EmbeddingLength);
        // A tied checkpoint usually has no lm_head.weight; when it has one anyway (some exports do), use it.
        WeightTensor output = w.Contains("lm_head.weight") ? w.Matrix("lm_head.weight", c.VocabSize, c.EmbeddingLength)
            : tied ? embedding
            : throw new SafetensorsFormatException(w.Files[0].Path, "tensor 'lm_head.weight'", "missing, and config.json does not set tie_word_embeddings");
        return new ModelWeights
        {
            TokenEmbedding = embedding,
            Layers = layers,
            OutputNorm = Norm("model.norm.weight", c.EmbeddingLength)!,
            Output = output,
        };
    }
}
