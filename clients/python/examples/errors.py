"""What a failed call looks like: its code, the server's message and the request id.

    LLMESH_API_KEY=lmk_... python examples/errors.py
"""

import os

import grpc

import llmesh
from llmesh.chat.v1 import chat_pb2

client = llmesh.connect(os.environ.get("LLMESH_URL", "http://127.0.0.1:7700"), api_key=os.environ["LLMESH_API_KEY"])
# [readme:errors]
try:
    client.chat.GetConversation(chat_pb2.GetConversationRequest(id="0190f2a4-0000-7000-8000-000000000000"))
except llmesh.Error as e:
    if e.code() != grpc.StatusCode.NOT_FOUND:
        raise
    # One readable sentence: message, code and the request id to quote in a report.
    print(f"not there: {e}")
    print(f"request id: {e.request_id}")
# [/readme]
client.close()
