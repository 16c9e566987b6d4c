/**
 * Tables for the null-placeholder cases of the SQL sinks (README "Types you can trust"):
 * columns that are all null (Arrow type null) at first and get their real type later, in
 * a later chunk of the job or in a later job writing the same table.
 */
import { Int64, Table, vectorFromArray, type Vector } from "apache-arrow";
import type { Batch } from "../../core/kernel/job.js";
import { batchOf, decimalColumn, nullColumn, timestampColumn } from "./arrow.js";

/**
 * One job's chunks for `topic`: ids 1-2 with q, ts and price all null; ids 3-4 with their
 * types (q int64 beyond 2^53, ts µs timestamp, price decimal(12, 2)); id 5 all null again.
 */
export function nullFirstChunks(topic: string): Batch[] {
  const nulls = (ids: bigint[]) =>
    new Table({ id: vectorFromArray(ids, new Int64()), q: nullColumn(ids.length), ts: nullColumn(ids.length), price: nullColumn(ids.length) });
  const typed = new Table({
    id: vectorFromArray([3n, 4n], new Int64()),
    q: vectorFromArray([9_007_199_254_740_993n, -5n], new Int64()),
    ts: timestampColumn([1_704_067_200_000_001n, null]),
    price: decimalColumn([1230n, -5n], 12, 2),
  });
  return [nulls([1n, 2n]), typed, nulls([5n])].map((table, i) => batchOf(topic, table, i));
}

/** A table of column `q` beside int64 ids 0, 1, ...: one job's rows in the across-jobs cases. */
export function idsWith(q: Vector): Table {
  return new Table({
    id: vectorFromArray(
      Array.from({ length: q.length }, (_, i) => BigInt(i)),
      new Int64(),
    ),
    q,
  });
}
