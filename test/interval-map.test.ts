// Unit tests of the two data structures the rules rest on: IntervalMap
// (lib/model/interval-map.ts, the index of memslots and guest_memfd bindings)
// and AttributeMap (lib/model/attributes.ts, the shadow of memory attributes).
// Each is compared, operation by operation, with a naive model driven by a
// fixed-seed PRNG, so a failure replays exactly.
import { describe, expect, test } from 'vitest';
import { AttributeMap } from '../lib/model/attributes.js';
import { type Interval, IntervalMap } from '../lib/model/interval-map.js';

/** mulberry32: a small deterministic PRNG returning [0, 1). */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

type Plain = { start: number; end: number; value: string };
const plain = (i: Interval<string> | undefined): Plain | undefined => (i === undefined ? undefined : { start: i.start, end: i.end, value: i.value });

describe('IntervalMap', () => {
  function sample(): IntervalMap<string> {
    const m = new IntervalMap<string>();
    m.insert(10, 20, 'a');
    m.insert(30, 31, 'b');
    m.insert(40, 60, 'c');
    return m;
  }

  test('insert keeps intervals in start order; size counts them', () => {
    const m = sample();
    expect(m.size).toBe(3);
    expect(m.entries().map(plain)).toEqual([
      { start: 10, end: 20, value: 'a' },
      { start: 30, end: 31, value: 'b' },
      { start: 40, end: 60, value: 'c' },
    ]);
  });

  test('floor: the greatest start <= key', () => {
    const m = sample();
    expect(m.floor(9)).toBeUndefined();
    expect(m.floor(10)?.value).toBe('a');
    expect(m.floor(25)?.value).toBe('a');
    expect(m.floor(30)?.value).toBe('b');
    expect(m.floor(1e15)?.value).toBe('c');
  });

  test('higher: the smallest start > key', () => {
    const m = sample();
    expect(m.higher(0)?.value).toBe('a');
    expect(m.higher(10)?.value).toBe('b');
    expect(m.higher(39)?.value).toBe('c');
    expect(m.higher(40)).toBeUndefined();
  });

  test('firstOverlap: the lowest interval sharing a point with [start, end)', () => {
    const m = sample();
    expect(m.firstOverlap(0, 10)).toBeUndefined();
    expect(m.firstOverlap(0, 11)?.value).toBe('a');
    expect(m.firstOverlap(19, 20)?.value).toBe('a');
    expect(m.firstOverlap(20, 30)).toBeUndefined();
    expect(m.firstOverlap(20, 31)?.value).toBe('b');
    expect(m.firstOverlap(15, 45)?.value).toBe('a');
    expect(m.firstOverlap(59, 100)?.value).toBe('c');
    expect(m.firstOverlap(60, 100)).toBeUndefined();
  });

  test('overlapping: every interval sharing a point, in order', () => {
    const m = sample();
    expect(m.overlapping(0, 100).map((i) => i.value)).toEqual(['a', 'b', 'c']);
    expect(m.overlapping(19, 41).map((i) => i.value)).toEqual(['a', 'b', 'c']);
    expect(m.overlapping(20, 40).map((i) => i.value)).toEqual(['b']);
    expect(m.overlapping(31, 40)).toEqual([]);
    expect(m.overlapping(50, 51).map((i) => i.value)).toEqual(['c']);
  });

  test('delete by start; unknown starts are reported false', () => {
    const m = sample();
    expect(m.delete(15)).toBe(false);
    expect(m.delete(30)).toBe(true);
    expect(m.delete(30)).toBe(false);
    expect(m.size).toBe(2);
    expect(m.entries().map((i) => i.value)).toEqual(['a', 'c']);
    m.clear();
    expect(m.size).toBe(0);
    expect(m.entries()).toEqual([]);
    expect(m.floor(100)).toBeUndefined();
  });

  test('page numbers up to 2^52 are exact', () => {
    const m = new IntervalMap<string>();
    const top = 2 ** 52;
    m.insert(top - 2, top, 'top');
    m.insert(0, 1, 'zero');
    expect(m.floor(top - 1)?.value).toBe('top');
    expect(m.firstOverlap(top - 1, top)?.value).toBe('top');
    expect(m.firstOverlap(top - 3, top - 2)).toBeUndefined();
  });

  test('matches a naive sorted-array model over 5,000 random operations (seed 0x6b766d)', () => {
    const rand = prng(0x6b766d);
    const int = (n: number) => Math.floor(rand() * n);
    const m = new IntervalMap<string>();
    let model: Plain[] = [];
    const overlaps = (s: number, e: number) => model.filter((i) => i.start < e && i.end > s);
    let inserted = 0;
    let deleted = 0;
    for (let step = 0; step < 5000; step++) {
      const op = int(10);
      const s = int(2000);
      const e = s + 1 + int(op < 4 ? 40 : 200);
      const ctx = `step ${step}, op ${op}, [${s}, ${e})`;
      if (op < 4) {
        // insert, if free (the map requires disjoint intervals)
        const hit = overlaps(s, e)[0];
        expect(plain(m.firstOverlap(s, e)), ctx).toEqual(hit);
        if (hit === undefined) {
          m.insert(s, e, `v${step}`);
          model.push({ start: s, end: e, value: `v${step}` });
          model.sort((a, b) => a.start - b.start);
          inserted++;
        }
      } else if (op < 6) {
        // delete an existing start, or a random key
        const key = model.length > 0 && rand() < 0.8 ? model[int(model.length)].start : s;
        const had = model.some((i) => i.start === key);
        expect(m.delete(key), ctx).toBe(had);
        model = model.filter((i) => i.start !== key);
        if (had) deleted++;
      } else if (op === 6) {
        expect(plain(m.floor(s)), ctx).toEqual(model.filter((i) => i.start <= s).at(-1));
        expect(plain(m.higher(s)), ctx).toEqual(model.find((i) => i.start > s));
      } else if (op === 7) {
        expect(plain(m.firstOverlap(s, e)), ctx).toEqual(overlaps(s, e)[0]);
      } else if (op === 8) {
        expect(m.overlapping(s, e).map(plain), ctx).toEqual(overlaps(s, e));
      } else {
        expect(m.entries().map(plain), ctx).toEqual(model);
        expect(m.size, ctx).toBe(model.length);
      }
    }
    expect(m.entries().map(plain)).toEqual(model);
    // The run exercised both paths a fair number of times.
    expect(inserted).toBeGreaterThan(200);
    expect(deleted).toBeGreaterThan(200);
  });
});

