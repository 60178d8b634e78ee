// A vitest reporter for the test-VM tier: lists every skipped test and fails
// the run if a test that needs private memory (memory attributes, the
// sw-protected VM type, pre-fault, hypercall exits) was skipped, since the
// test VM exists precisely to run those. Host-only tests may skip there.
import type { Reporter, TestModule } from 'vitest/node';

// Gated tests name what they need: "(needs KVM_CAP_...)". Host-only tests
// say "(runs where ... answers 0)" instead and may skip in the VM.
const PRIVATE_MEMORY = /needs[^)]*(KVM_CAP_MEMORY_ATTRIBUTES|SW_PROTECTED|sw-protected|KVM_CAP_PRE_FAULT_MEMORY|KVM_CAP_EXIT_HYPERCALL)/;

export default class VmSkipGuard implements Reporter {
  onTestRunEnd(testModules: ReadonlyArray<TestModule>): void {
    const skipped: string[] = [];
    for (const m of testModules) {
      for (const t of m.children.allTests()) {
        if (t.result().state === 'skipped') skipped.push(`${m.moduleId.replace(/^.*\/test\//, 'test/')} > ${t.fullName}`);
      }
    }
    const bad = skipped.filter((n) => PRIVATE_MEMORY.test(n));
    console.log(`\nvm-skip-guard: ${skipped.length} skipped (host-only tests), ${bad.length} private-memory tests skipped`);
    for (const n of skipped) console.log(`  ${PRIVATE_MEMORY.test(n) ? 'NOT ALLOWED' : 'skipped'}: ${n}`);
    if (bad.length > 0 && process.env.TESTVM === '1') {
      console.error('vm-skip-guard: private-memory tests must run in the test VM');
      process.exitCode = 1;
    }
  }
}
