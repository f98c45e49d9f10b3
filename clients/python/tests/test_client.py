"""The blocking client against a live server."""

from __future__ import annotations

import json
import os
import pathlib
import tempfile
import threading
import time
from concurrent import futures

import grpc
import pytest
from typing import Any

import llmesh
from llmesh.auth.v1 import auth_pb2
from llmesh.billing.v1 import billing_pb2
from llmesh.chat.v1 import chat_pb2
from llmesh.llm.v1 import llm_pb2

from conftest import Live

FIXTURE = pathlib.Path(__file__).resolve().parents[3] / "tests/fixtures/chatgpt/conversations.json"


def balance(client: llmesh.Client) -> int:
    return int(client.billing.GetBalance(billing_pb2.GetBalanceRequest()).balance.micros)


def test_sign_in_with_a_password_then_with_an_api_key(live: Live) -> None:
    with llmesh.connect(live.url, email=live.email, password=live.password) as session:
        me = session.auth.GetMe(auth_pb2.GetMeRequest()).user
        assert me.email == live.email
        created = session.auth.CreateApiKey(auth_pb2.CreateApiKeyRequest(name="pytest"))
        with llmesh.connect(live.url, api_key=created.secret) as program:
            assert program.auth.GetMe(auth_pb2.GetMeRequest()).user.id == me.id
        session.auth.RevokeApiKey(auth_pb2.RevokeApiKeyRequest(id=created.api_key.id))
        with llmesh.connect(live.url, api_key=created.secret) as revoked:
            with pytest.raises(llmesh.Error) as refused:
                revoked.auth.GetMe(auth_pb2.GetMeRequest())
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        session.logout()
        with pytest.raises(llmesh.Error) as out:
            session.auth.GetMe(auth_pb2.GetMeRequest())
        assert out.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "session has ended" in out.value.message


def test_a_wrong_password_is_a_readable_error(live: Live) -> None:
    with pytest.raises(llmesh.Error) as wrong:
        llmesh.connect(live.url, email=live.email, password="not the password at all")
    assert wrong.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert wrong.value.request_id
    assert "UNAUTHENTICATED, request id" in str(wrong.value)


def test_nothing_listening_is_unavailable_with_advice() -> None:
    with pytest.raises(llmesh.Error) as down:
        llmesh.connect("http://127.0.0.1:9", connect_timeout=0.5)
    assert down.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "check the URL" in str(down.value)
    with pytest.raises(llmesh.Error) as bad:
        llmesh.connect("ftp://example.com")
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_a_streamed_reply_carries_its_usage_and_cost(client: llmesh.Client) -> None:
    before = balance(client)
    conversation = client.create_conversation("pytest")
    reply = client.send_message(
        conversation.id,
        "Name three colours.",
        sampling=llm_pb2.SamplingParams(temperature=0, max_tokens=24),
    )
    deltas = list(reply)
    assert deltas and "".join(deltas) == reply.text
    assert reply.user_message is not None and reply.user_message.content == "Name three colours."
    message = reply.message
    assert message is not None and message.state == chat_pb2.MESSAGE_STATE_COMPLETE
    assert message.content == reply.text
    usage, cost = reply.usage, reply.cost
    assert usage.prompt_tokens > 0 and 0 < usage.completion_tokens <= 24
    # The model is priced at 1 µ per prompt token and 2 per completion token.
    assert cost.micros == usage.prompt_tokens + 2 * usage.completion_tokens
    assert cost.currency == "USD"
    assert before - balance(client) == cost.micros


def test_stop_bills_only_what_was_produced(client: llmesh.Client) -> None:
    before = balance(client)
    conversation = client.create_conversation("pytest stop")
    reply = client.send_message(
        conversation.id,
        "Tell a very long story about a lighthouse.",
        sampling=llm_pb2.SamplingParams(temperature=0, max_tokens=400, ignore_eos=True),
    )
    for i, _ in enumerate(reply):
        if i == 3:
            assert reply.stop() is True
    message = reply.message
    assert message is not None and message.state == chat_pb2.MESSAGE_STATE_STOPPED
    assert 4 <= message.usage.completion_tokens < 400
    assert message.cost.micros == message.usage.prompt_tokens + 2 * message.usage.completion_tokens
    assert before - balance(client) == message.cost.micros
    assert client.billing.GetBalance(billing_pb2.GetBalanceRequest()).reserved.micros == 0


