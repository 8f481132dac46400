// Renders every chat template in tests/TokenMill.Tests/Chat/Goldens/templates over every fixture in
// fixtures.json with @huggingface/jinja (the JavaScript port of transformers' chat-template
// rendering) and writes goldens.json beside them: {template: {fixture: {output} | {error, raised}}}.
// The C# tests render the same pairs with TokenMill's interpreter and compare byte for byte.
//
//   cd tools/chat-goldens && npm ci && node render.mjs
import { Environment, Interpreter, Template } from "@huggingface/jinja";
import { readFileSync, writeFileSync } from "node:fs";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const goldens = join(here, "..", "..", "tests", "TokenMill.Tests", "Chat", "Goldens");
const manifest = JSON.parse(readFileSync(join(goldens, "templates.json"), "utf8"));
const { tools, fixtures } = JSON.parse(readFileSync(join(goldens, "fixtures.json"), "utf8"));

// strftime_now is pinned so that outputs do not depend on the day (the C# test pins the same instant).
const FIXED = new Date(Date.UTC(2025, 0, 15, 9, 30, 0));
const MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
function strftime_now(fmt) {
  return fmt
    .replaceAll("%d", String(FIXED.getUTCDate()).padStart(2, "0"))
    .replaceAll("%b", MONTHS[FIXED.getUTCMonth()])
    .replaceAll("%Y", String(FIXED.getUTCFullYear()));
}

class Raised extends Error {}
function raise_exception(message) {
  throw new Raised(message);
}

function range(start, stop, step = 1) {
  if (stop === undefined) [start, stop] = [0, start];
  const out = [];
  for (let i = start; step > 0 ? i < stop : i > stop; i += step) out.push(i);
  return out;
}

// Template.render() would install its own raise_exception and strftime_now (the real clock); set
// the same globals as its setupGlobals() but with ours.
function render(template, context) {
  const env = new Environment();
  const globals = { false: false, true: true, none: null, True: true, False: false, None: null, range, raise_exception, strftime_now };
  for (const [key, value] of Object.entries({ ...globals, ...context })) env.set(key, value);
  return new Interpreter(env).run(template.parsed).value;
}

// The same message dictionaries TokenMill's ChatTemplate builds from ChatMessage records.
function toTemplateMessage(m) {
  const d = { role: m.role, content: m.content ?? null };
  if (m.name !== undefined) d.name = m.name;
  if (m.reasoning_content !== undefined) d.reasoning_content = m.reasoning_content;
  if (m.tool_calls !== undefined)
    d.tool_calls = m.tool_calls.map((c) => {
      let args = c.arguments_json;
      try {
        const parsed = JSON.parse(args);
        if (parsed !== null && typeof parsed === "object" && !Array.isArray(parsed)) args = parsed;
      } catch { /* keep the string */ }
      return { id: c.id, type: "function", function: { name: c.name, arguments: args } };
    });
  if (m.tool_call_id !== undefined) d.tool_call_id = m.tool_call_id;
  return d;
}

const out = {};
for (const t of manifest) {
  const source = readFileSync(join(goldens, "templates", `${t.name}.jinja`), "utf8");
  const template = new Template(source);
  out[t.name] = {};
  for (const f of fixtures) {
    const context = {
      messages: f.messages.map(toTemplateMessage),
      add_generation_prompt: f.add_generation_prompt,
      bos_token: t.bos_token,
      eos_token: t.eos_token,
      tools: f.with_tools ? tools : null,
      ...(f.extra ?? {}),
    };
    try {
      out[t.name][f.name] = { output: render(template, context) };
    } catch (e) {
      out[t.name][f.name] = { error: String(e.message), raised: e instanceof Raised };
    }
  }
}
writeFileSync(join(goldens, "goldens.json"), JSON.stringify(out, null, 2) + "\n");
for (const [name, results] of Object.entries(out)) {
  const ok = Object.values(results).filter((r) => "output" in r).length;
  console.log(`${name}: ${ok} rendered, ${Object.keys(results).length - ok} errors`);
}
