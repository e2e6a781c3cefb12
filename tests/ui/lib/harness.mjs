// A minimal step runner: each step passes or fails on its own (later steps
// still run), and the summary line is "N passed, N failed".

export function harness() {
  const results = [];
  return {
    /** Run one step; returns whether it passed. */
    async step(name, fn, { timeoutMs = 120_000 } = {}) {
      const t0 = Date.now();
      let timer;
      try {
        await Promise.race([
          fn(),
          new Promise((_, reject) => {
            timer = setTimeout(() => reject(new Error(`step timed out after ${timeoutMs} ms`)), timeoutMs);
          }),
        ]);
        results.push({ name, ok: true });
        console.log(`ok - ${name} (${Date.now() - t0} ms)`);
        return true;
      } catch (e) {
        results.push({ name, ok: false, error: e });
        console.log(`not ok - ${name} (${Date.now() - t0} ms)\n  ${String(e?.stack ?? e).split("\n").join("\n  ")}`);
        return false;
      } finally {
        clearTimeout(timer);
      }
    },
    summary() {
      const passed = results.filter((r) => r.ok).length;
      const failed = results.length - passed;
      console.log(`${passed} passed, ${failed} failed`);
      return failed;
    },
  };
}

export function assert(cond, message) {
  if (!cond) throw new Error(`assertion failed: ${message}`);
}

/** Poll `fn` until it returns a truthy value; returns it, or throws after `timeoutMs`. */
export async function until(what, fn, { timeoutMs = 15_000, everyMs = 100 } = {}) {
  const end = Date.now() + timeoutMs;
  let last;
  while (Date.now() < end) {
    try {
      last = await fn();
      if (last) return last;
    } catch (e) {
      last = e;
    }
    await new Promise((r) => setTimeout(r, everyMs));
  }
  throw new Error(`timed out waiting for ${what} (last: ${last instanceof Error ? last.message : JSON.stringify(last)})`);
}
