"""Second reference: renders the same templates and fixtures as render.mjs with Python's Jinja2 set
up exactly as transformers' apply_chat_template sets it up (ImmutableSandboxedEnvironment,
trim_blocks, lstrip_blocks, loopcontrols, its own tojson/raise_exception/strftime_now), and writes
goldens-jinja2.json. Where @huggingface/jinja and Jinja2 disagree, Jinja2 is what transformers (and
so the model's training data) uses; the C# test follows it there and prints the disagreement.

    python3 render_jinja2.py          # needs jinja2 (3.1.x)
"""
import datetime
import json
import pathlib

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

GOLDENS = pathlib.Path(__file__).resolve().parent.parent.parent / "tests" / "TokenMill.Tests" / "Chat" / "Goldens"
FIXED = datetime.datetime(2025, 1, 15, 9, 30, 0)  # the instant render.mjs and the C# test pin strftime_now to


class Raised(jinja2.exceptions.TemplateError):
    pass


def raise_exception(message):
    raise Raised(message)


def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def strftime_now(fmt):
    return FIXED.strftime(fmt)


env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
env.filters["tojson"] = tojson
env.globals["raise_exception"] = raise_exception
env.globals["strftime_now"] = strftime_now


def to_template_message(m):
    d = {"role": m["role"], "content": m.get("content")}
    for key in ("name", "reasoning_content"):
        if key in m:
            d[key] = m[key]
    if "tool_calls" in m:
        calls = []
        for c in m["tool_calls"]:
            args = c["arguments_json"]
            try:
                parsed = json.loads(args)
                if isinstance(parsed, dict):
                    args = parsed
            except ValueError:
                pass
            calls.append({"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": args}})
        d["tool_calls"] = calls
    if "tool_call_id" in m:
        d["tool_call_id"] = m["tool_call_id"]
    return d


def main():
    manifest = json.loads((GOLDENS / "templates.json").read_text(encoding="utf-8"))
    fx = json.loads((GOLDENS / "fixtures.json").read_text(encoding="utf-8"))
    out = {}
    for t in manifest:
        source = (GOLDENS / "templates" / f"{t['name']}.jinja").read_text(encoding="utf-8")
        template = env.from_string(source)
        out[t["name"]] = {}
        for f in fx["fixtures"]:
            context = dict(
                messages=[to_template_message(m) for m in f["messages"]],
                add_generation_prompt=f["add_generation_prompt"],
                bos_token=t["bos_token"],
                eos_token=t["eos_token"],
                tools=fx["tools"] if f.get("with_tools") else None,
            )
            context.update(f.get("extra", {}))
            try:
                out[t["name"]][f["name"]] = {"output": template.render(**context)}
            except Exception as e:  # noqa: BLE001 - every failure is a recorded outcome
                out[t["name"]][f["name"]] = {"error": str(e), "raised": isinstance(e, Raised)}

    (GOLDENS / "goldens-jinja2.json").write_text(json.dumps(out, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    hf = json.loads((GOLDENS / "goldens.json").read_text(encoding="utf-8"))
    for name, results in out.items():
        for fixture, r in results.items():
            h = hf[name][fixture]
            if ("output" in r) != ("output" in h) or r.get("output") != h.get("output"):
                print(f"references disagree: {name} / {fixture}: jinja2 {r} | hf {h}")


if __name__ == "__main__":
    main()
