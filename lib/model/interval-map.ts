// A set of disjoint half-open intervals [start, end) over page numbers, each
// carrying a value, kept in a treap (a randomized balanced search tree) so
// that find/insert/delete stay O(log n) at the kernel's 32,764 memslots.
// Page numbers (gfns, file page offsets) are below 2^52, so plain numbers
// are exact and much cheaper than bigints here.

interface Node<V> {
  start: number;
  end: number;
  value: V;
  prio: number;
  left: Node<V> | null;
  right: Node<V> | null;
}

export interface Interval<V> {
  readonly start: number;
  readonly end: number;
  readonly value: V;
}

export class IntervalMap<V> {
  private root: Node<V> | null = null;
  private count = 0;

  get size(): number {
    return this.count;
  }

  // Every operation walks the tree once, iteratively, and allocates nothing
  // but the new node: at 32,764 memslots the cost is the walk's cache
  // misses, and recursion with [left, right] pairs added garbage collection
  // on top (docs/BENCHMARKS.md, memslot scale).

  /** Inserts [start, end). The caller guarantees it overlaps nothing. */
  insert(start: number, end: number, value: V): void {
    const n: Node<V> = { start, end, value, prio: Math.random(), left: null, right: null };
    // Down to where the new node's priority puts it, then split what hangs
    // there around it: starts below go left, the rest right.
    let parent: Node<V> | null = null;
    let t = this.root;
    while (t !== null && t.prio >= n.prio) {
      parent = t;
      t = start < t.start ? t.left : t.right;
    }
    this.splitInto(t, n);
    if (parent === null) this.root = n;
    else if (start < parent.start) parent.left = n;
    else parent.right = n;
    this.count++;
  }

  // Splits subtree `t` by n.start into n.left (starts < key) and n.right
  // (starts >= key), walking down once and threading each side's spine.
  private splitInto(t: Node<V> | null, n: Node<V>): void {
    const key = n.start;
    let lTail: Node<V> | null = null;
    let rTail: Node<V> | null = null;
    n.left = null;
    n.right = null;
    while (t !== null) {
      if (t.start < key) {
        if (lTail === null) n.left = t;
        else lTail.right = t;
        lTail = t;
        t = t.right;
      } else {
        if (rTail === null) n.right = t;
        else rTail.left = t;
        rTail = t;
        t = t.left;
      }
    }
    if (lTail !== null) lTail.right = null;
    if (rTail !== null) rTail.left = null;
  }

  private merge(a: Node<V> | null, b: Node<V> | null): Node<V> | null {
    if (a === null) return b;
    if (b === null) return a;
    if (a.prio > b.prio) {
      a.right = this.merge(a.right, b);
      return a;
    }
    b.left = this.merge(a, b.left);
    return b;
  }

  /** Removes the interval that starts at `start`; returns whether it existed. */
  delete(start: number): boolean {
    let parent: Node<V> | null = null;
    let t = this.root;
    while (t !== null && t.start !== start) {
      parent = t;
      t = start < t.start ? t.left : t.right;
    }
    if (t === null) return false;
    const replacement = this.merge(t.left, t.right);
    if (parent === null) this.root = replacement;
    else if (parent.left === t) parent.left = replacement;
    else parent.right = replacement;
    this.count--;
    return true;
  }

  /** The interval with the greatest start <= key. */
  floor(key: number): Interval<V> | undefined {
    let t = this.root;
    let best: Node<V> | null = null;
    while (t !== null) {
      if (t.start <= key) {
        best = t;
        t = t.right;
      } else t = t.left;
    }
    return best ?? undefined;
  }

  /** The interval with the smallest start > key. */
  higher(key: number): Interval<V> | undefined {
    let t = this.root;
    let best: Node<V> | null = null;
    while (t !== null) {
      if (t.start > key) {
        best = t;
        t = t.left;
      } else t = t.right;
    }
    return best ?? undefined;
  }

  /** The lowest interval that overlaps [start, end), if any. */
  firstOverlap(start: number, end: number): Interval<V> | undefined {
    // One walk finds both the floor (greatest start <= start) and the
    // successor (smallest start > start): only these two can overlap first.
    let t = this.root;
    let floor: Node<V> | null = null;
    let higher: Node<V> | null = null;
    while (t !== null) {
      if (t.start <= start) {
        floor = t;
        t = t.right;
      } else {
        higher = t;
        t = t.left;
      }
    }
    if (floor !== null && floor.end > start) return floor;
    if (higher !== null && higher.start < end) return higher;
    return undefined;
  }

  /** Every interval overlapping [start, end), in order. */
  overlapping(start: number, end: number): Interval<V>[] {
    const out: Interval<V>[] = [];
    const f = this.floor(start);
    const from = f !== undefined && f.end > start ? f.start : start;
    this.collect(this.root, from, end, out);
    return out;
  }

  private collect(t: Node<V> | null, from: number, end: number, out: Interval<V>[]): void {
    if (t === null) return;
    if (t.start > from) this.collect(t.left, from, end, out);
    if (t.start >= from && t.start < end) out.push(t);
    if (t.start < end) this.collect(t.right, from, end, out);
  }

  /** All intervals in order. */
  entries(): Interval<V>[] {
    const out: Interval<V>[] = [];
    const walk = (t: Node<V> | null): void => {
      if (t === null) return;
      walk(t.left);
      out.push(t);
      walk(t.right);
    };
    walk(this.root);
    return out;
  }

  clear(): void {
    this.root = null;
    this.count = 0;
  }
}
