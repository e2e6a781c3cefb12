// The console is served by inferd itself at /ui (assets embedded in the
// binary by src/ui.rs), so every URL is relative to /ui/ and nothing is
// fetched from a CDN: the built dist/ works offline.
import { defineConfig } from "vite";

export default defineConfig({
  base: "/ui/",
  build: {
    outDir: "dist",
    emptyOutDir: true,
    assetsDir: "assets",
    sourcemap: false,
    // One small bundle; no dynamic imports, no preload polyfill requests.
    modulePreload: false,
    chunkSizeWarningLimit: 400,
  },
  server: {
    // `npm run dev` proxies the API to a server on :8080.
    proxy: {
      "/v1": { target: "http://127.0.0.1:8080", ws: true },
      "/admin": "http://127.0.0.1:8080",
      "/stats": "http://127.0.0.1:8080",
    },
  },
});
