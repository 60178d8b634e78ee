// The VM's memory attributes per gfn, as last accepted by the kernel.
// KVM has no ioctl to read attributes back, so this shadow is the only way
// to answer "is this page private?"; it is written only after
// KVM_SET_MEMORY_ATTRIBUTES succeeded, which overwrites all attributes of
// its range (a gfn absent from the map has attributes 0, i.e. shared).
import { IntervalMap } from './interval-map.js';

export interface AttributeRange {
  gfn: number;
  npages: number;
  attributes: number;
}

export class AttributeMap {
  private readonly map = new IntervalMap<number>();

  get(gfn: number): number {
    const f = this.map.floor(gfn);
    return f !== undefined && f.end > gfn ? f.value : 0;
  }

  /** Sets [start, end) to `attrs`, splitting and merging neighbours. */
  set(start: number, end: number, attrs: number): void {
    // Cut every overlapping range back to its parts outside [start, end);
    // one lookup per range and no intermediate array (this is on every
    // conversion's path).
    for (let o = this.map.firstOverlap(start, end); o !== undefined; o = this.map.firstOverlap(start, end)) {
      const { start: os, end: oe, value } = o;
      this.map.delete(os);
      if (os < start) this.map.insert(os, start, value);
      if (oe > end) this.map.insert(end, oe, value);
    }
    if (attrs === 0) return;
    let s = start;
    let e = end;
    const left = this.map.floor(start - 1);
    if (left !== undefined && left.end === start && left.value === attrs) {
      s = left.start;
      this.map.delete(left.start);
    }
    const right = this.map.floor(end);
    if (right !== undefined && right.start === end && right.value === attrs) {
      e = right.end;
      this.map.delete(right.start);
    }
    this.map.insert(s, e, attrs);
  }

  /** Ranges with non-zero attributes, in gfn order. */
  ranges(): AttributeRange[] {
    return this.map.entries().map((i) => ({ gfn: i.start, npages: i.end - i.start, attributes: i.value }));
  }

  clear(): void {
    this.map.clear();
  }
}
