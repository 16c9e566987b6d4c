/** Assertions shared by the test files: we assert error codes, not only that something threw. */
import assert from "node:assert/strict";
import { CasparianError } from "../../core/kernel/errors.js";

/** Awaits `promise`, expecting it to reject with a CasparianError of this code; returns the error. */
export async function rejectsWith(promise: Promise<unknown>, code: string): Promise<CasparianError> {
  try {
    await promise;
  } catch (err) {
    assert.ok(err instanceof CasparianError, `expected a CasparianError, got ${String(err)}`);
    assert.equal(err.code, code, err.message);
    return err;
  }
  assert.fail(`expected ${code}, but it succeeded`);
}
