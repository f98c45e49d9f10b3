"""Tool calls through llmesh's OpenAI-compatible door with the official `openai` package.

Run by tests/tests/providers.rs with LLMESH_URL (the server), LLMESH_KEY (a funded API key)
and LLMESH_MODEL (a hosted model whose provider replays a streamed tool call of
`get_weather` with the arguments {"city": "Oslo"}). Prints one line per check; exits
non-zero on the first failure.
"""

import json
import os

import openai

URL = os.environ["LLMESH_URL"].rstrip("/") + "/v1"
MODEL = os.environ["LLMESH_MODEL"]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city now.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]
ASK = [{"role": "user", "content": "What is the weather in Oslo?"}]


def ok(what):
    print(f"ok: {what}", flush=True)


def main():
    c = openai.OpenAI(base_url=URL, api_key=os.environ["LLMESH_KEY"], max_retries=0, timeout=60)

    reply = c.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, tool_choice="auto")
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    call = choice.message.tool_calls[0]
    assert call.type == "function" and call.function.name == "get_weather", call
    assert json.loads(call.function.arguments) == {"city": "Oslo"}, call.function.arguments
    ok("a whole reply carries the tool call")

    calls = {}
    finish = None
    for chunk in c.chat.completions.create(
        model=MODEL,
        messages=ASK,
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        stream=True,
        stream_options={"include_usage": True},
    ):
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        for piece in delta.tool_calls or []:
            entry = calls.setdefault(piece.index, {"id": "", "name": "", "arguments": ""})
            entry["id"] += piece.id or ""
            if piece.function and piece.function.name:
                entry["name"] += piece.function.name
            if piece.function and piece.function.arguments:
                entry["arguments"] += piece.function.arguments
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls", finish
    assert calls[0]["name"] == "get_weather" and calls[0]["id"], calls
    assert json.loads(calls[0]["arguments"]) == {"city": "Oslo"}, calls
    ok("a stream assembles the tool call from its pieces")

    # The tool's result goes back with the call it answers.
    follow = ASK + [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": calls[0]["id"],
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": calls[0]["arguments"]},
                }
            ],
        },
        {"role": "tool", "tool_call_id": calls[0]["id"], "content": "{\"celsius\": 12}"},
    ]
    c.chat.completions.create(model=MODEL, messages=follow, tools=TOOLS)
    ok("a tool result is accepted")

    try:
        c.chat.completions.create(
            model=MODEL,
            messages=ASK + [{"role": "tool", "tool_call_id": "nobody", "content": "x"}],
            tools=TOOLS,
        )
        raise AssertionError("a result answering no call was accepted")
    except openai.BadRequestError as e:
        assert "tool_call_id" in str(e), e
    ok("a result that answers no call is a 400 naming tool_call_id")


if __name__ == "__main__":
    main()
