// The campaign's only source of randomness: a seeded 32-bit PRNG (mulberry32)
// and the choice helpers built on it. Every random decision of the driver
// (child seeds, rlimits) and of a child (which call, which arguments, which
// hazard) comes from one of these streams, so a printed seed replays the
// same sequence of calls. No dependency: the generator is a few lines, and a
// library's algorithm could change under a version bump and break replays.

/** A u32 mixing function (splitmix32's finalizer): derives independent seeds from (seed, index). */
export function mix32(a: number, b = 0): number {
  let z = (a + Math.imul(b + 1, 0x9e3779b9)) >>> 0;
  z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
  z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
  return (z ^ (z >>> 16)) >>> 0;
}

export class Rng {
  #s: number;

  constructor(readonly seed: number) {
    if (!Number.isInteger(seed) || seed < 0 || seed > 0xffffffff) throw new TypeError(`seed must be a u32, got ${seed}`);
    this.#s = seed >>> 0;
  }

  /** mulberry32: a uniform u32. Period 2^32, plenty for 10^5 calls per stream. */
  u32(): number {
    this.#s = (this.#s + 0x6d2b79f5) >>> 0;
    let t = this.#s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  }

  /** A float in [0, 1). */
  float(): number {
    return this.u32() / 2 ** 32;
  }

  /** An integer in [0, n) (n up to 2^53; above 2^32 two draws are combined). */
  int(n: number): number {
    if (n <= 0) return 0;
    if (n <= 2 ** 32) return Math.floor(this.float() * n);
    return Math.floor(((this.u32() * 2 ** 21 + (this.u32() >>> 11)) / 2 ** 53) * n);
  }

  /** An integer in [lo, hi]. */
  range(lo: number, hi: number): number {
    return lo + this.int(hi - lo + 1);
  }

  /** True with probability p. */
  chance(p: number): boolean {
    return this.float() < p;
  }

  pick<T>(items: readonly T[]): T {
    if (items.length === 0) throw new RangeError('pick from an empty list');
    return items[this.int(items.length)] as T;
  }

  /** Picks by weight: entries are [weight, value]. */
  weighted<T>(entries: readonly (readonly [number, T])[]): T {
    const total = entries.reduce((s, [w]) => s + w, 0);
    let x = this.float() * total;
    for (const [w, v] of entries) {
      if ((x -= w) < 0) return v;
    }
    return (entries[entries.length - 1] as readonly [number, T])[1];
  }

  /** A uniform u64 as a bigint. */
  u64(): bigint {
    return (BigInt(this.u32()) << 32n) | BigInt(this.u32());
  }

  /** A derived, independent stream (for a worker thread or a sub-generator). */
  fork(salt: number): Rng {
    return new Rng(mix32(this.u32(), salt));
  }
}
