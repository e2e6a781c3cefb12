// Screenshots into the artifact folder, checked by decoding the PNG in the
// browser itself (no image library): a blank or single-colour page fails.
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { assert } from "./harness.mjs";

export async function shoot(page, dir, name) {
  const png = await page.screenshot({ fullPage: true });
  const path = join(dir, `${name}.png`);
  writeFileSync(path, png);
  const stats = await pixelStats(page, png);
  console.log(`  screenshot ${path}: ${png.length} bytes, ${stats.width}x${stats.height}, ${stats.colors} colours, dominant ${(100 * stats.dominant).toFixed(1)}%`);
  assert(png.length > 10_000, `${name}.png is only ${png.length} bytes`);
  assert(stats.width >= 800 && stats.height >= 400, `${name}.png is ${stats.width}x${stats.height}`);
  assert(stats.colors >= 16, `${name}.png has only ${stats.colors} distinct colours (blank page?)`);
  assert(stats.dominant < 0.97, `${name}.png is ${(100 * stats.dominant).toFixed(1)}% one colour (blank page?)`);
  return path;
}

/** Decode `png` with the page's own image decoder: size, distinct colours, share of the commonest. */
async function pixelStats(page, png) {
  const b64 = png.toString("base64");
  return page.evaluate(async (data) => {
    // An <img> (the console's CSP allows data: images, not data: fetches).
    const bmp = new Image();
    bmp.src = `data:image/png;base64,${data}`;
    await bmp.decode();
    const canvas = new OffscreenCanvas(bmp.width, bmp.height);
    const ctx = canvas.getContext("2d");
    ctx.drawImage(bmp, 0, 0);
    const px = ctx.getImageData(0, 0, bmp.width, bmp.height).data;
    const counts = new Map();
    for (let i = 0; i < px.length; i += 4) {
      const k = (px[i] << 16) | (px[i + 1] << 8) | px[i + 2];
      counts.set(k, (counts.get(k) ?? 0) + 1);
    }
    const total = px.length / 4;
    let top = 0;
    for (const n of counts.values()) top = Math.max(top, n);
    return { width: bmp.width, height: bmp.height, colors: counts.size, dominant: top / total };
  }, b64);
}
