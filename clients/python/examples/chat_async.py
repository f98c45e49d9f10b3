"""The chat example with asyncio: sign in with a password, stream a reply, sign out.

    LLMESH_EMAIL=... LLMESH_PASSWORD=... python examples/chat_async.py
"""

import asyncio
import os

import llmesh.aio


async def main() -> None:
    url = os.environ.get("LLMESH_URL", "http://127.0.0.1:7700")
    # [readme:async]
    # A password session is refreshed by the SDK before its access token expires.
    async with await llmesh.aio.connect(
        url, email=os.environ["LLMESH_EMAIL"], password=os.environ["LLMESH_PASSWORD"]
    ) as client:
        conversation = await client.create_conversation("From asyncio")
        reply = await client.send_message(conversation.id, "Name a planet.")
        async for delta in reply:
            print(delta, end="", flush=True)
        print(f"\n[cost {reply.cost.micros} micro-{reply.cost.currency}]")
        await client.logout()
    # [/readme]


asyncio.run(main())
