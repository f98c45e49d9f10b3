"""The Python SDK for llmesh.

Typed stubs for every service (generated from proto/ with grpcio-tools and
mypy-protobuf), sign-in with an API key or a password (refreshed before it expires),
a deadline on every call, retries where the contracts say they are safe, errors that
say what happened, and helpers for the calls that stream. ``llmesh.connect`` gives a
blocking client; ``llmesh.aio.connect`` the same surface for asyncio::

    import llmesh

    with llmesh.connect("http://127.0.0.1:7700", api_key="lmk_...") as client:
        conversation = client.create_conversation("Hello")
        reply = client.send_message(conversation.id, "Say hello")
        for delta in reply:
            print(delta, end="", flush=True)
        print(reply.usage, reply.cost)
"""

from llmesh._client import Client, Generation, Output, Reply, Run, connect
from llmesh._common import (
    DEFAULT_STREAM_TIMEOUT,
    DEFAULT_TIMEOUT,
    Progress,
    assistant,
    system,
    user,
)
from llmesh._errors import Error

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_STREAM_TIMEOUT",
    "DEFAULT_TIMEOUT",
    "Client",
    "Error",
    "Generation",
    "Output",
    "Progress",
    "Reply",
    "Run",
    "assistant",
    "connect",
    "system",
    "user",
]
