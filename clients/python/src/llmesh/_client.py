"""The synchronous client."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Optional, Union

import grpc

from llmesh import _common
from llmesh._common import Access, Progress, ProgressFn, Source, Upload
from llmesh._errors import Error
from llmesh.auth.v1 import auth_pb2, auth_pb2_grpc
from llmesh.billing.v1 import billing_pb2_grpc
from llmesh.chat.v1 import chat_pb2, chat_pb2_grpc, knowledge_pb2, knowledge_pb2_grpc
from llmesh.common.v1 import common_pb2
from llmesh.llm.v1 import llm_pb2, llm_pb2_grpc
from llmesh.sandbox.v1 import sandbox_pb2, sandbox_pb2_grpc

if TYPE_CHECKING:
    _UnaryBase = grpc.UnaryUnaryClientInterceptor[Any, Any]
    _StreamBase = grpc.UnaryStreamClientInterceptor[Any, Any]
    _FutureBase = grpc.Future[Any]
else:
    _UnaryBase = grpc.UnaryUnaryClientInterceptor
    _StreamBase = grpc.UnaryStreamClientInterceptor
    _FutureBase = grpc.Future

_IMPORT_SOURCES = {
    "auto": chat_pb2.IMPORT_SOURCE_UNSPECIFIED,
    "chatgpt": chat_pb2.IMPORT_SOURCE_CHATGPT,
    "claude": chat_pb2.IMPORT_SOURCE_CLAUDE,
    "open-webui": chat_pb2.IMPORT_SOURCE_OPEN_WEBUI,
    "librechat": chat_pb2.IMPORT_SOURCE_LIBRECHAT,
    "typingmind": chat_pb2.IMPORT_SOURCE_TYPINGMIND,
    "generic": chat_pb2.IMPORT_SOURCE_GENERIC,
    "llmesh": chat_pb2.IMPORT_SOURCE_LLMESH_JSON,
}
_EXPORT_FORMATS = {
    "json": chat_pb2.EXPORT_FORMAT_JSON,
    "markdown": chat_pb2.EXPORT_FORMAT_MARKDOWN,
}


class _Session:
    """A signed-in session: refreshed one thread at a time (a refresh token works once;
    two threads racing with it would end the session)."""

    def __init__(self, auth: auth_pb2_grpc.AuthServiceStub, timeout: float, email: str, password: str) -> None:
        self._auth = auth
        self._timeout = timeout
        self._lock = threading.Lock()
        try:
            answer, call = auth.Login.with_call(
                auth_pb2.LoginRequest(email=email, password=password), timeout=timeout
            )
        except grpc.RpcError as e:
            raise Error.from_rpc(e) from None
        self._access = _common.access_of(answer.tokens, call.initial_metadata())
        self._refresh: Optional[str] = answer.tokens.refresh_token

    def token(self) -> str:
        access = self._access
        if not access.token:
            raise _common.session_ended()
        if _now() < access.renew_at:
            return access.token
        return self.renew(access.token)

    def renew(self, stale: str) -> str:
        with self._lock:
            if not self._access.token:
                raise _common.session_ended()
            if self._access.token != stale:
                return self._access.token
            if self._refresh is None:
                raise _common.session_ended()
            try:
                answer, call = self._auth.Refresh.with_call(
                    auth_pb2.RefreshRequest(refresh_token=self._refresh), timeout=self._timeout
                )
            except grpc.RpcError as e:
                if e.code() == grpc.StatusCode.UNAUTHENTICATED:
                    self._refresh = None
                    raise _common.session_ended() from None
                raise Error.from_rpc(e) from None
            self._access = _common.access_of(answer.tokens, call.initial_metadata())
            self._refresh = answer.tokens.refresh_token
            return self._access.token

    def logout(self) -> None:
        token = self.token()
        with self._lock:
            refresh, self._refresh = self._refresh, None
            self._access = Access("", 0.0)
        if refresh is None:
            return
        try:
            self._auth.Logout(
                auth_pb2.LogoutRequest(refresh_token=refresh),
                timeout=self._timeout,
                metadata=(("authorization", f"Bearer {token}"),),
            )
        except grpc.RpcError as e:
            raise Error.from_rpc(e) from None


def _now() -> float:
    return time.monotonic()


@dataclass(frozen=True)
class _Details(grpc.ClientCallDetails):
    method: str
    timeout: Optional[float]
    metadata: Optional[tuple[tuple[str, Union[str, bytes]], ...]]
    credentials: Optional[grpc.CallCredentials]
    wait_for_ready: Optional[bool]
    compression: Optional[grpc.Compression]


class _FailedCall(grpc.RpcError, grpc.Call, _FutureBase):
    """What a failed unary call hands back to grpc: raises the llmesh error when read."""

    def __init__(self, error: Error) -> None:
        self._error = error

    def result(self, timeout: Optional[float] = None) -> Any:
        raise self._error

    def exception(self, timeout: Optional[float] = None) -> Error:
        return self._error

    def traceback(self, timeout: Optional[float] = None) -> None:
        return None

    def add_done_callback(self, fn: Callable[[Any], None]) -> None:
        fn(self)

    def done(self) -> bool:
        return True

    def running(self) -> bool:
        return False

    def cancelled(self) -> bool:
        return False

    def cancel(self) -> bool:
        return False

    def is_active(self) -> bool:
        return False

    def time_remaining(self) -> float:
        return 0.0

    def add_callback(self, callback: Callable[[], None]) -> bool:
        return False

    def initial_metadata(self) -> tuple[()]:
        return ()

    def trailing_metadata(self) -> tuple[()]:
        return ()

    def code(self) -> grpc.StatusCode:
        return self._error.code()

    def details(self) -> str:
        return self._error.message


class _Stream:
    """A streamed answer whose errors come out as :class:`llmesh.Error`."""

    def __init__(self, call: Any) -> None:
        self._call = call

    def __iter__(self) -> "_Stream":
        return self

    def __next__(self) -> Any:
        try:
            return next(self._call)
        except grpc.RpcError as e:
            raise Error.from_rpc(e) from None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._call, name)


class _Interceptor(_UnaryBase, _StreamBase):
    """Signs every call, gives it a deadline unless it has one, and turns failures into
    :class:`llmesh.Error`. With a session, a unary call refused as UNAUTHENTICATED (its
    token expired on the way) is sent once more after a refresh: the server refused it
    before doing anything."""

    def __init__(self, client: "Client") -> None:
        self._client = client

    def _sign(self, details: grpc.ClientCallDetails) -> tuple[_Details, Optional[str]]:
        client = self._client
        metadata = list(details.metadata or ())
        token = None
        if client._session is not None:
            token = client._session.token()
            metadata = _common.with_header(metadata, "authorization", f"Bearer {token}")
        elif client._header is not None:
            metadata = _common.with_header(metadata, *client._header)
        timeout = _common.deadline_for(
            details.method, details.timeout, client._timeout, client._stream_timeout
        )
        signed = _Details(
            details.method,
            timeout,
            tuple(metadata),
            details.credentials,
            details.wait_for_ready,
            getattr(details, "compression", None),
        )
        return signed, token

    def intercept_unary_unary(self, continuation: Any, details: grpc.ClientCallDetails, request: Any) -> Any:
        signed, token = self._sign(details)
        outcome = continuation(signed, request)
        session = self._client._session
        if (
            session is not None
            and token is not None
            and isinstance(outcome, grpc.RpcError)
            and outcome.code() == grpc.StatusCode.UNAUTHENTICATED
        ):
            fresh = session.renew(token)
            metadata = tuple(_common.with_header(signed.metadata, "authorization", f"Bearer {fresh}"))
            outcome = continuation(
                _Details(signed.method, signed.timeout, metadata, signed.credentials, signed.wait_for_ready, signed.compression),
                request,
            )
        if isinstance(outcome, grpc.RpcError):
            return _FailedCall(Error.from_rpc(outcome))
        return outcome

    def intercept_unary_stream(self, continuation: Any, details: grpc.ClientCallDetails, request: Any) -> Any:
        signed, _ = self._sign(details)
        return _Stream(continuation(signed, request))


class Reply:
    """A reply being generated: iterate it for text deltas; then :attr:`message` holds the
    stored assistant message with its usage and cost. :meth:`stop` asks the server to stop
    it (the stream then ends with the message as stopped); :meth:`cancel` hangs up. Either
    way, only what was produced is charged."""

    def __init__(self, client: "Client", conversation_id: str, stream: Iterable[Any]) -> None:
        self._client = client
        self._stream = stream
        self._events = iter(stream)
        self.conversation_id = conversation_id
        #: The stored user message (SendMessage, EditMessage), once the server sent it.
        self.user_message: Optional[chat_pb2.Message] = None
        #: The stored assistant message, once the reply has ended.
        self.message: Optional[chat_pb2.Message] = None
        #: The text received so far (the stored text once the reply has ended).
        self.text = ""

    def __iter__(self) -> "Reply":
        return self

    def __next__(self) -> str:
        for response in self._events:
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
        raise StopIteration

    def finish(self) -> chat_pb2.Message:
        """Reads the reply to its end and returns the stored assistant message."""
        for _ in self:
            pass
        if self.message is None:
            raise Error(grpc.StatusCode.INTERNAL, "the reply ended without its message")
        return self.message

    def stop(self) -> bool:
        """Asks the server to stop the reply; returns whether one was being generated."""
        answer = self._client.chat.StopReply(chat_pb2.StopReplyRequest(conversation_id=self.conversation_id))
        return bool(answer.stopped)

    def cancel(self) -> None:
        """Hangs up: the server stops the reply and keeps what was produced."""
        cancel = getattr(self._stream, "cancel", None)
        if callable(cancel):
            cancel()

    @property
    def usage(self) -> common_pb2.TokenUsage:
        """Tokens of the ended reply (zero before the end)."""
        return self.message.usage if self.message is not None else common_pb2.TokenUsage()

    @property
    def cost(self) -> common_pb2.Money:
        """What the ended reply cost (zero before the end)."""
        return self.message.cost if self.message is not None else common_pb2.Money()


class Generation:
    """A generation under way: iterate it for text deltas; then :attr:`done` holds the
    finish reason, usage, cost and timings."""

    def __init__(self, client: "Client", generation_id: str, stream: Iterable[llm_pb2.GenerateResponse]) -> None:
        self._client = client
        self._stream = stream
        self._events = iter(stream)
        self.generation_id = generation_id
        self.done: Optional[llm_pb2.GenerateDone] = None
        self.text = ""
        #: The tool calls received so far, their pieces joined (hosted models given
        #: ``ChatInput.tools``; the reply then ends with FINISH_REASON_TOOL_CALLS).
        self.tool_calls: list[llm_pb2.ToolCall] = []

    def __iter__(self) -> "Generation":
        return self

    def __next__(self) -> str:
        for response in self._events:
            kind = response.WhichOneof("event")
            if kind == "delta":
                self.text += response.delta
                return str(response.delta)
            if kind == "tool_call":
                _common.join_tool_call(self.tool_calls, response.tool_call)
            elif kind == "done":
                self.done = response.done
        raise StopIteration

    def finish(self) -> llm_pb2.GenerateDone:
        """Reads to the end and returns the report; a generation the server failed is an
        error with its words."""
        for _ in self:
            pass
        if self.done is None:
            raise Error(grpc.StatusCode.INTERNAL, "the generation ended without its report")
        if self.done.finish_reason == llm_pb2.FINISH_REASON_ERROR:
            raise Error(grpc.StatusCode.INTERNAL, self.done.error)
        return self.done

    def stop(self) -> None:
        """Stops the generation from another call; the stream then ends as cancelled."""
        self._client.llm.StopGeneration(llm_pb2.StopGenerationRequest(generation_id=self.generation_id))

    def cancel(self) -> None:
        """Hangs up: the server stops generating and charges what was produced."""
        cancel = getattr(self._stream, "cancel", None)
        if callable(cancel):
            cancel()


@dataclass(frozen=True)
class Output:
    """A piece of a run's output: ``stream`` is ``stdout`` or ``stderr``."""

    stream: str
    data: bytes


