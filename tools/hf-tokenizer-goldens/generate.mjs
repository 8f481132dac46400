// Tokenizes every string of TokenMill's tokenizer.json corpus with @huggingface/tokenizers (the tokenizer code of
// transformers.js) for each real tokenizer.json in ../shared/testdata/hf-tokenizers, and writes one golden file per
// tokenizer beside the corpus: for each string (in corpus order) the ids without special tokens, the ids with them
// (the post-processor's template), and the reference's own decode of the first list. The C# tests
// (HfTokenizerCorpusTests) encode the same strings and compare id for id.
//
//   cd tools/hf-tokenizer-goldens && npm ci && node generate.mjs [HF_TOKENIZERS_DIR]
import { Tokenizer } from "@huggingface/tokenizers";
import { readFileSync, writeFileSync } from "node:fs";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const corpusDir = join(here, "..", "..", "tests", "TokenMill.Tests", "Tokenization", "hf-corpus");
// The repository sits beside shared/ (TestData.cs finds test data the same way).
const tokenizers = process.argv[2] ?? join(here, "..", "..", "..", "shared", "testdata", "hf-tokenizers");
const version = JSON.parse(readFileSync(join(here, "node_modules", "@huggingface", "tokenizers", "package.json"), "utf8")).version;
const { strings } = JSON.parse(readFileSync(join(corpusDir, "corpus.json"), "utf8"));

for (const family of ["qwen3", "gemma3", "llama3"]) {
  const read = (name) => JSON.parse(readFileSync(join(tokenizers, family, name), "utf8"));
  const tokenizer = new Tokenizer(read("tokenizer.json"), read("tokenizer_config.json"));
  const lines = strings.map(({ text }) => {
    const ids = tokenizer.encode(text, { add_special_tokens: false }).ids;
    const withSpecial = tokenizer.encode(text, { add_special_tokens: true }).ids;
    // decode() refuses an empty list; the empty string decodes to itself.
    const decoded = ids.length === 0 ? "" : tokenizer.decode(ids);
    return JSON.stringify({ ids, ids_with_special: withSpecial, decoded });
  });
  const header = JSON.stringify({ tokenizer: family, reference: `@huggingface/tokenizers ${version}`, count: lines.length });
  // One case per line, in corpus order, so that a diff shows which strings changed.
  writeFileSync(join(corpusDir, `${family}.json`), `{"about": ${header},\n "cases": [\n${lines.join(",\n")}\n]}\n`);
  console.log(`${family}: ${lines.length} strings`);
}
