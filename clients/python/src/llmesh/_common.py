"""What the sync and the asyncio clients share: addresses, retry and deadline policy,
token lifetimes, uploads and progress."""

from __future__ import annotations

import email.utils
import hashlib
import json
import os
import time
from dataclasses import dataclass
from typing import BinaryIO, Callable, Iterator, Optional, Sequence, Tuple, Union

import grpc

from llmesh._errors import Error
from llmesh._methods import RETRY_SAFE, STREAMING
from llmesh.auth.v1 import auth_pb2
from llmesh.llm.v1 import llm_pb2

#: The deadline of calls answered with one message, unless the call sets ``timeout``.
DEFAULT_TIMEOUT = 30.0
#: The deadline of streamed calls (a reply, an import, a run), unless set.
DEFAULT_STREAM_TIMEOUT = 600.0
#: The largest message the clients accept.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
#: Workspace files go up in chunks below every server's ``sandbox.max_chunk_bytes``.
WORKSPACE_CHUNK = 256 * 1024

API_KEY_HEADER = "x-api-key"

Metadata = Sequence[Tuple[str, Union[str, bytes]]]
#: A file to upload: a path, bytes, or an open binary file.
Source = Union[str, "os.PathLike[str]", bytes, BinaryIO]


def target(url: str) -> tuple[str, bool]:
    """Splits ``http://host:port`` or ``https://host`` into a gRPC target and whether TLS
    is used."""
    for scheme, secure, port in (("http://", False, 80), ("https://", True, 443)):
        if url.startswith(scheme):
            host = url[len(scheme) :].rstrip("/")
            if not host or "/" in host:
                break
            if ":" not in host.rsplit("]", 1)[-1]:
                host = f"{host}:{port}"
            return host, secure
    raise Error(
        grpc.StatusCode.INVALID_ARGUMENT,
        f"{url!r} is not a URL like http://127.0.0.1:7700 or https://llmesh.example.com",
    )


