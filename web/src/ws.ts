// The /v1/ws WebSocket: several generations multiplexed by client id.
// Server messages: token {id,text,token_id,logprob}, done {id,finish_reason,usage,version?},
// error {id, error:{message} | message}; anything else (pings) is ignored.

import { adminKey } from "./api";

export interface Usage {
  prompt_tokens?: number;
  completion_tokens?: number;
  total_tokens?: number;
}

export interface Handlers {
  onToken(text: string, tokenId: number | undefined): void;
  onDone(finish: string, usage: Usage | null, version: string | undefined): void;
  onError(message: string): void;
}

export type GenerateRequest = Record<string, unknown> & { model: string };

let seq = 0;

export class GenerationSocket {
  private ws: WebSocket | null = null;
  private opening: Promise<WebSocket> | null = null;
  private live = new Map<string, Handlers>();

  private url(): string {
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    return `${proto}//${location.host}/v1/ws`;
  }

  private open(): Promise<WebSocket> {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) return Promise.resolve(this.ws);
    if (this.opening) return this.opening;
    this.opening = new Promise<WebSocket>((resolve, reject) => {
      const key = adminKey.get();
      const ws = key ? new WebSocket(this.url(), ["inferd", `bearer.${key}`]) : new WebSocket(this.url());
      ws.onopen = () => {
        this.ws = ws;
        this.opening = null;
        resolve(ws);
      };
      ws.onerror = () => {
        this.opening = null;
        reject(new Error("WebSocket connection failed"));
      };
      ws.onclose = () => {
        if (this.ws === ws) this.ws = null;
        // Every generation on a closed socket is over (the server cancels them).
        for (const [, h] of this.live) h.onError("connection closed");
        this.live.clear();
      };
      ws.onmessage = (ev) => this.dispatch(ev.data);
    });
    return this.opening;
  }

  private dispatch(data: unknown): void {
    if (typeof data !== "string") return;
    let msg: Record<string, unknown>;
    try {
      msg = JSON.parse(data);
    } catch {
      return;
    }
    const key = String(msg.id);
    const h = this.live.get(key);
    switch (msg.type) {
      case "token":
        h?.onToken(String(msg.text ?? ""), msg.token_id as number | undefined);
        break;
      case "done":
        this.live.delete(key);
        h?.onDone(String(msg.finish_reason ?? "unknown"), (msg.usage as Usage) ?? null, msg.version as string | undefined);
        break;
      case "error": {
        const e = msg.error as { message?: string } | string | undefined;
        const message = typeof e === "string" ? e : (e?.message ?? (msg.message as string) ?? "error");
        if (h) {
          this.live.delete(key);
          h.onError(message);
        } else {
          console.warn("inferd ws error", message);
        }
        break;
      }
      default:
        break; // heartbeats and future message types
    }
  }

  /** Start a generation; returns its client id (for cancel). */
  async generate(req: GenerateRequest, handlers: Handlers): Promise<string> {
    const ws = await this.open();
    const id = `ui-${Date.now().toString(36)}-${++seq}`;
    this.live.set(id, handlers);
    ws.send(JSON.stringify({ type: "generate", id, ...req }));
    return id;
  }

  cancel(id: string): void {
    if (this.ws && this.ws.readyState === WebSocket.OPEN && this.live.has(id)) {
      this.ws.send(JSON.stringify({ type: "cancel", id }));
    }
  }
}

export const socket = new GenerationSocket();
