"""The asyncio client: the surface of :class:`llmesh.Client`, with ``await`` and
``async for``::

    import llmesh.aio

    async with await llmesh.aio.connect("http://127.0.0.1:7700", api_key="lmk_...") as client:
        conversation = await client.create_conversation("Hello")
        reply = await client.send_message(conversation.id, "Say hello")
        async for delta in reply:
            print(delta, end="", flush=True)
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import TYPE_CHECKING, Any, AsyncIterator, Iterable, Optional, Union

import grpc
import grpc.aio

from llmesh import _common
from llmesh._client import Output, _export_format, _import_source
from llmesh._common import Access, Progress, ProgressFn, Source, Upload
from llmesh._errors import Error
from llmesh.auth.v1 import auth_pb2, auth_pb2_grpc
from llmesh.billing.v1 import billing_pb2_grpc
from llmesh.chat.v1 import chat_pb2, chat_pb2_grpc, knowledge_pb2, knowledge_pb2_grpc
from llmesh.common.v1 import common_pb2
from llmesh.llm.v1 import llm_pb2, llm_pb2_grpc
from llmesh.sandbox.v1 import sandbox_pb2, sandbox_pb2_grpc

if TYPE_CHECKING:
    _UnaryBase = grpc.aio.UnaryUnaryClientInterceptor[Any, Any]
    _StreamBase = grpc.aio.UnaryStreamClientInterceptor[Any, Any]
else:
    _UnaryBase = grpc.aio.UnaryUnaryClientInterceptor
    _StreamBase = grpc.aio.UnaryStreamClientInterceptor

__all__ = ["AsyncClient", "AsyncGeneration", "AsyncReply", "AsyncRun", "Output", "connect"]


class _Session:
    """A signed-in session, refreshed by one task at a time."""

    def __init__(self, auth: auth_pb2_grpc.AuthServiceAsyncStub, timeout: float) -> None:
        self._auth = auth
        self._timeout = timeout
        self._lock = asyncio.Lock()
        self._access = Access("", 0.0)
        self._refresh: Optional[str] = None

    async def login(self, email: str, password: str) -> None:
        call = self._auth.Login(auth_pb2.LoginRequest(email=email, password=password), timeout=self._timeout)
        try:
            answer = await call
            metadata = await call.initial_metadata()
        except grpc.RpcError as e:
            raise Error.from_rpc(e) from None
        self._access = _common.access_of(answer.tokens, list(metadata or ()))
        self._refresh = answer.tokens.refresh_token

    async def token(self) -> str:
        access = self._access
        if not access.token:
            raise _common.session_ended()
        if time.monotonic() < access.renew_at:
            return access.token
        return await self.renew(access.token)

    async def renew(self, stale: str) -> str:
        async with self._lock:
            if not self._access.token or self._refresh is None:
                raise _common.session_ended()
            if self._access.token != stale:
                return self._access.token
            call = self._auth.Refresh(auth_pb2.RefreshRequest(refresh_token=self._refresh), timeout=self._timeout)
            try:
                answer = await call
                metadata = await call.initial_metadata()
            except grpc.RpcError as e:
                if e.code() == grpc.StatusCode.UNAUTHENTICATED:
                    self._refresh = None
                    raise _common.session_ended() from None
                raise Error.from_rpc(e) from None
            self._access = _common.access_of(answer.tokens, list(metadata or ()))
            self._refresh = answer.tokens.refresh_token
            return self._access.token

    async def logout(self) -> None:
        token = await self.token()
        async with self._lock:
            refresh, self._refresh = self._refresh, None
            self._access = Access("", 0.0)
        if refresh is None:
            return
        try:
            await self._auth.Logout(
                auth_pb2.LogoutRequest(refresh_token=refresh),
                timeout=self._timeout,
                metadata=(("authorization", f"Bearer {token}"),),
            )
        except grpc.RpcError as e:
            raise Error.from_rpc(e) from None


class _Signer:
    """Signs every call, gives it a deadline unless it has one, and raises failures as
    :class:`llmesh.Error` (a unary call refused as UNAUTHENTICATED is sent once more after
    a refresh, as in the sync client). grpc.aio files an interceptor under one kind of
    call only, so each kind gets a subclass."""

    def __init__(self, client: "AsyncClient") -> None:
        self._client = client

    async def _sign(
        self, details: grpc.aio.ClientCallDetails, token: Optional[str] = None
    ) -> tuple[grpc.aio.ClientCallDetails, Optional[str]]:
        client = self._client
        metadata = grpc.aio.Metadata(*[(k, v) for k, v in (details.metadata or ()) if k != "authorization"])
        if client._session is not None:
            token = token or await client._session.token()
            metadata.add("authorization", f"Bearer {token}")
        elif client._header is not None:
            metadata.add(*client._header)
        method = details.method.decode() if isinstance(details.method, bytes) else details.method
        timeout = _common.deadline_for(method, details.timeout, client._timeout, client._stream_timeout)
        signed = grpc.aio.ClientCallDetails(details.method, timeout, metadata, details.credentials, details.wait_for_ready)
        return signed, token

    async def _unary(self, continuation: Any, details: grpc.aio.ClientCallDetails, request: Any) -> Any:
        signed, token = await self._sign(details)
        try:
            call = await continuation(signed, request)
            return await call
        except grpc.RpcError as e:
            session = self._client._session
            if session is None or token is None or e.code() != grpc.StatusCode.UNAUTHENTICATED:
                raise Error.from_rpc(e) from None
        fresh = await session.renew(token)
        signed, _ = await self._sign(details, fresh)
        try:
            call = await continuation(signed, request)
            return await call
        except grpc.RpcError as e:
            raise Error.from_rpc(e) from None


class _UnaryInterceptor(_Signer, _UnaryBase):
    async def intercept_unary_unary(self, continuation: Any, details: grpc.aio.ClientCallDetails, request: Any) -> Any:
        return await self._unary(continuation, details, request)


class _StreamInterceptor(_Signer, _StreamBase):
    async def intercept_unary_stream(self, continuation: Any, details: grpc.aio.ClientCallDetails, request: Any) -> Any:
        signed, _ = await self._sign(details)
        call = await continuation(signed, request)

        async def responses() -> AsyncIterator[Any]:
            try:
                async for response in call:
                    yield response
            except grpc.RpcError as e:
                raise Error.from_rpc(e) from None
            finally:
                call.cancel()

        return responses()


class AsyncReply:
    """A reply being generated: ``async for`` its text deltas; then :attr:`message` holds
    the stored assistant message with usage and cost."""

    def __init__(self, client: "AsyncClient", conversation_id: str, stream: Any) -> None:
        self._client = client
        self._stream = stream
        self._events: AsyncIterator[Any] = stream.__aiter__()
        self.conversation_id = conversation_id
        self.user_message: Optional[chat_pb2.Message] = None
        self.message: Optional[chat_pb2.Message] = None
        self.text = ""

    def __aiter__(self) -> "AsyncReply":
        return self

    async def __anext__(self) -> str:
        async for response in self._events:
            event = response.event
            kind = event.WhichOneof("event")
            if kind == "delta":
                self.text += event.delta
                return str(event.delta)
            if kind == "user_message":
                self.user_message = event.user_message
            elif kind == "assistant_message":
                self.message = event.assistant_message
                self.text = event.assistant_message.content
        raise StopAsyncIteration

    async def finish(self) -> chat_pb2.Message:
        """Reads the reply to its end and returns the stored assistant message."""
        async for _ in self:
            pass
        if self.message is None:
            raise Error(grpc.StatusCode.INTERNAL, "the reply ended without its message")
        return self.message

    async def stop(self) -> bool:
        """Asks the server to stop the reply; returns whether one was being generated."""
        answer = await self._client.chat.StopReply(chat_pb2.StopReplyRequest(conversation_id=self.conversation_id))
        return bool(answer.stopped)

    def cancel(self) -> None:
        """Hangs up: the server stops the reply and keeps what was produced."""
        cancel = getattr(self._stream, "cancel", None)
        if callable(cancel):
            cancel()

    @property
    def usage(self) -> common_pb2.TokenUsage:
        return self.message.usage if self.message is not None else common_pb2.TokenUsage()

    @property
    def cost(self) -> common_pb2.Money:
        return self.message.cost if self.message is not None else common_pb2.Money()


class AsyncGeneration:
    """A generation under way: ``async for`` its text deltas; then :attr:`done`."""

    def __init__(self, client: "AsyncClient", generation_id: str, stream: Any) -> None:
        self._client = client
        self._stream = stream
        self._events: AsyncIterator[llm_pb2.GenerateResponse] = stream.__aiter__()
        self.generation_id = generation_id
        self.done: Optional[llm_pb2.GenerateDone] = None
        self.text = ""
        #: The tool calls received so far, their pieces joined (hosted models given
        #: ``ChatInput.tools``; the reply then ends with FINISH_REASON_TOOL_CALLS).
        self.tool_calls: list[llm_pb2.ToolCall] = []

    def __aiter__(self) -> "AsyncGeneration":
        return self

    async def __anext__(self) -> str:
        async for response in self._events:
            kind = response.WhichOneof("event")
            if kind == "delta":
                self.text += response.delta
                return str(response.delta)
            if kind == "tool_call":
                _common.join_tool_call(self.tool_calls, response.tool_call)
            elif kind == "done":
                self.done = response.done
        raise StopAsyncIteration

    async def finish(self) -> llm_pb2.GenerateDone:
        async for _ in self:
            pass
        if self.done is None:
            raise Error(grpc.StatusCode.INTERNAL, "the generation ended without its report")
        if self.done.finish_reason == llm_pb2.FINISH_REASON_ERROR:
            raise Error(grpc.StatusCode.INTERNAL, self.done.error)
        return self.done

    async def stop(self) -> None:
        await self._client.llm.StopGeneration(llm_pb2.StopGenerationRequest(generation_id=self.generation_id))

    def cancel(self) -> None:
        cancel = getattr(self._stream, "cancel", None)
        if callable(cancel):
            cancel()


class AsyncRun:
    """A run under way: ``async for`` its :class:`llmesh.Output`; then :attr:`exit`."""

    def __init__(self, stream: Any) -> None:
        self._events: AsyncIterator[sandbox_pb2.RunResponse] = stream.__aiter__()
        self.exit: Optional[sandbox_pb2.RunExit] = None
        self.stdout = b""
        self.stderr = b""

    def __aiter__(self) -> "AsyncRun":
        return self

    async def __anext__(self) -> Output:
        async for response in self._events:
            kind = response.WhichOneof("event")
            if kind == "stdout":
                self.stdout += response.stdout
                return Output("stdout", response.stdout)
            if kind == "stderr":
                self.stderr += response.stderr
                return Output("stderr", response.stderr)
            if kind == "exit":
                self.exit = response.exit
        raise StopAsyncIteration

    async def finish(self) -> sandbox_pb2.RunExit:
        async for _ in self:
            pass
        if self.exit is None:
            raise Error(grpc.StatusCode.INTERNAL, "the run ended without its exit")
        return self.exit


class AsyncClient:
    """The asyncio twin of :class:`llmesh.Client`; make one with :func:`connect`."""

    def __init__(
        self,
        url: str,
        *,
        api_key: Optional[str] = None,
        access_token: Optional[str] = None,
        timeout: float = _common.DEFAULT_TIMEOUT,
        stream_timeout: Optional[float] = _common.DEFAULT_STREAM_TIMEOUT,
        retries: int = 4,
    ) -> None:
        host, secure = _common.target(url)
        self.url = url
        self._host, self._secure = host, secure
        self._timeout = timeout
        self._stream_timeout = stream_timeout
        self._header: Optional[tuple[str, str]] = None
        if api_key is not None:
            self._header = (_common.API_KEY_HEADER, api_key)
        elif access_token is not None:
            self._header = ("authorization", f"Bearer {access_token}")
        self._session: Optional[_Session] = None
        options = _common.channel_options(retries)
        self._raw = self._channel(options, [])
        self._channel_ = self._channel(options, [_UnaryInterceptor(self), _StreamInterceptor(self)])
        self.auth = auth_pb2_grpc.AuthServiceStub(self._channel_)
        self.chat = chat_pb2_grpc.ChatServiceStub(self._channel_)
        self.archive = chat_pb2_grpc.ChatArchiveServiceStub(self._channel_)
        self.knowledge = knowledge_pb2_grpc.KnowledgeServiceStub(self._channel_)
        self.llm = llm_pb2_grpc.LlmServiceStub(self._channel_)
        self.billing = billing_pb2_grpc.BillingServiceStub(self._channel_)
        self.sandbox = sandbox_pb2_grpc.SandboxServiceStub(self._channel_)

    def _channel(self, options: list[tuple[str, Any]], interceptors: list[Any]) -> grpc.aio.Channel:
        if self._secure:
            return grpc.aio.secure_channel(self._host, grpc.ssl_channel_credentials(), options=options, interceptors=interceptors)
        return grpc.aio.insecure_channel(self._host, options=options, interceptors=interceptors)

    async def _start(self, email: Optional[str], password: Optional[str], connect_timeout: float) -> None:
        try:
            await asyncio.wait_for(self._raw.channel_ready(), connect_timeout)
        except asyncio.TimeoutError:
            await self.close()
            raise Error(
                grpc.StatusCode.UNAVAILABLE,
                f"cannot reach llmesh at {self.url} within {connect_timeout:g} s; check the URL and that the server runs",
            ) from None
        if email is not None or password is not None:
            if not email or not password:
                raise Error(grpc.StatusCode.INVALID_ARGUMENT, "signing in needs both email and password")
            session = _Session(auth_pb2_grpc.AuthServiceStub(self._raw), self._timeout)
            await session.login(email, password)
            self._session = session

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel_.close(None)
        await self._raw.close(None)

    async def logout(self) -> None:
        if self._session is not None:
            await self._session.logout()

    async def create_conversation(self, title: str = "", **fields: Any) -> chat_pb2.Conversation:
        answer = await self.chat.CreateConversation(chat_pb2.CreateConversationRequest(title=title, **fields))
        return answer.conversation

    async def send_message(
        self,
        conversation_id: str,
        content: str,
        *,
        model: str = "",
        sampling: Optional[llm_pb2.SamplingParams] = None,
        parent_id: str = "",
    ) -> AsyncReply:
        request = chat_pb2.SendMessageRequest(
            conversation_id=conversation_id, content=content, model=model, parent_id=parent_id, sampling=sampling
        )
        return AsyncReply(self, conversation_id, self.chat.SendMessage(request))

    async def regenerate(self, conversation_id: str, message_id: str, *, model: str = "") -> AsyncReply:
        request = chat_pb2.RegenerateRequest(message_id=message_id, model=model)
        return AsyncReply(self, conversation_id, self.chat.Regenerate(request))

    async def edit_message(self, conversation_id: str, message_id: str, content: str) -> AsyncReply:
        request = chat_pb2.EditMessageRequest(message_id=message_id, content=content)
        return AsyncReply(self, conversation_id, self.chat.EditMessage(request))

    async def generate(
        self,
        model: str,
        messages: Iterable[llm_pb2.ChatMessage] = (),
        *,
        prompt: Optional[str] = None,
        sampling: Optional[llm_pb2.SamplingParams] = None,
    ) -> AsyncGeneration:
        gid = _common.generation_id()
        if prompt is not None:
            request = llm_pb2.GenerateRequest(model=model, prompt=prompt, sampling=sampling, generation_id=gid)
        else:
            chat = llm_pb2.ChatInput(messages=list(messages))
            request = llm_pb2.GenerateRequest(model=model, chat=chat, sampling=sampling, generation_id=gid)
        return AsyncGeneration(self, gid, self.llm.Generate(request))

    async def upload(self, source: Source, *, name: Optional[str] = None, progress: Optional[ProgressFn] = None) -> str:
        content = Upload(source, name)
        report = progress or _common._ignore
        begun = await self.archive.BeginUpload(
            chat_pb2.BeginUploadRequest(file_name=content.name, size_bytes=content.size, sha256=content.sha256())
        )
        offset = 0
        report(Progress("uploading", 0, content.size))
        for chunk in content.chunks(max(1, begun.max_chunk_bytes)):
            await self.archive.AppendUploadChunk(
                chat_pb2.AppendUploadChunkRequest(upload_id=begun.upload_id, offset=offset, data=chunk)
            )
            offset += len(chunk)
            report(Progress("uploading", offset, content.size))
        await self.archive.FinishUpload(chat_pb2.FinishUploadRequest(upload_id=begun.upload_id))
        return str(begun.upload_id)

    async def ingest_document(
        self,
        collection_id: str,
        source: Source,
        *,
        name: Optional[str] = None,
        progress: Optional[ProgressFn] = None,
    ) -> knowledge_pb2.Document:
        """Uploads a document (text, Markdown, HTML, PDF, DOCX, CSV or code; the format is
        guessed from the name and the bytes) and reads it into a knowledge collection,
        reporting the upload's bytes and then each phase's progress. A document of the
        same name in the collection is replaced. Returns the stored document."""
        upload_id = await self.upload(source, name=name, progress=progress)
        report = progress or _common._ignore
        phases = {1: "parsing", 2: "chunking", 3: "embedding", 4: "indexing"}
        async for event in self.knowledge.IngestDocument(
            knowledge_pb2.IngestDocumentRequest(collection_id=collection_id, upload_id=upload_id)
        ):
            which = event.WhichOneof("event")
            if which == "progress":
                p = event.progress
                report(Progress(phases.get(p.phase, "ingesting"), p.done, p.total))
            elif which == "document":
                return event.document
        raise Error(
            grpc.StatusCode.UNAVAILABLE,
            "the ingest ended without its document; the server may have restarted: list the collection's documents before trying again",
        )

    async def import_conversations(
        self,
        source: Source,
        *,
        format: str = "auto",
        name: Optional[str] = None,
        progress: Optional[ProgressFn] = None,
    ) -> chat_pb2.ImportReport:
        kind = _import_source(format)
        upload_id = await self.upload(source, name=name, progress=progress)
        report = progress or _common._ignore
        async for event in self.archive.ImportConversations(
            chat_pb2.ImportConversationsRequest(upload_id=upload_id, source=kind)
        ):
            which = event.WhichOneof("event")
            if which == "progress":
                report(Progress("importing", event.progress.done, event.progress.total))
            elif which == "report":
                return event.report
        raise Error(
            grpc.StatusCode.UNAVAILABLE,
            "the import ended without its report; the server may have restarted: list your conversations before trying again",
        )

    async def export_conversations(
        self, path: Union[str, "os.PathLike[str]"], *, conversation_id: str = "", format: str = "json"
    ) -> int:
        request = chat_pb2.ExportConversationsRequest(conversation_id=conversation_id, format=_export_format(format))
        saver = _common.Saver(path, None)
        try:
            async for chunk in self.archive.ExportConversations(request):
                saver.write(chunk.chunk)
        except BaseException:
            saver.abandon()
            raise
        return saver.done()

    async def write_file(
        self, workspace_path: str, source: Source, *, progress: Optional[ProgressFn] = None
    ) -> sandbox_pb2.WorkspaceFile:
        content = Upload(source)
        report = progress or _common._ignore
        iterator = content.chunks(_common.WORKSPACE_CHUNK)
        offset = 0
        pending = next(iterator, b"")
        while True:
            following = next(iterator, None)
            last = following is None
            answer = await self.sandbox.WriteFileChunk(
                sandbox_pb2.WriteFileChunkRequest(path=workspace_path, offset=offset, data=pending, last=last)
            )
            offset += len(pending)
            report(Progress("uploading", offset, content.size))
            if last:
                return answer.file
            pending = following or b""

    async def read_file(
        self, workspace_path: str, path: Union[str, "os.PathLike[str]"], *, progress: Optional[ProgressFn] = None
    ) -> int:
        saver = _common.Saver(path, progress)
        try:
            async for chunk in self.sandbox.ReadFile(sandbox_pb2.ReadFileRequest(path=workspace_path)):
                saver.write(chunk.chunk)
        except BaseException:
            saver.abandon()
            raise
        return saver.done()

    async def run_python(self, code: str, *, args: Iterable[str] = (), stdin: bytes = b"", persist: bool = False) -> AsyncRun:
        return await self.run(sandbox_pb2.RunRequest(runtime="python", code=code, args=list(args), stdin=stdin, persist=persist))

    async def run(self, request: sandbox_pb2.RunRequest) -> AsyncRun:
        return AsyncRun(self.sandbox.Run(request))


async def connect(
    url: str,
    *,
    api_key: Optional[str] = None,
    email: Optional[str] = None,
    password: Optional[str] = None,
    access_token: Optional[str] = None,
    timeout: float = _common.DEFAULT_TIMEOUT,
    stream_timeout: Optional[float] = _common.DEFAULT_STREAM_TIMEOUT,
    retries: int = 4,
    connect_timeout: float = 10.0,
) -> AsyncClient:
    """Connects to ``url`` and signs in with ``email`` and ``password`` when given; the
    options are those of :class:`llmesh.Client`."""
    client = AsyncClient(
        url, api_key=api_key, access_token=access_token, timeout=timeout, stream_timeout=stream_timeout, retries=retries
    )
    await client._start(email, password, connect_timeout)
    return client
