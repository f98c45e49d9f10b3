"""The asyncio client against a live server: the same surface as the blocking one."""

from __future__ import annotations

import asyncio
import pathlib

import grpc
import pytest

import llmesh
import llmesh.aio
from llmesh.auth.v1 import auth_pb2
from llmesh.billing.v1 import billing_pb2
from llmesh.chat.v1 import chat_pb2
from llmesh.llm.v1 import llm_pb2

from conftest import Live

FIXTURE = pathlib.Path(__file__).resolve().parents[3] / "tests/fixtures/chatgpt/conversations.json"


async def balance(client: llmesh.aio.AsyncClient) -> int:
    answer = await client.billing.GetBalance(billing_pb2.GetBalanceRequest())
    return int(answer.balance.micros)


def test_sign_in_stream_and_stop(live: Live) -> None:
    async def main() -> None:
        async with await llmesh.aio.connect(live.url, email=live.email, password=live.password) as client:
            me = await client.auth.GetMe(auth_pb2.GetMeRequest())
            assert me.user.email == live.email
            before = await balance(client)
            conversation = await client.create_conversation("pytest aio")
            reply = await client.send_message(
                conversation.id, "Name a colour.", sampling=llm_pb2.SamplingParams(temperature=0, max_tokens=16)
            )
            deltas = [d async for d in reply]
            assert deltas and reply.message is not None
            assert reply.cost.micros == reply.usage.prompt_tokens + 2 * reply.usage.completion_tokens
            long = await client.send_message(
                conversation.id,
                "Tell a very long story.",
                sampling=llm_pb2.SamplingParams(temperature=0, max_tokens=400, ignore_eos=True),
            )
            count = 0
            async for _ in long:
                count += 1
                if count == 3:
                    assert await long.stop()
            assert long.message is not None and long.message.state == chat_pb2.MESSAGE_STATE_STOPPED
            assert long.usage.completion_tokens < 400
            assert before - await balance(client) == reply.cost.micros + long.cost.micros
            await client.logout()
            with pytest.raises(llmesh.Error) as out:
                await client.auth.GetMe(auth_pb2.GetMeRequest())
            assert out.value.code() == grpc.StatusCode.UNAUTHENTICATED

    asyncio.run(main())


def test_errors_generation_uploads_and_runs(live: Live) -> None:
    async def main() -> None:
        async with await llmesh.aio.connect(live.url, api_key=live.api_key) as client:
            with pytest.raises(llmesh.Error) as missing:
                await client.chat.GetConversation(chat_pb2.GetConversationRequest(id="0190f2a4-0000-7000-8000-000000000000"))
            assert missing.value.code() == grpc.StatusCode.NOT_FOUND and missing.value.request_id
            with pytest.raises(llmesh.Error) as stream:
                reply = await client.send_message("0190f2a4-0000-7000-8000-000000000000", "hi")
                await reply.finish()
            assert stream.value.code() == grpc.StatusCode.NOT_FOUND

            done = await (await client.generate(live.model, [llmesh.user("Say yes.")], sampling=llm_pb2.SamplingParams(max_tokens=8))).finish()
            assert done.cost.micros == done.usage.prompt_tokens + 2 * done.usage.completion_tokens

            seen: list[llmesh.Progress] = []
            report = await client.import_conversations(FIXTURE, progress=seen.append)
            assert report.imported >= 2 and seen[-1].phase == "importing"
            file = await client.write_file("pytest/aio.txt", b"hello\n")
            assert file.size_bytes == 6
            run = await client.run_python("print(open('/workspace/pytest/aio.txt').read().strip() + ' world')")
            exit = await run.finish()
            assert exit.exit_code == 0 and run.stdout == b"hello world\n"

    asyncio.run(main())
