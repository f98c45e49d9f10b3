// Files go to the server through chat's chunked uploads (browsers cannot stream a request
// body over grpc-web): begin with the size and sha256, append pieces, finish. Imports and
// knowledge documents both start this way.

import { api } from "./api";

/** Used only if the server does not say how large a piece may be (it always should). */
const DEFAULT_CHUNK = 1 << 20;

export async function sha256Hex(data: Uint8Array<ArrayBuffer>): Promise<string> {
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", data));
  return Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** Uploads `data` as `name`; resolves to the finished upload's id. */
export async function uploadBytes(
  name: string,
  data: Uint8Array<ArrayBuffer>,
  options: { signal?: AbortSignal; onHashed?: () => void; onSent?: (bytes: number) => void } = {},
): Promise<string> {
  const { signal } = options;
  const sha256 = await sha256Hex(data);
  options.onHashed?.();
  const begun = await api.archive.beginUpload({ fileName: name, sizeBytes: BigInt(data.length), sha256 }, { signal });
  const chunk = begun.maxChunkBytes > 0 ? begun.maxChunkBytes : DEFAULT_CHUNK;
  for (let offset = 0; offset < data.length; ) {
    const piece = data.subarray(offset, Math.min(offset + chunk, data.length));
    const res = await api.archive.appendUploadChunk({ uploadId: begun.uploadId, offset: BigInt(offset), data: piece }, { signal });
    offset += piece.length;
    options.onSent?.(Number(res.receivedBytes) || offset);
  }
  await api.archive.finishUpload({ uploadId: begun.uploadId }, { signal });
  return begun.uploadId;
}
