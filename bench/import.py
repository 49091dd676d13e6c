"""Converting a VL-RewardBench-format Parquet: time and memory against the number of rows.

Writes a Parquet laid out as VL-RewardBench publishes it (``image`` a struct holding the encoded
bytes; row groups of ``--row-group`` rows), with a distinct noise PNG of about ``--image-kb`` KB per
row (noise does not compress, so the file is as large as the images). Then, per size and each in a
fresh ``spawn`` subprocess (so each peak is its own), two readers of the same file:

- ``egt``: :func:`egt.formats.convert`, what the prepare stage runs: rows streamed a few at a time,
  images decoded once and written out, records written line by line;
- ``read_table``: ``pq.read_table(...).to_pylist()``, the whole file as Python objects, for scale.

Peak RSS is measured above the subprocess's baseline after its imports. The goal is memory flat in the
number of rows for ``egt``.

    python bench/import.py [--rows 2000 20000] [--image-kb 100] [--row-group 100] [--json PATH]
"""

import argparse
import io
import os
import tempfile
import time
from pathlib import Path

from machine import cpu_model, peak_rss_bytes, write_results  # bench/ is on sys.path when a script here runs

MIB = 1024 * 1024


def write_parquet(path: Path, rows: int, image_kb: int, row_group: int) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    schema = pa.schema(
        [
            ("id", pa.string()),
            ("query", pa.string()),
            ("response", pa.list_(pa.string())),
            ("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
            ("human_ranking", pa.list_(pa.int64())),
            ("models", pa.list_(pa.string())),
            ("judge", pa.string()),
            ("rationale", pa.string()),
            ("query_source", pa.string()),
            ("ground_truth", pa.string()),
        ]
    )
    side = int((image_kb * 1024 / 3) ** 0.5)  # RGB noise: ~3 bytes per pixel after PNG
    rng = np.random.default_rng(0)
    prefixes = ("RLAIF-V", "mathverse", "wildvision", "vlfeedback")
    with pq.ParquetWriter(path, schema, use_dictionary=False) as writer:
        for start in range(0, rows, row_group):
            batch = []
            for n in range(start, min(start + row_group, rows)):
                buffer = io.BytesIO()
                Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(buffer, "PNG")
                batch.append(
                    {
                        "id": f"{prefixes[n % 4]}_{n}",
                        "query": f"Describe image {n} in detail.",
                        "response": [f"Response one for {n}. " * 20, f"Response two for {n}. " * 20],
                        "image": {"bytes": buffer.getvalue(), "path": None},
                        "human_ranking": [0, 1] if n % 2 else [1, 0],
                        "models": ["a", "b"],
                        "judge": "human",
                        "rationale": "",
                        "query_source": prefixes[n % 4],
                        "ground_truth": "",
                    }
                )
            writer.write_table(pa.Table.from_pylist(batch, schema=schema))


def measure(reader: str, path: str) -> dict:
    if reader == "egt":
        from egt.formats import convert
        from egt.spec import DatasetSpec

        spec = DatasetSpec(uri=path, format="vl-rewardbench")
    else:
        import pyarrow.parquet as pq
    baseline = peak_rss_bytes()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=os.path.dirname(path)) as out:
        if reader == "egt":
            rows = convert(spec, "vl", Path(out), Path(out) / "scratch", warn=lambda m: None).pairs
        else:
            rows = len(pq.read_table(path).to_pylist())
        seconds = time.perf_counter() - start
    return {
        "reader": reader,
        "rows": rows,
        "seconds": seconds,
        "peak_rss_mib": (peak_rss_bytes() - baseline) / MIB,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, nargs="+", default=[2000, 20000])
    parser.add_argument("--image-kb", type=int, default=100)
    parser.add_argument("--row-group", type=int, default=100)
    parser.add_argument(
        "--dir", default=None, help="scratch folder (default: a temp dir); needs ~2x the file"
    )
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args()

    import multiprocessing as mp

    context = mp.get_context("spawn")
    results = []
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for rows in args.rows:
            path = Path(tmp) / f"vl-{rows}.parquet"
            write_parquet(path, rows, args.image_kb, args.row_group)
            size = path.stat().st_size
            for reader in ("egt", "read_table"):
                with context.Pool(1) as pool:
                    result = pool.apply(measure, (reader, str(path)))
                results.append({**result, "file_mib": size / MIB})
            path.unlink()
    print(
        f"VL-RewardBench-format Parquet, ~{args.image_kb} KB noise PNG per row, row groups of "
        f"{args.row_group}; {cpu_model()}\n"
    )
    print("| rows | file (MiB) | reader | wall (s) | rows/s | MiB/s | peak RSS above baseline (MiB) |")
    print("|---:|---:|---|---:|---:|---:|---:|")
    for r in results:
        print(
            f"| {r['rows']} | {r['file_mib']:.0f} | {r['reader']} | {r['seconds']:.1f} "
            f"| {r['rows'] / r['seconds']:.0f} | {r['file_mib'] / r['seconds']:.0f} "
            f"| {r['peak_rss_mib']:.0f} |"
        )
    if args.json:
        write_results(args.json, args, results)


if __name__ == "__main__":
    main()
