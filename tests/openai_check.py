"""The official `openai` Python package against llmesh's OpenAI-compatible door.

Run by tests/tests/openai.rs with LLMESH_URL (the server), LLMESH_KEY (a funded API key),
LLMESH_LIMITED_KEY (a key whose user may make 2 requests a minute) and LLMESH_BROKE_KEY (a
user with no balance). Prints one line per check; exits non-zero on the first failure.
"""

import asyncio
import base64
import os
import struct
import sys

import openai

URL = os.environ["LLMESH_URL"].rstrip("/") + "/v1"
CHAT = "smollm2-135m-instruct"
EMBED = "all-minilm-l6-v2"


def client(key):
    return openai.OpenAI(base_url=URL, api_key=key, max_retries=0, timeout=120)


def ok(what):
    print(f"ok: {what}", flush=True)


def main():
    c = client(os.environ["LLMESH_KEY"])

    ids = [m.id for m in c.models.list()]
    assert CHAT in ids and EMBED in ids, ids
    assert c.models.retrieve(CHAT).id == CHAT
    ok("models")

    reply = c.chat.completions.create(
        model=CHAT,
        messages=[{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Count to 20."}],
        temperature=0,
        max_tokens=24,
        stop=["5"],
    )
    choice = reply.choices[0]
    assert choice.message.role == "assistant" and choice.message.content, reply
    assert "5" not in choice.message.content, choice.message.content
    assert choice.finish_reason in ("stop", "length"), choice.finish_reason
    assert reply.usage.prompt_tokens > 0 and reply.usage.completion_tokens > 0, reply.usage
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    ok(f"chat completion: {choice.message.content!r}")

    stream = c.chat.completions.create(
        model=CHAT,
        messages=[{"role": "user", "content": [{"type": "text", "text": "Say hello."}]}],
        temperature=0,
        max_completion_tokens=16,
        stream=True,
        stream_options={"include_usage": True},
    )
    text, usage, finish, pieces = "", None, None, 0
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for ch in chunk.choices:
            if ch.delta.content:
                text += ch.delta.content
                pieces += 1
            if ch.finish_reason:
                finish = ch.finish_reason
    assert text and pieces > 1, (text, pieces)
    assert finish in ("stop", "length"), finish
    assert usage is not None and usage.completion_tokens > 0, usage
    ok(f"streamed chat in {pieces} pieces with usage {usage.completion_tokens} tokens")

    done = c.completions.create(model=CHAT, prompt="1, 2, 3, 4, 5, 6, 7, 8,", temperature=0, max_tokens=12)
    assert done.choices[0].text == " 9, 10, 11, ", done.choices[0].text
    assert done.usage.completion_tokens == 12, done.usage
    ok("legacy completion")

    pieces = []
    for chunk in c.completions.create(model=CHAT, prompt="1, 2, 3, 4, 5, 6, 7, 8,", temperature=0, max_tokens=12, stream=True):
        pieces.append(chunk.choices[0].text if chunk.choices else "")
    assert "".join(pieces) == " 9, 10, 11, ", pieces
    ok("streamed legacy completion")

    floats = c.embeddings.create(model=EMBED, input=["a cat", "a dog"], encoding_format="float")
    assert len(floats.data) == 2 and len(floats.data[0].embedding) == 384, len(floats.data)
    assert floats.usage.prompt_tokens > 0
    packed = c.embeddings.create(model=EMBED, input="a cat")  # the client asks for base64
    assert len(packed.data[0].embedding) == 384
    raw = c.embeddings.with_raw_response.create(model=EMBED, input="a cat", encoding_format="base64")
    b64 = raw.http_response.json()["data"][0]["embedding"]
    decoded = struct.unpack("<384f", base64.b64decode(b64))
    assert max(abs(a - b) for a, b in zip(decoded, floats.data[0].embedding)) < 1e-6
    ok("embeddings, float and base64")

    async def concurrently():
        a = openai.AsyncOpenAI(base_url=URL, api_key=os.environ["LLMESH_KEY"], max_retries=0)

        async def one(n):
            s = await a.chat.completions.create(
                model=CHAT, messages=[{"role": "user", "content": f"Say {n}."}], max_tokens=8, stream=True
            )
            out = ""
            async for chunk in s:
                for ch in chunk.choices:
                    out += ch.delta.content or ""
            return out

        outs = await asyncio.gather(*(one(n) for n in range(3)))
        await a.close()
        return outs

    outs = asyncio.run(concurrently())
    assert all(outs), outs
    ok("async client, three streams at once")

    try:
        client("lmk_not-a-real-key").models.list()
        raise AssertionError("a bad key was accepted")
    except openai.AuthenticationError as e:
        assert e.status_code == 401 and e.body["code"] == "invalid_api_key", e.body
    ok("401 with a bad key")

    try:
        c.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
        raise AssertionError("an unknown model was accepted")
    except openai.NotFoundError as e:
        assert e.status_code == 404, e
    try:
        c.chat.completions.create(model=CHAT, messages=[{"role": "user", "content": "hi"}], temperature=5)
        raise AssertionError("temperature 5 was accepted")
    except openai.BadRequestError as e:
        assert e.body["param"] == "temperature", e.body
    ok("404 for an unknown model, 400 naming the field")

    limited = client(os.environ["LLMESH_LIMITED_KEY"])
    seen = []
    for _ in range(4):
        try:
            limited.completions.create(model=CHAT, prompt="Hi", max_tokens=1)
            seen.append(200)
        except openai.RateLimitError as e:
            assert int(e.response.headers["retry-after"]) >= 1, e.response.headers
            seen.append(429)
    assert seen[:2] == [200, 200] and 429 in seen[2:], seen
    ok(f"429 at the rate limit: {seen}")

    try:
        client(os.environ["LLMESH_BROKE_KEY"]).chat.completions.create(
            model=CHAT, messages=[{"role": "user", "content": "hi"}], max_tokens=8
        )
        raise AssertionError("an empty balance was served")
    except openai.APIStatusError as e:
        assert e.status_code == 402 and e.body["code"] == "insufficient_quota", (e.status_code, e.body)
    ok("402 on an empty balance")

    # Leave mid-stream: only what was produced is billed (the test checks the ledger).
    stream = c.chat.completions.create(
        model=CHAT,
        messages=[{"role": "user", "content": "Write a long story about the sea."}],
        max_tokens=400,
        temperature=0,
        stream=True,
    )
    got = 0
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            got += 1
            if got == 5:
                break
    stream.close()
    ok(f"left a stream after {got} pieces")


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # noqa: BLE001 - report any failure with its type
        print(f"FAILED: {type(e).__name__}: {e}", flush=True)
        sys.exit(1)