class Run:
    """A run under way: iterate it for :class:`Output`; then :attr:`exit` says how it
    ended (status, exit code, fuel, memory, time, cost)."""

    def __init__(self, stream: Iterable[sandbox_pb2.RunResponse]) -> None:
        self._stream = stream
        self._events = iter(stream)
        self.exit: Optional[sandbox_pb2.RunExit] = None
        self.stdout = b""
        self.stderr = b""

    def __iter__(self) -> "Run":
        return self

    def __next__(self) -> Output:
        for response in self._events:
            kind = response.WhichOneof("event")
            if kind == "stdout":
                self.stdout += response.stdout
                return Output("stdout", response.stdout)
            if kind == "stderr":
                self.stderr += response.stderr
                return Output("stderr", response.stderr)
            if kind == "exit":
                self.exit = response.exit
        raise StopIteration

    def finish(self) -> sandbox_pb2.RunExit:
        """Reads the run to its end (output collects in :attr:`stdout` and :attr:`stderr`)."""
        for _ in self:
            pass
        if self.exit is None:
            raise Error(grpc.StatusCode.INTERNAL, "the run ended without its exit")
        return self.exit


class Client:
    """A connection to one llmesh deployment, signed in as one caller.

    The generated stubs are its attributes (:attr:`auth`, :attr:`chat`, :attr:`archive`,
    :attr:`knowledge`, :attr:`llm`, :attr:`billing`, :attr:`sandbox`); every call through them carries the
    credentials and a deadline, is retried after UNAVAILABLE when proto/ marks it safe to
    repeat, and fails with :class:`llmesh.Error`. Use it as a context manager, or call
    :meth:`close`.
    """

    def __init__(
        self,
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
    ) -> None:
        host, secure = _common.target(url)
        options = _common.channel_options(retries)
        if secure:
            self._raw = grpc.secure_channel(host, grpc.ssl_channel_credentials(), options=options)
        else:
            self._raw = grpc.insecure_channel(host, options=options)
        self.url = url
        self._timeout = timeout
        self._stream_timeout = stream_timeout
        self._header: Optional[tuple[str, str]] = None
        self._session: Optional[_Session] = None
        try:
            grpc.channel_ready_future(self._raw).result(timeout=connect_timeout)
        except grpc.FutureTimeoutError:
            self._raw.close()
            raise Error(
                grpc.StatusCode.UNAVAILABLE,
                f"cannot reach llmesh at {url} within {connect_timeout:g} s; check the URL and that the server runs",
            ) from None
        if api_key is not None:
            self._header = (_common.API_KEY_HEADER, api_key)
        elif access_token is not None:
            self._header = ("authorization", f"Bearer {access_token}")
        elif email is not None or password is not None:
            if not email or not password:
                raise Error(grpc.StatusCode.INVALID_ARGUMENT, "signing in needs both email and password")
            self._session = _Session(auth_pb2_grpc.AuthServiceStub(self._raw), timeout, email, password)
        channel = grpc.intercept_channel(self._raw, _Interceptor(self))
        self.auth = auth_pb2_grpc.AuthServiceStub(channel)
        self.chat = chat_pb2_grpc.ChatServiceStub(channel)
        self.archive = chat_pb2_grpc.ChatArchiveServiceStub(channel)
        self.knowledge = knowledge_pb2_grpc.KnowledgeServiceStub(channel)
        self.llm = llm_pb2_grpc.LlmServiceStub(channel)
        self.billing = billing_pb2_grpc.BillingServiceStub(channel)
        self.sandbox = sandbox_pb2_grpc.SandboxServiceStub(channel)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        """Closes the connection (a password session stays valid until it expires: see
        :meth:`logout`)."""
        self._raw.close()

    def logout(self) -> None:
        """Ends a password session on the server; later calls fail as UNAUTHENTICATED."""
        if self._session is not None:
            self._session.logout()

    # Chat.

    def create_conversation(self, title: str = "", **fields: Any) -> chat_pb2.Conversation:
        """Starts a conversation; ``fields`` are those of CreateConversationRequest
        (``model``, ``system_prompt``, ``assistant_id``, ``folder_id``, ``sampling``)."""
        answer = self.chat.CreateConversation(chat_pb2.CreateConversationRequest(title=title, **fields))
        return answer.conversation

    def send_message(
        self,
        conversation_id: str,
        content: str,
        *,
        model: str = "",
        sampling: Optional[llm_pb2.SamplingParams] = None,
        parent_id: str = "",
    ) -> Reply:
        """Adds a user message (after ``parent_id``, else the active message) and streams
        the reply."""
        request = chat_pb2.SendMessageRequest(
            conversation_id=conversation_id, content=content, model=model, parent_id=parent_id, sampling=sampling
        )
        return Reply(self, conversation_id, self.chat.SendMessage(request))

    def regenerate(self, conversation_id: str, message_id: str, *, model: str = "") -> Reply:
        """Generates another reply to the user message before ``message_id`` (a branch)."""
        request = chat_pb2.RegenerateRequest(message_id=message_id, model=model)
        return Reply(self, conversation_id, self.chat.Regenerate(request))

    def edit_message(self, conversation_id: str, message_id: str, content: str) -> Reply:
        """Replaces a user message (a branch) and streams the new reply."""
        request = chat_pb2.EditMessageRequest(message_id=message_id, content=content)
        return Reply(self, conversation_id, self.chat.EditMessage(request))

    # Generation.

    def generate(
        self,
        model: str,
        messages: Iterable[llm_pb2.ChatMessage] = (),
        *,
        prompt: Optional[str] = None,
        sampling: Optional[llm_pb2.SamplingParams] = None,
    ) -> Generation:
        """Generates from chat ``messages`` (or a raw ``prompt``) with ``model``."""
        gid = _common.generation_id()
        if prompt is not None:
            request = llm_pb2.GenerateRequest(model=model, prompt=prompt, sampling=sampling, generation_id=gid)
        else:
            chat = llm_pb2.ChatInput(messages=list(messages))
            request = llm_pb2.GenerateRequest(model=model, chat=chat, sampling=sampling, generation_id=gid)
        return Generation(self, gid, self.llm.Generate(request))

    # Files.

    def upload(self, source: Source, *, name: Optional[str] = None, progress: Optional[ProgressFn] = None) -> str:
        """Uploads a file for an import in chunks (with its size and sha256, which the
        server checks), reporting bytes sent. Returns the upload's id."""
        content = Upload(source, name)
        report = progress or _common._ignore
        begun = self.archive.BeginUpload(
            chat_pb2.BeginUploadRequest(file_name=content.name, size_bytes=content.size, sha256=content.sha256())
        )
        offset = 0
        report(Progress("uploading", 0, content.size))
        for chunk in content.chunks(max(1, begun.max_chunk_bytes)):
            self.archive.AppendUploadChunk(
                chat_pb2.AppendUploadChunkRequest(upload_id=begun.upload_id, offset=offset, data=chunk)
            )
            offset += len(chunk)
            report(Progress("uploading", offset, content.size))
        self.archive.FinishUpload(chat_pb2.FinishUploadRequest(upload_id=begun.upload_id))
        return str(begun.upload_id)

    def ingest_document(
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
        upload_id = self.upload(source, name=name, progress=progress)
        report = progress or _common._ignore
        phases = {1: "parsing", 2: "chunking", 3: "embedding", 4: "indexing"}
        for event in self.knowledge.IngestDocument(
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

    def import_conversations(
        self,
        source: Source,
        *,
        format: str = "auto",
        name: Optional[str] = None,
        progress: Optional[ProgressFn] = None,
    ) -> chat_pb2.ImportReport:
        """Imports another chat product's export or an llmesh JSON export, reporting
        upload bytes and then conversations imported. ``format`` is ``"auto"`` (the
        server tells from the file), ``"chatgpt"``, ``"claude"``, ``"open-webui"``,
        ``"librechat"``, ``"typingmind"``, ``"generic"`` (JSON or JSONL of role/content
        messages) or ``"llmesh"``. Returns what was imported, what was skipped and why,
        the format read and what the file held that llmesh cannot (``left_out``)."""
        kind = _import_source(format)
        upload_id = self.upload(source, name=name, progress=progress)
        report = progress or _common._ignore
        for event in self.archive.ImportConversations(
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

    def export_conversations(
        self,
        path: Union[str, "os.PathLike[str]"],
        *,
        conversation_id: str = "",
        format: str = "json",
    ) -> int:
        """Writes one conversation (or all of the caller's) to ``path`` as ``json``
        (lossless, importable) or ``markdown``. Returns the bytes written; the file appears
        only when complete."""
        request = chat_pb2.ExportConversationsRequest(conversation_id=conversation_id, format=_export_format(format))
        saver = _common.Saver(path, None)
        try:
            for chunk in self.archive.ExportConversations(request):
                saver.write(chunk.chunk)
        except BaseException:
            saver.abandon()
            raise
        return saver.done()

    def write_file(
        self, workspace_path: str, source: Source, *, progress: Optional[ProgressFn] = None
    ) -> sandbox_pb2.WorkspaceFile:
        """Writes a file into the caller's sandbox workspace in chunks, reporting bytes
        sent; an older version stays until the last chunk lands."""
        content = Upload(source)
        report = progress or _common._ignore
        iterator = content.chunks(_common.WORKSPACE_CHUNK)
        offset = 0
        pending = next(iterator, b"")
        while True:
            following = next(iterator, None)
            last = following is None
            answer = self.sandbox.WriteFileChunk(
                sandbox_pb2.WriteFileChunkRequest(path=workspace_path, offset=offset, data=pending, last=last)
            )
            offset += len(pending)
            report(Progress("uploading", offset, content.size))
            if last:
                return answer.file
            pending = following or b""

    def read_file(
        self, workspace_path: str, path: Union[str, "os.PathLike[str]"], *, progress: Optional[ProgressFn] = None
    ) -> int:
        """Copies a workspace file to ``path``, reporting bytes received."""
        saver = _common.Saver(path, progress)
        try:
            for chunk in self.sandbox.ReadFile(sandbox_pb2.ReadFileRequest(path=workspace_path)):
                saver.write(chunk.chunk)
        except BaseException:
            saver.abandon()
            raise
        return saver.done()

    # Sandbox.

    def run_python(self, code: str, *, args: Iterable[str] = (), stdin: bytes = b"", persist: bool = False) -> Run:
        """Runs Python source with the default limits."""
        return self.run(sandbox_pb2.RunRequest(runtime="python", code=code, args=list(args), stdin=stdin, persist=persist))

    def run(self, request: sandbox_pb2.RunRequest) -> Run:
        """Runs code with every field of RunRequest (a WASI module, limits, persist)."""
        return Run(self.sandbox.Run(request))


def _import_source(name: str) -> "chat_pb2.ImportSource.ValueType":
    try:
        return _IMPORT_SOURCES[name]
    except KeyError:
        raise Error(grpc.StatusCode.INVALID_ARGUMENT, f"format must be one of {sorted(_IMPORT_SOURCES)}, not {name!r}") from None


def _export_format(name: str) -> "chat_pb2.ExportFormat.ValueType":
    try:
        return _EXPORT_FORMATS[name]
    except KeyError:
        raise Error(grpc.StatusCode.INVALID_ARGUMENT, f"format must be one of {sorted(_EXPORT_FORMATS)}, not {name!r}") from None


def connect(url: str, **options: Any) -> Client:
    """Connects to ``url`` (e.g. ``http://127.0.0.1:7700``); ``options`` are those of
    :class:`Client` (``api_key=``, or ``email=`` and ``password=``, ``timeout=`` …)."""
    return Client(url, **options)