def test_a_cancelled_generation_releases_its_hold(client: llmesh.Client, live: Live) -> None:
    before = balance(client)
    generation = client.generate(
        live.model,
        [llmesh.user("Count from one to a thousand in words.")],
        sampling=llm_pb2.SamplingParams(temperature=0, max_tokens=400, ignore_eos=True),
    )
    for i, _ in enumerate(generation):
        if i == 3:
            generation.cancel()
            break
    # Settling after a hang-up happens on the server's side of the call: wait for it.
    deadline = time.monotonic() + 10
    while client.billing.GetBalance(billing_pb2.GetBalanceRequest()).reserved.micros and time.monotonic() < deadline:
        time.sleep(0.05)
    spent = before - balance(client)
    assert 0 < spent < 400 * 2, spent
    whole = client.generate(live.model, [llmesh.user("Say yes.")], sampling=llm_pb2.SamplingParams(max_tokens=8)).finish()
    assert whole.finish_reason in (llm_pb2.FINISH_REASON_STOP, llm_pb2.FINISH_REASON_LENGTH)
    assert whole.cost.micros == whole.usage.prompt_tokens + 2 * whole.usage.completion_tokens


def test_errors_carry_code_message_and_request_id(client: llmesh.Client) -> None:
    with pytest.raises(llmesh.Error) as missing:
        client.chat.GetConversation(chat_pb2.GetConversationRequest(id="0190f2a4-0000-7000-8000-000000000000"))
    e = missing.value
    assert e.code() == grpc.StatusCode.NOT_FOUND and e.code_name == "NOT_FOUND"
    assert e.request_id and len(e.request_id) >= 16
    assert str(e) == f"{e.message} (NOT_FOUND, request id {e.request_id})"
    assert isinstance(e, grpc.RpcError)
    with pytest.raises(llmesh.Error) as invalid:
        client.create_conversation("x" * 10_000)
    assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "title" in invalid.value.message
    # A stream's failure is an llmesh.Error too.
    with pytest.raises(llmesh.Error) as stream:
        list(client.send_message("0190f2a4-0000-7000-8000-000000000000", "hello"))
    assert stream.value.code() == grpc.StatusCode.NOT_FOUND


def test_a_call_can_shorten_its_deadline(client: llmesh.Client) -> None:
    with pytest.raises(llmesh.Error) as late:
        client.llm.ListModels(llm_pb2.ListModelsRequest(), timeout=0.000001)
    assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def test_imports_and_workspace_files_report_progress(client: llmesh.Client) -> None:
    seen: list[llmesh.Progress] = []
    report = client.import_conversations(FIXTURE, format="chatgpt", progress=seen.append)
    assert report.imported >= 2
    uploads = [p for p in seen if p.phase == "uploading"]
    assert uploads[0].done == 0 and uploads[-1].done == uploads[-1].total == FIXTURE.stat().st_size
    imports = [p for p in seen if p.phase == "importing"]
    assert imports and imports[-1].done == imports[-1].total
    with tempfile.TemporaryDirectory() as scratch:
        export = pathlib.Path(scratch) / "export.json"
        written = client.export_conversations(export, format="json")
        assert written == export.stat().st_size
        assert "Photosynthesis basics" in json.dumps(json.loads(export.read_text()))
        assert not (pathlib.Path(scratch) / "export.json.partial").exists()

        data = os.urandom(600_000)
        sent: list[llmesh.Progress] = []
        file = client.write_file("pytest/blob.bin", data, progress=sent.append)
        assert file.size_bytes == len(data)
        assert [p.done for p in sent][-1] == len(data) and len(sent) >= 3
        copy = pathlib.Path(scratch) / "blob.bin"
        assert client.read_file("pytest/blob.bin", copy) == len(data)
        assert copy.read_bytes() == data
        with pytest.raises(llmesh.Error) as missing:
            client.read_file("pytest/none.bin", pathlib.Path(scratch) / "none.bin")
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
        assert not (pathlib.Path(scratch) / "none.bin").exists()


def test_code_runs_stream_their_output(client: llmesh.Client) -> None:
    run = client.run_python("import sys\nprint('out')\nprint('err', file=sys.stderr)\nsys.exit(3)")
    outputs = list(run)
    # Output comes as the guest writes it: pieces, in order, each on its own stream.
    assert b"".join(o.data for o in outputs if o.stream == "stdout") == run.stdout == b"out\n"
    assert b"".join(o.data for o in outputs if o.stream == "stderr") == run.stderr == b"err\n"
    assert run.exit is not None and run.exit.exit_code == 3