describe('AttributeMap', () => {
  test('set, overwrite, split and merge on a small example', () => {
    const a = new AttributeMap();
    a.set(10, 20, 8);
    expect(a.ranges()).toEqual([{ gfn: 10, npages: 10, attributes: 8 }]);
    a.set(20, 25, 8);
    a.set(5, 10, 8);
    expect(a.ranges()).toEqual([{ gfn: 5, npages: 20, attributes: 8 }]);
    a.set(12, 14, 0);
    expect(a.ranges()).toEqual([
      { gfn: 5, npages: 7, attributes: 8 },
      { gfn: 14, npages: 11, attributes: 8 },
    ]);
    a.set(12, 14, 8);
    expect(a.ranges()).toEqual([{ gfn: 5, npages: 20, attributes: 8 }]);
    a.set(15, 16, 9);
    expect(a.ranges()).toEqual([
      { gfn: 5, npages: 10, attributes: 8 },
      { gfn: 15, npages: 1, attributes: 9 },
      { gfn: 16, npages: 9, attributes: 8 },
    ]);
    expect([a.get(4), a.get(5), a.get(15), a.get(24), a.get(25)]).toEqual([0, 8, 9, 8, 0]);
    a.set(0, 100, 0);
    expect(a.ranges()).toEqual([]);
    a.set(0, 1, 8);
    a.clear();
    expect(a.ranges()).toEqual([]);
  });

  test('matches a naive per-page model over 3,000 random sets (seed 0x617474)', () => {
    const rand = prng(0x617474);
    const int = (n: number) => Math.floor(rand() * n);
    const PAGES = 256;
    const values = [0, 8, 8, 8, 1, 9];
    const a = new AttributeMap();
    const model = new Array<number>(PAGES).fill(0);
    // Maximal runs of equal non-zero attributes: what ranges() must return.
    const runs = () => {
      const out: { gfn: number; npages: number; attributes: number }[] = [];
      for (let p = 0; p < PAGES; p++) {
        if (model[p] === 0) continue;
        const last = out.at(-1);
        if (last !== undefined && last.gfn + last.npages === p && last.attributes === model[p]) last.npages++;
        else out.push({ gfn: p, npages: 1, attributes: model[p] });
      }
      return out;
    };
    for (let step = 0; step < 3000; step++) {
      const s = int(PAGES);
      const e = Math.min(PAGES, s + 1 + int(rand() < 0.8 ? 16 : 128));
      const v = values[int(values.length)];
      a.set(s, e, v);
      model.fill(v, s, e);
      const ctx = `step ${step}: set [${s}, ${e}) = ${v}`;
      expect(a.ranges(), ctx).toEqual(runs());
      const p = int(PAGES);
      expect(a.get(p), `${ctx}; get(${p})`).toBe(model[p]);
    }
    for (let p = 0; p < PAGES; p++) expect(a.get(p)).toBe(model[p]);
  });
});
