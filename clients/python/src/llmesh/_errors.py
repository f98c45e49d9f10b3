"""One error type for every failed call: the gRPC code, the server's message and the id
the server logged the request under."""

from __future__ import annotations

from typing import Iterable, Optional, Sequence, Tuple, Union

import grpc

REQUEST_ID_HEADER = "x-request-id"

_Metadata = Sequence[Tuple[str, Union[str, bytes]]]

_EMPTY_MESSAGES = {
    grpc.StatusCode.UNAVAILABLE: "the server cannot be reached; check the URL and that llmesh runs",
    grpc.StatusCode.DEADLINE_EXCEEDED: "the call ran past its deadline",
    grpc.StatusCode.UNAUTHENTICATED: "sign in again: the credentials were refused",
    grpc.StatusCode.UNIMPLEMENTED: "the server does not offer this call (an older llmesh, or a proxy that does not route it)",
}


class Error(grpc.RpcError):
    """A call that failed, as the server (or the SDK) saw it.

    ``str(error)`` is one sentence: the message, the code and the request id to quote when
    asking an operator, e.g. ``no conversation 0190… (NOT_FOUND, request id 7f3a…)``.
    It is a ``grpc.RpcError`` too, with the usual ``code()`` and ``details()``.
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        request_id: Optional[str] = None,
        retry_after: Optional[float] = None,
    ) -> None:
        super().__init__(message)
        self._code = code
        self.message = message or _EMPTY_MESSAGES.get(code, "the call failed")
        self.request_id = request_id
        #: Seconds the server asked the caller to wait before trying again.
        self.retry_after = retry_after

    @classmethod
    def from_rpc(cls, error: grpc.RpcError) -> "Error":
        """Reads the code, message, request id and retry hint of a failed call."""
        if isinstance(error, Error):
            return error
        code = _call(error, "code")
        details = _call(error, "details")
        metadata: list[tuple[str, Union[str, bytes]]] = []
        for part in ("initial_metadata", "trailing_metadata"):
            found = _call(error, part)
            if isinstance(found, (tuple, list)):
                metadata.extend((str(m[0]), m[1]) for m in found)
            elif isinstance(found, Iterable):  # grpc.aio.Metadata
                metadata.extend((str(k), v) for k, v in found)
        if not isinstance(code, grpc.StatusCode):
            code = grpc.StatusCode.UNKNOWN
        return cls(code, str(details or ""), *_hints(metadata))

    def code(self) -> grpc.StatusCode:
        """The gRPC status code."""
        return self._code

    def details(self) -> str:
        """The server's message (as ``grpc.RpcError`` names it)."""
        return self.message

    @property
    def code_name(self) -> str:
        """The code as gRPC spells it, e.g. ``NOT_FOUND``."""
        return str(self._code.name)

    def __str__(self) -> str:
        text = f"{self.message} ({self.code_name}"
        if self.request_id:
            text += f", request id {self.request_id}"
        if self.retry_after is not None:
            text += f", retry after {self.retry_after:g} s"
        return text + ")"

    def __repr__(self) -> str:
        return f"llmesh.Error({self.code_name}, {self.message!r}, request_id={self.request_id!r})"


def _call(error: object, name: str) -> object:
    method = getattr(error, name, None)
    if not callable(method):
        return None
    try:
        return method()
    except Exception:  # a call object that cannot answer has nothing to say
        return None


def _hints(metadata: _Metadata) -> tuple[Optional[str], Optional[float]]:
    def text(key: str) -> Optional[str]:
        for k, v in metadata:
            if k == key:
                return v.decode() if isinstance(v, bytes) else v
        return None

    retry_after: Optional[float] = None
    ms, secs = text("retry-after-ms"), text("retry-after")
    if ms and ms.isdigit():
        retry_after = int(ms) / 1000
    elif secs and secs.isdigit():
        retry_after = float(secs)
    return text(REQUEST_ID_HEADER), retry_after
