"""Streams a chat reply and prints what it cost.

    LLMESH_API_KEY=lmk_... python examples/chat.py "Why is the sky blue?"

(``LLMESH_URL`` defaults to http://127.0.0.1:7700.)
"""

import os
import sys

import llmesh

url = os.environ.get("LLMESH_URL", "http://127.0.0.1:7700")
question = sys.argv[1] if len(sys.argv) > 1 else "Say hello in five words."

# [readme:connect]
client = llmesh.connect(url, api_key=os.environ["LLMESH_API_KEY"])
# [/readme]
# [readme:stream]
conversation = client.create_conversation("From the Python SDK")
reply = client.send_message(conversation.id, question)
for delta in reply:
    print(delta, end="", flush=True)
usage, cost = reply.usage, reply.cost
print(f"\n[{usage.prompt_tokens} prompt + {usage.completion_tokens} completion tokens, {cost.micros} micro-{cost.currency}]")
# [/readme]
client.close()
