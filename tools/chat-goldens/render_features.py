"""Renders the Jinja feature corpus (tests/TokenMill.Tests/Chat/Features/features.json: small
templates, one construct each) with Jinja2 set up as transformers sets it up, and writes
features-expected.json ({name: {output} | {error}}) for ChatTemplateFeatureTests.

    python3 render_features.py
"""
import json
import pathlib

from render_jinja2 import env  # the transformers-style environment (and the pinned strftime_now)

FEATURES = pathlib.Path(__file__).resolve().parent.parent.parent / "tests" / "TokenMill.Tests" / "Chat" / "Features"
cases = json.loads((FEATURES / "features.json").read_text(encoding="utf-8"))
out = {}
for case in cases:
    try:
        out[case["name"]] = {"output": env.from_string(case["template"]).render(**case["context"])}
    except Exception as e:  # noqa: BLE001 - a failure is an expected outcome too
        out[case["name"]] = {"error": f"{type(e).__name__}: {e}"}
(FEATURES / "features-expected.json").write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
for name, r in out.items():
    if "error" in r:
        print(name, r["error"])