def channel_options(retries: int) -> list[tuple[str, object]]:
    """Channel options: message sizes, keepalive, and a service config that retries the
    unary calls proto/ marks safe (grpc-core backs off with jitter and never retries once
    an answer has begun)."""
    names = []
    for path in sorted(RETRY_SAFE - STREAMING):
        service, method = path.lstrip("/").split("/")
        names.append({"service": service, "method": method})
    config = {
        "methodConfig": [
            {
                "name": names,
                "retryPolicy": {
                    "maxAttempts": max(2, min(retries, 5)),
                    "initialBackoff": "0.05s",
                    "maxBackoff": "2s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    }
    return [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.enable_retries", 1 if retries > 1 else 0),
        ("grpc.service_config", json.dumps(config)),
    ]


def deadline_for(method: str, given: Optional[float], timeout: float, stream_timeout: Optional[float]) -> Optional[float]:
    """The timeout a call goes out with: its own, else the default for its kind."""
    if given is not None:
        return given
    return stream_timeout if method in STREAMING else timeout


def with_header(metadata: Optional[Metadata], key: str, value: str) -> list[tuple[str, Union[str, bytes]]]:
    out = [(k, v) for k, v in (metadata or ()) if k != key]
    out.append((key, value))
    return out


@dataclass
class Access:
    """An access token and when to renew it (``time.monotonic()`` seconds)."""

    token: str
    renew_at: float


def access_of(pair: auth_pb2.TokenPair, metadata: Optional[Metadata]) -> Access:
    """When to renew a token: a minute before it expires (half-way for short ones),
    measured on the server's clock (its ``date`` header) when it sent one."""
    now = time.time()
    for key, value in metadata or ():
        if key == "date":
            try:
                now = email.utils.parsedate_to_datetime(str(value)).timestamp()
            except (TypeError, ValueError):
                pass
    expires = pair.access_expires_at.seconds + pair.access_expires_at.nanos / 1e9
    left = max(0.0, expires - now)
    margin = min(60.0, left / 2)
    return Access(pair.access_token, time.monotonic() + left - margin)


def session_ended() -> Error:
    return Error(
        grpc.StatusCode.UNAUTHENTICATED,
        "the session has ended (signed out, revoked by an admin or a password change, or expired): sign in again",
    )


@dataclass(frozen=True)
class Progress:
    """How far a long transfer has come: ``phase`` is ``uploading`` (bytes), ``importing``
    (conversations) or ``downloading`` (bytes); ``total`` is 0 when unknown."""

    phase: str
    done: int
    total: int


ProgressFn = Callable[[Progress], None]


def _ignore(_: Progress) -> None:
    pass


class Upload:
    """Content to upload, readable more than once (size and sha256 first, then chunks)."""

    def __init__(self, source: Source, name: Optional[str] = None) -> None:
        self._path: Optional[str] = None
        self._data: Optional[bytes] = None
        if isinstance(source, bytes):
            self._data = source
            self.name = name or "upload"
        elif isinstance(source, (str, os.PathLike)):
            self._path = os.fspath(source)
            self.name = name or os.path.basename(self._path)
        else:
            self._data = source.read()
            self.name = name or os.path.basename(str(getattr(source, "name", "upload")))
        self.size = len(self._data) if self._data is not None else self._stat()

    def _stat(self) -> int:
        assert self._path is not None
        try:
            return os.path.getsize(self._path)
        except OSError as e:
            raise Error(grpc.StatusCode.INVALID_ARGUMENT, f"{self._path}: {e.strerror}") from e

    def chunks(self, size: int) -> Iterator[bytes]:
        """The content in chunks of at most ``size`` bytes."""
        if self._data is not None:
            for at in range(0, len(self._data), size):
                yield self._data[at : at + size]
            return
        assert self._path is not None
        try:
            with open(self._path, "rb") as f:
                while chunk := f.read(size):
                    yield chunk
        except OSError as e:
            raise Error(grpc.StatusCode.INVALID_ARGUMENT, f"{self._path}: {e.strerror}") from e

    def sha256(self) -> str:
        h = hashlib.sha256()
        for chunk in self.chunks(1 << 20):
            h.update(chunk)
        return h.hexdigest()


class Saver:
    """Writes chunks to a temporary file beside ``path``, moved into place by ``done()``,
    so a broken stream never leaves a partial file under the name."""

    def __init__(self, path: Union[str, "os.PathLike[str]"], progress: Optional[ProgressFn]) -> None:
        self.path = os.fspath(path)
        self.partial = self.path + ".partial"
        self.file = open(self.partial, "wb")
        self.written = 0
        self.progress = progress or _ignore

    def write(self, chunk: bytes) -> None:
        self.file.write(chunk)
        self.written += len(chunk)
        self.progress(Progress("downloading", self.written, 0))

    def done(self) -> int:
        self.file.close()
        os.replace(self.partial, self.path)
        return self.written

    def abandon(self) -> None:
        self.file.close()
        try:
            os.remove(self.partial)
        except OSError:
            pass


def system(content: str) -> llm_pb2.ChatMessage:
    """A system message for ``generate``."""
    return llm_pb2.ChatMessage(role=llm_pb2.CHAT_ROLE_SYSTEM, content=content)


def user(content: str) -> llm_pb2.ChatMessage:
    """A user message for ``generate``."""
    return llm_pb2.ChatMessage(role=llm_pb2.CHAT_ROLE_USER, content=content)


def assistant(content: str) -> llm_pb2.ChatMessage:
    """An assistant message (an earlier turn) for ``generate``."""
    return llm_pb2.ChatMessage(role=llm_pb2.CHAT_ROLE_ASSISTANT, content=content)


def join_tool_call(calls: list[llm_pb2.ToolCall], piece: llm_pb2.ToolCallDelta) -> None:
    """Adds a streamed piece to the tool calls of a generation (llm numbers calls from 0
    and sends at most 64)."""
    if piece.index >= 64:
        return
    while len(calls) <= piece.index:
        calls.append(llm_pb2.ToolCall())
    call = calls[piece.index]
    if piece.id:
        call.id = piece.id
    if piece.name:
        call.name = piece.name
    call.arguments_json += piece.arguments


def generation_id() -> str:
    return os.urandom(16).hex()