def test_a_password_session_outlives_its_token_and_ends_clearly_when_revoked(live: Live) -> None:
    user = llmesh.connect(live.url, email=live.email, password=live.password)
    other = llmesh.connect(live.url, email=live.other_email, password=live.password)
    admin = llmesh.connect(live.url, email=live.admin_email, password=live.admin_password)
    other_id = other.auth.GetMe(auth_pb2.GetMeRequest()).user.id
    admin.auth.DisableUser(auth_pb2.DisableUserRequest(user_id=other_id))
    try:
        # Calls from several threads around the renewal share one refresh (a refresh
        # token works once; racing with it would end the session).
        stop = time.monotonic() + live.access_ttl + 2
        failures: list[BaseException] = []

        def keep_calling() -> None:
            while time.monotonic() < stop:
                try:
                    user.auth.GetMe(auth_pb2.GetMeRequest())
                except BaseException as e:  # collected and asserted below
                    failures.append(e)
                    return
                time.sleep(0.5)

        threads = [threading.Thread(target=keep_calling) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not failures, failures
        assert user.auth.GetMe(auth_pb2.GetMeRequest()).user.email == live.email
        with pytest.raises(llmesh.Error) as ended:
            other.auth.GetMe(auth_pb2.GetMeRequest())
        assert ended.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "session has ended" in ended.value.message and "sign in again" in ended.value.message
    finally:
        admin.auth.EnableUser(auth_pb2.EnableUserRequest(user_id=other_id))
        for c in (user, other, admin):
            c.close()


class _Flaky:
    """A stand-in server whose GetMe fails twice with UNAVAILABLE and whose Register always
    does, counting the calls each gets."""

    def __init__(self) -> None:
        self.calls = {"GetMe": 0, "Register": 0}

    def service(self) -> "grpc.GenericRpcHandler[Any, Any]":
        def get_me(request: auth_pb2.GetMeRequest, context: grpc.ServicerContext) -> auth_pb2.GetMeResponse:
            self.calls["GetMe"] += 1
            if self.calls["GetMe"] <= 2:
                context.abort(grpc.StatusCode.UNAVAILABLE, "restarting")
            return auth_pb2.GetMeResponse(user=auth_pb2.User(email="flaky@example.com"))

        def register(request: auth_pb2.RegisterRequest, context: grpc.ServicerContext) -> auth_pb2.RegisterResponse:
            self.calls["Register"] += 1
            context.abort(grpc.StatusCode.UNAVAILABLE, "restarting")

        return grpc.method_handlers_generic_handler(
            "llmesh.auth.v1.AuthService",
            {
                "GetMe": grpc.unary_unary_rpc_method_handler(
                    get_me, auth_pb2.GetMeRequest.FromString, auth_pb2.GetMeResponse.SerializeToString
                ),
                "Register": grpc.unary_unary_rpc_method_handler(
                    register, auth_pb2.RegisterRequest.FromString, auth_pb2.RegisterResponse.SerializeToString
                ),
            },
        )


def test_only_calls_marked_safe_are_retried() -> None:
    flaky = _Flaky()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers((flaky.service(),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with llmesh.connect(f"http://127.0.0.1:{port}") as c:
            assert c.auth.GetMe(auth_pb2.GetMeRequest()).user.email == "flaky@example.com"
            assert flaky.calls["GetMe"] == 3
            with pytest.raises(llmesh.Error) as once:
                c.auth.Register(auth_pb2.RegisterRequest(email="a@example.com", password="x" * 12))
            assert once.value.code() == grpc.StatusCode.UNAVAILABLE
            assert flaky.calls["Register"] == 1
    finally:
        server.stop(None)


def test_a_document_goes_into_a_knowledge_collection(client: llmesh.Client) -> None:
    from llmesh.chat.v1 import knowledge_pb2

    collection = client.knowledge.CreateCollection(knowledge_pb2.CreateCollectionRequest(name="pytest notes")).collection
    seen: list[llmesh.Progress] = []
    with tempfile.TemporaryDirectory() as scratch:
        path = pathlib.Path(scratch) / "notes.md"
        path.write_text("# Notes\n\nThe blue door opens with the brass key kept under the mat.\n")
        doc = client.ingest_document(collection.id, path, progress=seen.append)
    assert doc.name == "notes.md" and doc.chunks >= 1
    assert doc.format == knowledge_pb2.DOCUMENT_FORMAT_MARKDOWN
    assert [p.phase for p in seen if p.phase != "uploading"][:2] == ["parsing", "chunking"]
    hits = client.knowledge.SearchKnowledge(
        knowledge_pb2.SearchKnowledgeRequest(collection_ids=[collection.id], query="which key opens the door")
    ).hits
    assert hits and "brass" in hits[0].chunk.text
    client.knowledge.DeleteCollection(knowledge_pb2.DeleteCollectionRequest(id=collection.id))
