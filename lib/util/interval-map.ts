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

  /** Inserts [start, end). The caller guarantees it overlaps nothing. */
  insert(start: number, end: number, value: V): void {
    const node: Node<V> = { start, end, value, prio: Math.random(), left: null, right: null };
    this.root = this.insertNode(this.root, node);
    this.count++;
  }

  private insertNode(t: Node<V> | null, n: Node<V>): Node<V> {
    if (t === null) return n;
    if (n.prio > t.prio) {
      const [l, r] = this.split(t, n.start);
      n.left = l;
      n.right = r;
      return n;
    }
    if (n.start < t.start) t.left = this.insertNode(t.left, n);
    else t.right = this.insertNode(t.right, n);
    return t;
  }

  // Splits by key: left has starts < key, right has starts >= key.
  private split(t: Node<V> | null, key: number): [Node<V> | null, Node<V> | null] {
    if (t === null) return [null, null];
    if (t.start < key) {
      const [l, r] = this.split(t.right, key);
      t.right = l;
      return [t, r];
    }
    const [l, r] = this.split(t.left, key);
    t.left = r;
    return [l, t];
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
    const f = this.floor(start);
    if (f !== undefined && f.end > start) return f;
    const h = this.higher(start);
    if (h !== undefined && h.start < end) return h;
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
