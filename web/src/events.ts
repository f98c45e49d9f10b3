// Lets the chat view tell the sidebar that a conversation changed or went away.

import type { chat } from "@llmesh/client";

type Listener = (change: { conversation?: chat.Conversation; removedId?: string; reload?: boolean }) => void;
const listeners = new Set<Listener>();

export function onConversationChange(l: Listener): () => void {
  listeners.add(l);
  return () => listeners.delete(l);
}

export function conversationChanged(conversation: chat.Conversation): void {
  for (const l of listeners) l({ conversation });
}

export function conversationRemoved(removedId: string): void {
  for (const l of listeners) l({ removedId });
}

/** Something changed many conversations (an import): reload the list. */
export function conversationsReload(): void {
  for (const l of listeners) l({ reload: true });
}
