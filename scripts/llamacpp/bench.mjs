// llama.cpp's speed on a GGUF file, measured as llama-bench (pp, tg) and llama-batched-bench (S_TG) measure it,
// through node-llama-cpp's native context: one llama_decode per step, logits for the last token of each sequence,
// no sampling. Random token ids; flash attention "auto" (llama.cpp's default); THREADS threads (default 2).
//   node bench.mjs MODEL.gguf latency PROMPT_TOKENS DECODE_TOKENS    (decode from an empty context, as llama-bench's tg)
//   node bench.mjs MODEL.gguf depth DEPTH DECODE_TOKENS              (decode after DEPTH prompt tokens: llama-bench -d)
//   node bench.mjs MODEL.gguf batch SEQUENCES DECODE_STEPS        (each sequence first prefills 128 tokens)
import {getLlama} from "node-llama-cpp";
const [modelPath, mode, a, b] = process.argv.slice(2);
const threads = +(process.env.THREADS ?? 2);
const llama = await getLlama({gpu: false, build: "never", maxThreads: threads, logLevel: "warn"});
const model = await llama.loadModel({modelPath, useMmap: true});
// Random ids in [100, 31100): every tokenizer the script exports (TinyLlama's 32,000 rows) has them.
const rnd = (n) => Uint32Array.from({length: n}, () => 100 + Math.floor(Math.random() * 31000));
const now = () => performance.now() / 1000;
async function decode(c, parts) { // parts: [seq, pos, tokens]
  c.initBatch(parts.reduce((s, p) => s + p[2].length, 0));
  for (const [seq, pos, toks] of parts) c.addToBatch(seq, pos, toks, Uint32Array.of(toks.length - 1));
  await c.decodeBatch();
}
if (mode === "latency") {
  const pp = +a, tg = +b;
  for (let rep = 0; rep < 2; rep++) {
    const ctx = await model.createContext({contextSize: 2048, sequences: 1, batchSize: 512, threads, flashAttention: "auto"});
    const c = ctx._ctx;
    let t0 = now();
    await decode(c, [[0, 0, rnd(pp)]]);
    const tp = now() - t0;
    c.disposeSequence(0);
    t0 = now();
    for (let i = 0; i < tg; i++) await decode(c, [[0, i, rnd(1)]]);
    const tt = now() - t0;
    console.log(`pp${pp}: ${(pp / tp).toFixed(1)} tok/s   tg${tg}: ${(tg / tt).toFixed(1)} tok/s`);
    await ctx.dispose();
  }
} else if (mode === "depth") {
  const depth = +a, tg = +b;
  for (let rep = 0; rep < 2; rep++) {
    const ctx = await model.createContext({contextSize: depth + tg + 8, sequences: 1, batchSize: 512, threads, flashAttention: "auto"});
    const c = ctx._ctx;
    for (let p = 0; p < depth; p += 512) await decode(c, [[0, p, rnd(Math.min(512, depth - p))]]);
    const t0 = now();
    for (let i = 0; i < tg; i++) await decode(c, [[0, depth + i, rnd(1)]]);
    const tt = now() - t0;
    console.log(`tg${tg} @ d${depth}: ${(tg / tt).toFixed(1)} tok/s`);
    await ctx.dispose();
  }
} else {
  const nseq = +a, tg = +b, pl = 128;
  const ctx = await model.createContext({contextSize: pl + tg + 8, sequences: nseq, batchSize: 2048, threads, flashAttention: "auto"});
  const c = ctx._ctx;
  let t0 = now();
  for (let s = 0; s < nseq; s += 16) await decode(c, Array.from({length: Math.min(16, nseq - s)}, (_, i) => [s + i, 0, rnd(pl)]));
  const tp = now() - t0;
  t0 = now();
  for (let i = 0; i < tg; i++) await decode(c, Array.from({length: nseq}, (_, s) => [s, pl + i, rnd(1)]));
  const tt = now() - t0;
  console.log(`${nseq} seqs prefill ${pl}: ${(nseq * pl / tp).toFixed(1)} tok/s; decode ${tg}: ${(nseq * tg / tt).toFixed(1)} tok/s total`);
}
process.exit(0);
