// The playground's state kept in the browser (localStorage): the conversation
// and the sampling settings. Pure data + persistence; no DOM.

export type Mode = "chat" | "completion";

export interface MessageStats {
  ttft?: number; // seconds from send to the first token
  tokensPerSec?: number; // decode rate after the first token
  tokens?: number; // completion tokens
  promptTokens?: number;
  finish?: string; // stop | length | cancelled | error
  version?: string;
  versionSource?: "server" | "active";
}

export interface Message {
  role: "system" | "user" | "assistant" | "prompt" | "completion";
  content: string;
  stats?: MessageStats;
  error?: string;
}

export interface Settings {
  model: string;
  version: string; // "" = whatever is active
  mode: Mode;
  system: string;
  temperature: number;
  top_p: number;
  top_k: number;
  max_tokens: number;
  seed: string; // "" = random
  stop: string; // one stop sequence per line
}

export const DEFAULT_SETTINGS: Settings = {
  model: "",
  version: "",
  mode: "chat",
  system: "",
  temperature: 0.7,
  top_p: 0.95,
  top_k: 0,
  max_tokens: 128,
  seed: "",
  stop: "",
};

const CONV_KEY = "inferd.conversation";
const SETTINGS_KEY = "inferd.settings";

function load<T>(key: string, fallback: T): T {
  try {
    const raw = localStorage.getItem(key);
    return raw ? (JSON.parse(raw) as T) : fallback;
  } catch {
    return fallback;
  }
}

export const store = {
  messages: load<Message[]>(CONV_KEY, []),
  settings: { ...DEFAULT_SETTINGS, ...load<Partial<Settings>>(SETTINGS_KEY, {}) },
  save(): void {
    localStorage.setItem(CONV_KEY, JSON.stringify(this.messages));
    localStorage.setItem(SETTINGS_KEY, JSON.stringify(this.settings));
  },
  clear(): void {
    this.messages = [];
    this.save();
  },
};

/** The sampling fields of a generate message, from the settings. */
export function samplingFields(s: Settings): Record<string, unknown> {
  const out: Record<string, unknown> = {
    max_tokens: s.max_tokens,
    temperature: s.temperature,
    top_p: s.top_p,
  };
  if (s.top_k > 0) out.top_k = s.top_k;
  if (s.seed.trim() !== "") out.seed = Number(s.seed);
  const stop = s.stop
    .split("\n")
    .map((x) => x.replace(/\\n/g, "\n"))
    .filter((x) => x.length > 0);
  if (stop.length) out.stop = stop;
  return out;
}

/** The chat history to send: the system prompt, finished turns, then the new user turn. */
export function chatMessages(s: Settings, history: Message[], user: string): { role: string; content: string }[] {
  const msgs: { role: string; content: string }[] = [];
  if (s.system.trim()) msgs.push({ role: "system", content: s.system });
  for (const m of history) {
    if ((m.role === "user" || m.role === "assistant") && !m.error && m.content) msgs.push({ role: m.role, content: m.content });
  }
  msgs.push({ role: "user", content: user });
  return msgs;
}
