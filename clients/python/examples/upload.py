"""Imports a ChatGPT export with a progress line, then exports everything as llmesh JSON.

    LLMESH_API_KEY=lmk_... python examples/upload.py conversations.json backup.json
"""

import os
import pathlib
import sys
import tempfile

import llmesh

here = pathlib.Path(__file__).resolve().parent
source = sys.argv[1] if len(sys.argv) > 1 else str(here.parents[2] / "tests/fixtures/chatgpt/conversations.json")
target = sys.argv[2] if len(sys.argv) > 2 else os.path.join(tempfile.gettempdir(), "llmesh-export.json")
client = llmesh.connect(os.environ.get("LLMESH_URL", "http://127.0.0.1:7700"), api_key=os.environ["LLMESH_API_KEY"])
# [readme:upload]
def show(p: llmesh.Progress) -> None:
    print(f"\r{p.phase} {p.done}/{p.total}", end="", file=sys.stderr, flush=True)


report = client.import_conversations(source, format="chatgpt", progress=show)
print(f"\nimported {report.imported}, skipped {len(report.skipped)}")
for skip in report.skipped:
    print(f"  skipped {skip.title!r}: {skip.reason}")
written = client.export_conversations(target, format="json")
print(f"exported {written} bytes to {target}")
# [/readme]
client.close()
